"""Coverage-guided fuzzing of every parser that reads hostile input.

    python -m benchmarks.fuzz --minutes 10            # every target, 10 minutes each
    python -m benchmarks.fuzz --seconds 10            # what CI runs: about 10 s a target
    python -m benchmarks.fuzz --seconds 60 --target pcap

Targets (and the only exceptions each may raise; anything else is a bug):

- `decoder`: protocol.wire.Decoder fed arbitrary bytes in arbitrary splits,
  through messages() and next_message(); re-encoding what it decoded must give
  back the bytes it consumed, and end_of_stream() may raise TruncatedMessage only.
- `trace`: files.trace.read_records (raw dumps, trace files, from a file or a
  pipe) and read_trace_lines; TraceFormatError and ProtocolError.
- `pcap`: files.pcap.read_pcap through read_records, on bytes that start with
  a pcap or pcapng magic; TraceFormatError and ProtocolError. The records must
  also be well formed: each connection's are a call-start, its messages, one
  call-end.
- `session`: protocol.session.Session, either role, each mode, fed arbitrary
  bytes in arbitrary splits at arbitrary times, through whole_audio() (as
  listen reads) or receive(), ticked when its deadline passes, then ended by
  a close or a reset; it may raise nothing. The messages it takes must be the
  stream's own, in order; every event must be well formed and timed within
  the call; a call that is over must stay over.
- `inject`: protocol.inject.parse_inject (`--inject SPEC`); ValueError.
- `address`: net.address.parse_address (ADDRESS); ValueError.

Each target runs in its own subprocess under atheris (libFuzzer) for the time
given, with a working corpus in --work (kept between runs, so runs add up) and
the committed seeds in tests/fuzz_corpus/TARGET. A failing input is saved to
tests/fuzz_crashes/TARGET, where tests/test_fuzz_regressions.py replays it
from then on; fuzzing goes on after a crash, so one run finds every distinct
bug it can. Where atheris cannot be imported (it builds for Linux and CPython
< 3.13), random and mutated inputs from hypothesis drive the same targets,
without coverage feedback; the report says which engine ran. Exit status 1 if
any target crashed.

`--make-seeds` writes the seed corpus again (captures built with dpkt; the
`tcpdump-*` captures of real calls on loopback were made once and are kept as
they are).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "tests" / "fuzz_corpus"
CRASHES = ROOT / "tests" / "fuzz_crashes"
DEFAULT_WORK = Path(tempfile.gettempdir()) / "audiosocket-fuzz"
STATS_EVERY = 2.0  # s between stats written by a child, so a child that dies still reports
RESTARTS = 5  # children started again after a timeout or out-of-memory, per target

Run = Callable[[bytes], None]


@dataclass(frozen=True)
class Target:
    name: str
    load: Callable[[], tuple[Run, tuple[type[BaseException], ...]]]
    max_len: int
    instrument: tuple[str, ...]
    tokens: tuple[bytes, ...] = ()  # a libFuzzer dictionary: words the format is made of


# The targets. Each load() imports inside it, so that the child can import under
# atheris's instrumentation; it returns the function to call and the exceptions allowed.


def load_decoder() -> tuple[Run, tuple[type[BaseException], ...]]:
    from audiosocket_cli.protocol.wire import HEADER_SIZE, Decoder, TruncatedMessage, encode

    def check_messages(messages: list[Any]) -> None:
        for m in messages:  # every derived field of a decoded message must be computable
            _ = (m.name, m.problem, m.uuid, m.digit, m.code, m.duration, m.samples, m.rate)
            _ = (m.is_audio, m.refused_by_asterisk)

    def check_end(decoder: Any, rest: bytes) -> None:
        # rest: what was fed and not taken. Only a cut message may be reported, as TruncatedMessage.
        whole = 0
        while len(rest) - whole >= HEADER_SIZE:
            stop = whole + HEADER_SIZE + int.from_bytes(rest[whole + 1 : whole + 3], "big")
            if stop > len(rest):
                break
            whole = stop
        try:
            decoder.end_of_stream()
        except TruncatedMessage as exc:
            cut = rest[whole:]
            assert cut, "TruncatedMessage with nothing cut"
            assert exc.have == len(cut), (exc.have, len(cut))
            if len(cut) >= HEADER_SIZE:
                assert exc.kind == cut[0]
                assert exc.missing == HEADER_SIZE + int.from_bytes(cut[1:3], "big") - len(cut)
            else:
                assert exc.kind is None and exc.missing == HEADER_SIZE - len(cut)
        else:
            assert whole == len(rest), "end_of_stream passed a cut message"

    def run(data: bytes) -> None:
        # The first 4 bytes seed the splits and the choice of method, so an input replays alike.
        rng = random.Random(data[:4])
        stream = data[4:]
        decoder = Decoder()
        taken: list[Any] = []
        fed = consumed = 0
        while fed < len(stream):
            size = rng.randint(1, 8) if rng.random() < 0.5 else rng.randint(1, len(stream) - fed)
            decoder.feed(stream[fed : fed + size])
            fed += size
            if rng.random() < 0.2:
                # Asked early, end_of_stream must leave whole messages for messages().
                check_end(decoder, stream[consumed:fed])
            if rng.random() < 0.5:
                got = decoder.messages()
            else:
                got = []
                while (message := decoder.next_message()) is not None:
                    got.append(message)
            for message in got:
                wire = encode(message)
                assert stream[consumed : consumed + len(wire)] == wire, "re-encoding differs"
                consumed += len(wire)
            check_messages(got)
            taken += got
            rest = stream[consumed:fed]
            assert decoder.buffered == len(rest), (decoder.buffered, len(rest))
            # What is left is one incomplete message, and header_complete says which part.
            if len(rest) >= HEADER_SIZE:
                length = int.from_bytes(rest[1:3], "big")
                assert HEADER_SIZE + length > len(rest), "a whole message was left behind"
                assert decoder.header_complete
            else:
                assert not decoder.header_complete
        check_end(decoder, stream[consumed:fed])
        whole = Decoder()
        whole.feed(stream)
        assert whole.messages() == taken, "the split changed what was decoded"

    return run, ()


class _Pipe(io.RawIOBase):
    """Bytes that read like a pipe: not seekable, short reads."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._data.read(min(len(buffer), 4096))
        buffer[: len(data)] = data
        return len(data)


def pipe(data: bytes) -> io.BufferedReader:
    return io.BufferedReader(_Pipe(data))


def load_trace() -> tuple[Run, tuple[type[BaseException], ...]]:
    from audiosocket_cli.files.trace import (
        FORMAT,
        VERSION,
        ProtocolError,
        TraceFormatError,
        read_records,
        read_trace_lines,
    )

    header = json.dumps({"format": FORMAT, "version": VERSION}).encode() + b"\n"

    def run(data: bytes) -> None:
        # The first byte picks the reader, so that one corpus serves all of them.
        mode, body = (data[0] % 4, data[1:]) if data else (0, b"")
        if mode == 0:
            records: Iterator[Any] = read_records(io.BytesIO(body), "fuzz", ">")
        elif mode == 1:
            records = read_records(pipe(body), "fuzz", "<")
        elif mode == 2:
            # Past the header line, where most of the parsing is.
            records = read_trace_lines(iter(io.BytesIO(header + body)), "fuzz")
        else:
            records = read_trace_lines(iter(io.BytesIO(body)), "fuzz")
        for record in records:
            if record.message is not None:
                _ = record.message.problem

    return run, (TraceFormatError, ProtocolError)


def load_pcap() -> tuple[Run, tuple[type[BaseException], ...]]:
    # read_records imports files/pcap (and dpkt) when it first meets a capture: import them
    # here, while the child instruments what is imported.
    import audiosocket_cli.files.pcap  # noqa: F401
    from audiosocket_cli.files.trace import (
        PCAP_MAGICS,
        ProtocolError,
        TraceFormatError,
        read_records,
    )

    def check(records: Iterator[Any]) -> None:
        calls: dict[int, list[Any]] = {}
        last: dict[tuple[int, str], float] = {}
        for record in records:
            calls.setdefault(record.conn, []).append(record)
            if record.message is not None:
                assert record.dir in "<>", record.dir
                key = (record.conn, record.dir)
                assert record.ts >= last.get(key, record.ts), "out of order within a direction"
                last[key] = record.ts
        for conn, call in calls.items():
            events = [r.event for r in call]
            assert events[0] == "call-start", (conn, events[:3])
            assert events[-1] == "call-end", (conn, events[-3:])
            assert events.count("call-start") == 1 and events.count("call-end") == 1, conn

    def run(data: bytes) -> None:
        if data[:4] not in PCAP_MAGICS:
            data = PCAP_MAGICS[0] + data  # every input a capture: the raw path is `trace`'s
        # Both ways in: a file with the connections told apart by their first message, and
        # a pipe with the port given (which also takes connections that begin mid-call).
        check(read_records(io.BytesIO(data), "fuzz", ">"))
        check(read_records(pipe(data), "fuzz", ">", port=9092))

    return run, (TraceFormatError, ProtocolError)


def load_session() -> tuple[Run, tuple[type[BaseException], ...]]:
    from audiosocket_cli.protocol.events import ENDINGS
    from audiosocket_cli.protocol.session import (
        Ended,
        Mode,
        Problem,
        Received,
        Role,
        Rules,
        Session,
    )
    from audiosocket_cli.protocol.wire import Decoder

    started = 100.0

    def run(data: bytes) -> None:
        # Byte 0 picks the role and mode; bytes 1-4 seed the splits, the times, the
        # ticks and the path (whole_audio first, as listen reads, or receive alone).
        if len(data) < 5:
            return
        role = Role.APPLICATION if data[0] & 1 else Role.ASTERISK
        mode = (Mode.STRICT, Mode.LENIENT, Mode.OBSERVE)[(data[0] >> 1) % 3]
        rules = Rules(
            mode=mode,
            inactivity=2.0 if role is Role.ASTERISK else None,
            idle_timeout=30.0 if data[0] & 8 else None,
        )
        rng = random.Random(data[1:5])
        stream = data[5:]
        session = Session(role, rules, started=started)
        events: list[Any] = []
        now, fed = started, 0
        while fed < len(stream):
            size = rng.randint(1, 8) if rng.random() < 0.5 else rng.randint(1, len(stream) - fed)
            chunk = stream[fed : fed + size]
            fed += size
            now += rng.choice((0.0, 0.001, 0.02, 0.5, 3.0, 10.0))
            deadline = session.deadline
            assert deadline is None or deadline >= started, deadline
            if deadline is not None and now >= deadline and rng.random() < 0.5:
                events += session.tick(now)
            message = session.whole_audio(chunk, now) if rng.random() < 0.5 else None
            if message is not None:
                events.append(Received(now - started, message))
            else:
                events += session.receive(chunk, now)
        events += session.reset(now) if rng.random() < 0.2 else session.receive(b"", now)
        received = [e.message for e in events if type(e) is Received]
        # What the session took is the stream's messages, in order, none skipped.
        decoder = Decoder()
        decoder.feed(stream)
        assert received == decoder.messages()[: len(received)], "messages differ from the stream's"
        assert session.messages_received == len(received)
        endings = [e for e in events if isinstance(e, Ended)]
        for event in events:
            assert isinstance(event, (Received, Problem, Ended)), event
            assert 0.0 <= event.t <= now - started + 1e-9, (event, now)
            if isinstance(event, Ended):
                assert event.ended in ENDINGS, event
            if isinstance(event, Problem):
                assert event.code and event.text, event
        if mode is not Mode.OBSERVE:
            assert len(endings) <= 1, endings  # an observer may be told again
            if endings:
                assert session.receive(b"\x10\x00\x02\x00\x00", now) == []  # over is over
        assert session.ended is not None, "the stream ended and the call did not"

    return run, ()


def load_speech() -> tuple[Run, tuple[type[BaseException], ...]]:
    from audiosocket_cli.analysis.speech import SpeechDetector
    from audiosocket_cli.protocol.wire import AUDIO_RATES

    rates = sorted(set(AUDIO_RATES.values()))

    def run(data: bytes) -> None:
        # byte 0: the first rate; then messages of [flags, length, payload]: flags' low
        # nibble the arrival step (ms, 0: a burst), bit 4 a rate change, bit 5 advance().
        rate = rates[data[0] % len(rates)] if data else 8000
        detector = SpeechDetector()
        t, i = 0.0, 1
        while i + 2 <= len(data):
            flags, size = data[i], data[i + 1] * 8
            payload = data[i + 2 : i + 2 + size]
            i += 2 + size
            if flags & 0x10:
                rate = rates[(flags >> 6) % len(rates)]
            t += (flags & 0x0F) * 0.005
            detector.feed(t, payload, rate)
            if flags & 0x20:
                detector.advance(t + 0.5)
        detector.finish()
        segments = detector.segments
        for segment in segments:
            assert segment.start <= segment.end, segments
        for before, after in zip(segments, segments[1:], strict=False):
            assert before.end <= after.start, segments
        if segments:
            assert detector.first_speech == segments[0].start
        total = detector.speech_between(-1.0, t + 1e6)
        assert 0.0 <= total <= sum(s.end - s.start for s in segments) + 1e-9

    return run, ()


def load_inject() -> tuple[Run, tuple[type[BaseException], ...]]:
    from audiosocket_cli.protocol.inject import parse_inject
    from audiosocket_cli.protocol.wire import decode_all

    def run(data: bytes) -> None:
        # As a command line argument arrives on Linux: undecodable bytes as surrogates.
        injection = parse_inject(data.decode("utf-8", "surrogateescape"))
        assert 0 <= injection.at < float("inf"), injection.at
        writes = injection.wire_writes()
        assert writes or injection.close, "an injection that does nothing"
        assert decode_all(b"".join(m.encode() for m in injection.messages)) == list(
            injection.messages
        )
        _ = injection.ends_call

    return run, (ValueError,)


def load_address() -> tuple[Run, tuple[type[BaseException], ...]]:
    from audiosocket_cli.net.address import parse_address

    def run(data: bytes) -> None:
        default = 9092 if data[:1] == b"\x01" else None
        text = data[1:].decode("utf-8", "surrogateescape")
        address = parse_address(text, default)
        assert isinstance(address.port, int) and 0 <= address.port <= 65535, address
        assert isinstance(address.host, str) and address.host, address
        # What we print is what a user would type again.
        assert parse_address(str(address)) == address, (text, str(address))

    return run, (ValueError,)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("decoder", load_decoder, 4096, ("audiosocket_cli",)),
        Target(
            "trace",
            load_trace,
            8192,
            ("audiosocket_cli",),
            tokens=(
                b'"format"',
                b'"audiosocket-trace"',
                b'"version"',
                b'"t"',
                b'"conn"',
                b'"call"',
                b'"dir"',
                b'"type"',
                b'"data"',
                b'"event"',
                b'"text"',
                b'"ts"',
                b"1e999",
                b"-Infinity",
                b"NaN",
                b"null",
                b"[[[[",
                b"{}",
                b"\x01\x00\x10",
                b"\x10\x01\x40",
            ),
        ),
        Target("pcap", load_pcap, 32768, ("audiosocket_cli", "dpkt")),
        Target(
            "session",
            load_session,
            4096,
            ("audiosocket_cli",),
            tokens=(
                b"\x01\x00\x10",
                b"\x10\x01\x40",
                b"\x00\x00\x00",
                b"\x16\x03\x01",
                b"\x15\x03\x03\x00\x02",
                b"GET ",
                b"SSH-",
                b"\xff\x00\x01",
            ),
        ),
        Target(
            "inject",
            load_inject,
            256,
            ("audiosocket_cli",),
            tokens=(b"hangup", b"error", b"error:", b"dtmf:", b"raw:", b"close", b"@", b"0x"),
        ),
        Target("address", load_address, 256, ("audiosocket_cli",), tokens=(b"[", b"]", b":")),
        Target("speech", load_speech, 16384, ("audiosocket_cli",)),
    )
}


# Running one target: the child process.


def signature(exc: BaseException) -> str:
    """Names a bug: the exception and where it was raised, innermost frame of ours first."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "audiosocket_cli" in f.filename or "benchmarks" in f.filename]
    frame = (ours or frames)[-1] if frames else None
    where = f"{Path(frame.filename).name}:{frame.lineno}" if frame else "?"
    return f"{type(exc).__name__} at {where}"


def replay(run: Run, allowed: tuple[type[BaseException], ...], data: bytes) -> str | None:
    """The signature of the bug this input shows, or None."""
    try:
        run(data)
    except allowed:
        return None
    except Exception as exc:
        return signature(exc)
    return None


class _Child:
    """Calls the target on each input, keeps count, and keeps each new bug's input."""

    def __init__(self, target: Target, until: float, stats: Path, crashes: Path) -> None:
        self.target = target
        # The parent's deadline (wall clock), so that the time to start counts too.
        self.deadline = time.monotonic() + (until - time.time())
        self.started = time.monotonic()
        self.stats_path = stats
        self.crash_dir = crashes
        self.executions = 0
        self.next_stats = time.monotonic() + STATS_EVERY
        self.crashes: dict[str, str] = {}  # signature -> file
        self.run, self.allowed = target.load()
        self.known: dict[str, str] = {}
        if crashes.is_dir():
            # Bugs already on file are counted when hit again, not saved again.
            for path in sorted(crashes.iterdir()):
                if path.is_file():
                    found = replay(self.run, self.allowed, path.read_bytes())
                    if found:
                        self.known.setdefault(found, str(path))

    def one(self, data: bytes) -> None:
        self.executions += 1
        try:
            self.run(data)
        except self.allowed:
            pass
        except Exception as exc:
            self.crash(data, exc)
        now = time.monotonic()
        if now >= self.next_stats or now >= self.deadline:
            self.next_stats = now + STATS_EVERY
            self.write_stats(now)
            if now >= self.deadline:
                sys.stderr.flush()
                os._exit(0)  # libFuzzer's loop does not return: leave from here

    def crash(self, data: bytes, exc: Exception) -> None:
        sig = signature(exc)
        if sig in self.crashes:
            return
        if sig in self.known:
            self.crashes[sig] = self.known[sig]
            return
        self.crash_dir.mkdir(parents=True, exist_ok=True)
        path = self.crash_dir / f"{type(exc).__name__}-{hashlib.sha1(data).hexdigest()[:16]}"
        path.write_bytes(data)
        self.crashes[sig] = str(path)
        print(f"\n=== NEW CRASH {sig}: {path}", file=sys.stderr)
        traceback.print_exception(exc, file=sys.stderr)
        self.write_stats(time.monotonic())

    def write_stats(self, now: float) -> None:
        stats = {
            "executions": self.executions,
            "seconds": now - self.started,
            "crashes": self.crashes,
        }
        tmp = self.stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stats))
        tmp.replace(self.stats_path)


def child_main(args: argparse.Namespace) -> int:
    target = TARGETS[args.child]
    work, seeds = Path(args.work), SEEDS / target.name
    stats, crashes = Path(args.stats), Path(args.crashes)
    if args.engine == "atheris":
        import atheris

        with atheris.instrument_imports(include=list(target.instrument)):
            child = _Child(target, args.until, stats, crashes)
        argv = [
            sys.argv[0],
            f"-max_len={target.max_len}",
            "-timeout=20",
            "-rss_limit_mb=2048",
            f"-max_total_time={int(args.until - time.time()) + 30}",
            f"-artifact_prefix={work.parent / (target.name + '.artifacts')}{os.sep}",
            "-print_final_stats=0",
            str(work),
        ]
        if seeds.is_dir():
            argv.append(str(seeds))
        if target.tokens:
            words = work.parent / f"{target.name}.dict"
            words.write_text("".join(f'"{_escape(t)}"\n' for t in target.tokens))
            argv.insert(1, f"-dict={words}")
        atheris.Setup(argv, child.one)
        atheris.Fuzz()
        return 0
    child = _Child(target, args.until, stats, crashes)
    _hypothesis_loop(child, target, seeds)
    child.write_stats(time.monotonic())
    return 0


def _escape(token: bytes) -> str:
    return "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\x{b:02x}" for b in token)


def _hypothesis_loop(child: _Child, target: Target, seeds: Path) -> None:
    """Without atheris: the seeds, then random bytes and mutated seeds until the deadline."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    corpus = (
        [p.read_bytes() for p in sorted(seeds.glob("*")) if p.is_file()] if seeds.is_dir() else []
    )
    for data in corpus:
        child.one(data)

    @st.composite
    def mutated(draw: Any) -> bytes:
        data = bytearray(draw(st.sampled_from(corpus or [b""])))
        for _ in range(draw(st.integers(1, 6))):
            at = draw(st.integers(0, len(data)))
            how = draw(st.integers(0, 3))
            if how == 0 and at < len(data):
                data[at] = draw(st.integers(0, 255))
            elif how == 1:
                data[at:at] = draw(st.binary(max_size=16))
            elif how == 2:
                del data[at : at + draw(st.integers(1, 64))]
            else:
                data[at : at + 4] = draw(st.sampled_from([b"\x00", b"\xff\xff", b"\x01\x00\x10"]))
        return bytes(data[: target.max_len])

    @settings(
        max_examples=500,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.one_of(st.binary(max_size=target.max_len), mutated()))
    def batch(data: bytes) -> None:
        child.one(data)

    while time.monotonic() < child.deadline:
        batch()


# The seed corpus.


def _message(kind: int, payload: bytes) -> bytes:
    return bytes([kind]) + len(payload).to_bytes(2, "big") + payload


UUID_MSG = _message(0x01, bytes.fromhex("40325ec25bd74a4e9a2c6a4f6d3b1c01"))
HANGUP_MSG = _message(0x00, b"")


def _audio(n: int, size: int = 40, kind: int = 0x10) -> bytes:
    return _message(kind, bytes((n * 7 + i) % 251 for i in range(size)))


def _call_stream(frames: int = 6, size: int = 40) -> bytes:
    middle = b"".join(_audio(n, size) for n in range(frames))
    return UUID_MSG + middle[: 2 * (size + 3)] + _message(0x03, b"5") + middle[2 * (size + 3) :]


def _captures() -> dict[str, bytes]:
    """Small captures of one or two calls, built with dpkt, one per feature of the reader."""
    import socket

    import dpkt

    ack, syn, fin, rst, psh = (dpkt.tcp.TH_ACK, dpkt.tcp.TH_SYN, dpkt.tcp.TH_FIN,
                               dpkt.tcp.TH_RST, dpkt.tcp.TH_PUSH)  # fmt: skip

    def ip(v6: bool, src: str, dst: str, tcp: Any) -> Any:
        family = socket.AF_INET6 if v6 else socket.AF_INET
        a, b = socket.inet_pton(family, src), socket.inet_pton(family, dst)
        if v6:
            packet = dpkt.ip6.IP6(src=a, dst=b, nxt=dpkt.ip.IP_PROTO_TCP, hlim=64, data=tcp)
            packet.plen = len(bytes(tcp))
            return packet
        return dpkt.ip.IP(src=a, dst=b, p=dpkt.ip.IP_PROTO_TCP, ttl=64, data=tcp)

    def conversation(
        v6: bool = False, sport: int = 40000, lose: int = -1, reorder: bool = False,
        handshake: bool = True, close: int = fin, frames: int = 6,
    ) -> list[Any]:  # fmt: skip
        client, server = ("::1", "::2") if v6 else ("10.0.0.1", "10.0.0.2")
        seq = {True: 1000, False: 500_000}
        packets = []

        def seg(from_client: bool, flags: int, data: bytes = b"") -> Any:
            ends = (client, server) if from_client else (server, client)
            ports = (sport, 9092) if from_client else (9092, sport)
            tcp = dpkt.tcp.TCP(sport=ports[0], dport=ports[1], seq=seq[from_client] % 2**32,
                               ack=seq[not from_client] % 2**32 if flags & ack else 0,
                               flags=flags, win=65535, data=data)  # fmt: skip
            seq[from_client] += len(data) + (1 if flags & (syn | fin) else 0)
            return ip(v6, ends[0], ends[1], tcp)

        if handshake:
            packets += [seg(True, syn), seg(False, syn | ack), seg(True, ack)]
        else:
            seq[True] += 300  # the capture begins mid-call
        stream = _call_stream(frames) if handshake else b"".join(_audio(n) for n in range(frames))
        pieces = [stream[i : i + 50] for i in range(0, len(stream), 50)]
        sent = []
        for n, piece in enumerate(pieces):
            packet = seg(True, ack | psh, piece)
            if n != lose:
                sent.append(packet)
            if n % 2:
                sent.append(seg(False, ack | psh, _audio(n)))
        if reorder and len(sent) > 3:
            sent[1], sent[2] = sent[2], sent[1]
            sent.insert(4, sent[3])  # and a retransmission
        packets += sent
        packets += [seg(False, ack | psh, HANGUP_MSG), seg(True, close | ack)]
        if close == fin:
            packets += [seg(False, fin | ack), seg(True, ack)]
        return packets

    def frame(linktype: int, packet: Any) -> bytes:
        v6 = isinstance(packet, dpkt.ip6.IP6)
        ethtype = dpkt.ethernet.ETH_TYPE_IP6 if v6 else dpkt.ethernet.ETH_TYPE_IP
        if linktype == 1:
            return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6,
                                                type=ethtype, data=packet))  # fmt: skip
        if linktype == 113:
            return bytes(dpkt.sll.SLL(type=0, ethtype=ethtype, data=packet))
        if linktype == 276:
            return bytes(dpkt.sll2.SLL2(ethtype=ethtype, intindex=1, data=packet))
        if linktype == 0:
            return (30 if v6 else 2).to_bytes(4, "little") + bytes(packet)
        return bytes(packet)

    def capture(packets: list[Any], linktype: int = 1, ng: bool = False) -> bytes:
        out = io.BytesIO()
        writer = (dpkt.pcapng.Writer if ng else dpkt.pcap.Writer)(
            out, snaplen=65535, linktype=linktype
        )
        for n, packet in enumerate(packets):
            writer.writepkt(frame(linktype, packet), ts=1_700_000_000.0 + n * 0.02)
        return out.getvalue()

    two = [p for pair in zip(conversation(), conversation(sport=40001), strict=True) for p in pair]
    return {
        "ethernet.pcap": capture(conversation()),
        "ethernet.pcapng": capture(conversation(), ng=True),
        "sll-v6.pcap": capture(conversation(v6=True), 113),
        "sll2.pcap": capture(conversation(), 276),
        "null.pcap": capture(conversation(), 0),
        "raw-v6.pcapng": capture(conversation(v6=True), 101, ng=True),
        "two-calls.pcap": capture(two),
        "gap.pcap": capture(conversation(lose=3, frames=12)),
        "reordered-reset.pcap": capture(conversation(reorder=True, close=rst)),
        "midcall.pcap": capture(conversation(handshake=False, frames=10)),
    }


def seed_inputs() -> dict[str, dict[str, bytes]]:
    """Every target's seeds: name -> bytes."""
    call = _call_stream()
    trace_lines = (SEEDS.parent.parent / "samples" / "call.trace").read_bytes().splitlines(True)
    return {
        "decoder": {
            "call": b"\x00\x00\x00\x00" + call + HANGUP_MSG,
            "cut-payload": b"\x01\x02\x03\x04" + call[:-7],
            "cut-header": b"\xff\x00\x00\x00" + call + b"\x10\x01",
            "odd-kinds": b"\x07\x07\x07\x07"
            + b"".join(_message(k, b"\x01" * (k % 5)) for k in (0, 1, 3, 0x18, 0x42, 0xFF)),
        },
        "trace": {
            "raw-file": b"\x00" + call + HANGUP_MSG,
            "raw-pipe-cut": b"\x01" + call[:-5],
            "trace-file": b"\x00" + b"".join(trace_lines[:12]),
            "trace-body": b"\x02" + b"".join(trace_lines[1:12]) + trace_lines[-1],
            "trace-cut": b"\x03" + b"".join(trace_lines[:6]) + trace_lines[6][:40],
        },
        "pcap": _captures(),
        "session": {
            # byte 0: bit 0 the role (1: we are the application), bits 1-2 the mode,
            # bit 3 an idle timeout; bytes 1-4: the seed.
            "app-call": b"\x01\x00\x00\x00\x00" + call + HANGUP_MSG,
            "app-cut": b"\x03\x01\x02\x03\x04" + call[:-7],
            "app-observe": b"\x05\x05\x06\x07\x08" + call + HANGUP_MSG + _audio(9),
            "app-tls": b"\x09\x00\x00\x00\x01" + bytes.fromhex("16030100f5010000f10303"),
            "app-http": b"\x01\x00\x00\x00\x02" + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            "asterisk-echo": b"\x00\x00\x00\x00\x03" + b"".join(_audio(n) for n in range(8)),
            "asterisk-refused": b"\x02\x00\x00\x00\x04"
            + _audio(1)
            + UUID_MSG
            + _message(0x03, b"1")
            + _message(0xFF, b"\x02")
            + _message(0x10, b""),
            "asterisk-observe-alert": b"\x04\x00\x00\x00\x05" + bytes.fromhex("15030300020228"),
            "asterisk-odd": b"\x00\x01\x01\x01\x01" + _message(0x10, b"\x01\x02\x03") + _audio(2),
        },
        "inject": {
            name: spec.encode()
            for name, spec in {
                "hangup": "hangup@5",
                "error": "error@0.5",
                "error-code": "error:0x02@3",
                "dtmf": "dtmf:12#*AD@2.5",
                "raw": "raw:ff 00 01@1e1",
                "close": "close@0",
            }.items()
        },
        "speech": _speech_seeds(),
        "address": {
            "host-port": b"\x00127.0.0.1:9092",
            "port": b"\x009092",
            "ipv6": b"\x00[::1]:9092",
            "host-default": b"\x01example.org",
            "ipv6-default": b"\x01[fe80::1%lo]",
        },
    }


def _speech_seeds() -> dict[str, bytes]:
    """Calls of 20 ms messages: silence, a tone, noise, bursts, a rate change."""
    import math
    import random

    def frames(pcm: bytes, flags: int, size: int = 320) -> bytes:
        return b"".join(
            bytes((flags, len(chunk) // 8)) + chunk
            for chunk in (pcm[k : k + size] for k in range(0, len(pcm), size))
        )

    tone = b"".join(
        int(8000 * math.sin(2 * math.pi * 300 * n / 8000)).to_bytes(2, "little", signed=True)
        for n in range(8000)
    )
    rng = random.Random(1)
    noise = bytes(rng.getrandbits(8) for _ in range(8000))
    return {
        "silence-tone-silence": b"\x00" + frames(bytes(3200), 4) + frames(tone, 4)
        + frames(bytes(6400), 4),
        "burst": b"\x00" + frames(tone, 0),
        "noise-advance": b"\x00" + frames(noise, 0x24),
        "rate-change": b"\x02" + frames(tone[:3200], 4) + frames(tone[:6400], 0x54, 640),
        "odd": b"\x05" + bytes((4, 1)) + b"\x01" * 7 + frames(tone[:1600], 4, 161 * 8),
    }  # fmt: skip


def write_seeds(root: Path) -> None:
    for target, seeds in seed_inputs().items():
        folder = root / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (folder / name).write_bytes(data)
        print(f"{folder}: {len(seeds)} seeds")


# The parent: one child per target, one at a time, and the report.


@dataclass
class Result:
    target: str
    engine: str
    executions: int = 0
    seconds: float = 0.0
    corpus: int = 0
    crashes: dict[str, str] | None = None


def engine_available() -> str:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return "hypothesis"
    return "atheris"


def fuzz_target(name: str, seconds: float, engine: str, work: Path, crashes: Path) -> Result:
    corpus = work / name
    corpus.mkdir(parents=True, exist_ok=True)
    stats = work / f"{name}.stats.json"
    log = work / f"{name}.log"
    artifacts = work / f"{name}.artifacts"  # where libFuzzer saves what stopped a child
    artifacts.mkdir(exist_ok=True)
    result = Result(name, engine, crashes={})
    assert result.crashes is not None
    deadline = time.monotonic() + seconds
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    for _ in range(RESTARTS + 1):
        remaining = deadline - time.monotonic()
        if remaining < 1:
            break
        stats.unlink(missing_ok=True)
        before = set(artifacts.iterdir())
        with open(log, "a") as log_file:
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.fuzz", "--child", name,
                 "--until", f"{time.time() + remaining:.3f}", "--engine", engine,
                 "--work", str(corpus), "--stats", str(stats), "--crashes", str(crashes)],
                cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                timeout=remaining + 120,
            )  # fmt: skip
        if stats.exists():
            got = json.loads(stats.read_text())
            result.executions += got["executions"]
            result.seconds += got["seconds"]
            result.crashes.update(got["crashes"])
        if proc.returncode == 0:
            break
        # libFuzzer stopped the child (a timeout, out of memory, a native crash) and
        # saved the input: keep it with the others, and go on with the time that is left.
        new = sorted(set(artifacts.iterdir()) - before)
        for path in new:
            crashes.mkdir(parents=True, exist_ok=True)
            kept = crashes / path.name
            shutil.copyfile(path, kept)
            result.crashes[f"{path.name.split('-')[0]} (libFuzzer, exit {proc.returncode})"] = str(
                kept
            )
        if not new:
            result.crashes[f"child exited {proc.returncode}, see {log}"] = str(log)
    result.corpus = _corpus_size(log, corpus) if engine == "atheris" else _seeds(name)
    return result


def _seeds(name: str) -> int:
    return sum(1 for _ in (SEEDS / name).glob("*"))


def _corpus_size(log: Path, corpus: Path) -> int:
    """libFuzzer's own count of the corpus in memory, else the files in the work corpus."""
    try:
        counts = re.findall(r"corp: (\d+)/", log.read_text(errors="replace"))
    except OSError:
        counts = []
    return int(counts[-1]) if counts else sum(1 for _ in corpus.iterdir())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, help="per target")
    length.add_argument("--seconds", type=float, help="per target (default 10)")
    parser.add_argument("--target", action="append", choices=sorted(TARGETS), help="repeatable")
    parser.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto")
    parser.add_argument("--work", default=str(DEFAULT_WORK), help="working corpora and logs")
    parser.add_argument("--crashes", default=str(CRASHES), help="where new crashes are saved")
    parser.add_argument("--make-seeds", action="store_true", help="write tests/fuzz_corpus again")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--stats", help=argparse.SUPPRESS)
    parser.add_argument("--until", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args)
    if args.make_seeds:
        write_seeds(SEEDS)
        return 0
    seconds = args.minutes * 60 if args.minutes is not None else (args.seconds or 10.0)
    engine = engine_available() if args.engine == "auto" else args.engine
    if engine == "hypothesis":
        why = "chosen" if args.engine == "hypothesis" else "atheris is not importable here"
        print(f"engine hypothesis ({why}): random and mutated inputs, no coverage guidance")
    work = Path(args.work)
    results = []
    for name in args.target or list(TARGETS):
        result = fuzz_target(name, seconds, engine, work, Path(args.crashes) / name)
        results.append(result)
        crashes = result.crashes or {}
        rate = result.executions / result.seconds if result.seconds else 0.0
        print(
            f"{name:8} {result.engine}: {result.executions:,} executions in {result.seconds:.0f} s "
            f"({rate:,.0f}/s), corpus {result.corpus}, crashes {len(crashes)}",
            flush=True,
        )
        for sig, path in crashes.items():
            print(f"    crash: {sig}: {path}", flush=True)
    crashed = [r.target for r in results if r.crashes]
    print(f"crashes in: {', '.join(crashed)}" if crashed else "no crashes")
    if work.is_dir():
        print(f"working corpora and logs: {work}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
