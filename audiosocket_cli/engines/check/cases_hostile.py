"""Section 4 of `check`: a hostile peer. Pass: the application survives, and answers
a normal call afterwards."""

from __future__ import annotations

import random
import select
import socket
import struct
import time
from collections.abc import Callable

from audiosocket_cli.engines.check.judge import normal_call_after
from audiosocket_cli.engines.check.probe import (
    CLOSE_LIMIT,
    CaseRun,
    Probe,
    audio_frames,
    hexdump,
    tone,
)
from audiosocket_cli.engines.check.results import PASS, Outcome, failed
from audiosocket_cli.net.tcpstate import waiting_ports
from audiosocket_cli.net.transport import raise_fd_limit
from audiosocket_cli.protocol.wire import HEADER, KIND_NAMES, Kind, Message


def hostile(cr: CaseRun, what: str, act: Callable[[Probe], str]) -> Outcome:
    try:
        p = cr.probe(keep=False)
    except OSError as exc:
        return failed(f"could not connect: {exc}")
    evidence = act(p)
    reaction = (
        f"the application's {p.gone_how} at {p.gone_at:.3f}s"
        if p.gone_at is not None
        else "the application kept the connection"
    )
    p.close()
    outcome = normal_call_after(cr, what)
    outcome.evidence = f"{evidence}; {reaction}"
    return outcome


def case_unassigned(cr: CaseRun) -> Outcome:
    def act(p: Probe) -> str:
        p.send_uuid()
        p.play(audio_frames(tone(8000, 0.1), 8000))
        data = Message(0x42, b"\xde\xad\xbe\xef").encode()
        p.write(data)
        at = p.now()
        p.play(audio_frames(tone(8000, 0.2), 8000))
        p.pause(0.1)
        return f"at {at:.3f}s: {hexdump(data)}"

    return hostile(cr, "an unassigned kind", act)


def case_garbage(cr: CaseRun) -> Outcome:
    def act(p: Probe) -> str:
        p.send_uuid()
        p.play(audio_frames(tone(8000, 0.1), 8000))
        data = garbage(512)
        p.write(data)
        at = p.now()
        p.pause(0.3)
        return f"512 random bytes, none of them an assigned kind, at {at:.3f}s: {hexdump(data, 12)}"

    return hostile(cr, "garbage bytes", act)


def case_promise_reset(cr: CaseRun) -> Outcome:
    def act(p: Probe) -> str:
        p.send_uuid()
        data = HEADER.pack(Kind.AUDIO_8K, 0xFFFF) + bytes(1024)
        p.write(data)
        at = p.now()
        p.pause(0.1)
        p.reset()  # SO_LINGER 0 and close(): a real RST, no FIN before it
        return f"at {at:.3f}s: {hexdump(data, 3)} (then 1024 of 65535 bytes), then RST"

    return hostile(cr, "a 64 KiB promise and a reset", act)


def case_header_silence(cr: CaseRun) -> Outcome:
    try:
        p = cr.probe(keep=False)
    except OSError as exc:
        return failed(f"could not connect: {exc}")
    p.send_uuid()
    data = HEADER.pack(Kind.AUDIO_8K, 320)
    p.write(data)
    at = p.now()
    # The ordinary call runs while the stalled one is still open: one connection
    # waiting for a payload must not hold up the others.
    outcome = normal_call_after(cr, "a header followed by silence (still open)")
    p.pause(0.1)
    reaction = (
        f"the application's {p.gone_how} at {p.gone_at:.3f}s"
        if p.gone_at is not None
        else f"still open at {p.now():.3f}s"
    )
    p.close()
    outcome.evidence = f"at {at:.3f}s: {hexdump(data)} then nothing; {reaction}"
    return outcome


def case_flood(cr: CaseRun, count: int = 200) -> Outcome:
    raise_fd_limit()
    run = cr.run
    socks: list[socket.socket] = []
    closed_ports: list[int] = []  # the half closed (not reset): the application must close them
    started = time.monotonic()
    try:
        for _ in range(count):
            sock = socket.socket(
                socket.AF_INET6 if ":" in run.address.host else socket.AF_INET,
                socket.SOCK_STREAM,
            )
            sock.setblocking(False)
            socks.append(sock)
            try:
                sock.connect((run.address.host, run.address.port))
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                pass
        deadline = time.monotonic() + min(2.0, run.timeout)
        pending = list(socks)
        connected = 0
        while pending and time.monotonic() < deadline:
            _, writable, _ = select.select([], pending[:500], [], 0.05)
            for sock in writable:
                pending.remove(sock)
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    connected += 1
    finally:
        for k, sock in enumerate(socks):
            try:
                if k % 2:  # half of them reset, half closed
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                else:
                    closed_ports.append(sock.getsockname()[1])
                sock.close()
            except OSError:
                pass
    took = time.monotonic() - started
    closed_at = time.monotonic()
    outcome = normal_call_after(cr, f"{count} connections opened and dropped")
    evidence = (
        f"{connected} of {count} connected within {took:.2f}s, then all dropped "
        "(half closed, half reset) without a byte"
    )
    # The application must close the ones we closed: else each stays in CLOSE-WAIT.
    remaining = closed_at + CLOSE_LIMIT - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)
    waiting = waiting_ports(run.address.port)
    if waiting is not None:
        left = sum(1 for port in closed_ports if port in waiting)
        if left and outcome.verdict == PASS:
            return failed(
                f"the application left {left} of the {len(closed_ports)} connections "
                f"closed without a byte open for more than {CLOSE_LIMIT:g} s (sockets in "
                "CLOSE-WAIT: a leak)",
                evidence,
            )
    outcome.evidence = evidence
    return outcome


def garbage(size: int, seed: int = 4) -> bytes:
    """`size` random bytes (the same every run) in which no byte is an assigned kind,
    so that wherever a reader starts it cannot read a plausible header: the case
    tests garbage, not one huge message whose header happened to be valid."""
    assigned = set(KIND_NAMES)
    pool = bytes(b for b in range(256) if b not in assigned)
    rng = random.Random(seed)
    return bytes(rng.choice(pool) for _ in range(size))
