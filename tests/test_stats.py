"""DirectionStats counts, gaps, bursts, jitter and real-time ratio; levels_dbfs.

The figures of the mixed stream below were taken from a run of the previous
implementation (a dataclass with Counters updated per message), so the
cheaper one must give the same counts.
"""

from __future__ import annotations

import math
import random
import struct
import wave
from typing import Any

import pytest

from audiosocket_cli.analysis.levels import level_dbfs, levels_dbfs
from audiosocket_cli.analysis.stats import (
    BURST_AUDIO,
    BURST_WINDOW,
    ENCODING_BACKOFF,
    ENCODING_MAX_FRAMES,
    ENCODING_SAMPLE_EVERY,
    ENCODING_SETTLED,
    SUMMARY_ROWS,
    DirectionStats,
    guess_encoding,
)
from audiosocket_cli.protocol.wire import AUDIO_RATES, Kind, Message
from tests.conftest import SAMPLES

HELLO = SAMPLES / "hello-8k.wav"


def hello_pcm() -> bytes:
    with wave.open(str(HELLO)) as w:
        return w.readframes(w.getnframes())


def mixed_messages() -> list[tuple[float, Message]]:
    """Every path of add(): runs, rate and size changes, malformed audio, bursts,
    frames over 100 ms, a long gap, and each other kind."""
    rnd = random.Random(7)
    pcm = hello_pcm()
    out: list[tuple[float, Message]] = []
    t = 0.0
    out.append((t, Message(Kind.UUID, bytes(range(16)))))
    pos = 0
    for i in range(150):  # 3 s of 20 ms frames at 8 kHz, jitter up to +-1 ms
        t = 0.010 + i * 0.020 + (rnd.random() - 0.5) * 0.002
        out.append((t, Message(Kind.AUDIO_8K, pcm[pos : pos + 320])))
        pos += 320
    out.append((t + 0.001, Message(Kind.DTMF, b"5")))
    out.append((t + 0.002, Message(Kind.DTMF, b"#")))
    out.append((t + 0.003, Message(Kind.ERROR, b"\x02")))
    out.append((t + 0.004, Message(0x42, b"xyz")))
    base = t + 0.5
    for i in range(12):  # a burst: 12 frames within 1.2 ms
        out.append((base + i * 0.0001, Message(Kind.AUDIO_8K, pcm[pos : pos + 320])))
        pos += 320
    t = base + 0.1
    out.append((t, Message(Kind.AUDIO_8K, pcm[pos : pos + 161])))
    out.append((t + 0.001, Message(Kind.AUDIO_8K, b"")))
    for i in range(100):  # 2 s at 16 kHz
        t2 = t + 0.02 + i * 0.020 + (rnd.random() - 0.5) * 0.001
        out.append((t2, Message(Kind.AUDIO_16K, pcm[pos % 60000 : pos % 60000 + 640])))
        pos += 640
    t = t2
    for i in range(3):  # 1 s frames
        t += 1.0
        out.append((t, Message(Kind.AUDIO_8K, pcm[i * 16000 : i * 16000 + 16000])))
    t += 0.7
    for i in range(40):  # 20 ms frames again, mixed with 10 ms ones
        t += 0.020
        size = 160 if i % 7 == 3 else 320
        out.append((t, Message(Kind.AUDIO_8K, pcm[i * 320 : i * 320 + size])))
    out.append((t + 0.01, Message(Kind.DTMF, b"\xff")))
    out.append((t + 0.02, Message(Kind.DTMF, b"1")))
    out.append((t + 0.05, Message(Kind.HANGUP, b"")))
    out.append((t + 0.06, Message(Kind.HANGUP, b"x")))
    return out


# From the previous implementation, on mixed_messages().
OLD_AS_DICT: dict[str, Any] = {
    "messages": 316,
    "bytes": 176814,
    "kinds": {"uuid": 1, "audio": 307, "dtmf": 4, "error": 1, "unknown": 1, "hangup": 2},
    "audio_messages": 307,
    # 8.9900625 exactly; the old per-message float sum drifted to 8.99006249999996,
    # which rounded to 8.990062. Audio is now summed in exact integer units.
    "audio_seconds": 8.990063,
    "rates": {"8000": 207, "16000": 100},
    "dtmf": "5#1",
    "mean_gap_ms": 32.942,
    "max_gap_ms": 1000.0,
    "realtime_ratio": 0.89,
    "bursts": 2,
    "problems": {
        "unassigned kind 0x42": 1,
        "odd audio length 161 (16-bit samples)": 1,
        "empty audio message": 1,
        "dtmf byte 0xff is not a digit": 1,
        "hangup with a 1-byte payload": 1,
    },
}


def fed(messages: list[tuple[float, Message]], **kwargs: object) -> DirectionStats:
    stats = DirectionStats(**kwargs)  # type: ignore[arg-type]
    for t, message in messages:
        stats.add(t, message)
    return stats


def test_mixed_stream_counts_as_before() -> None:
    stats = fed(mixed_messages())
    stats.note_refused(Message(Kind.DTMF, b"1"))
    stats.refused["error message"] += 1  # engines.call counts refusals this way
    got = stats.as_dict()
    jitter = got.pop("jitter_p99_ms")
    assert got == OLD_AS_DICT
    assert list(got) == list(OLD_AS_DICT)  # the keys in the same order, and in each:
    assert list(got["kinds"]) == list(OLD_AS_DICT["kinds"])
    assert list(got["rates"]) == ["8000", "16000"]
    assert isinstance(jitter, float)
    assert stats.audio_seconds == pytest.approx(8.990062499999961, abs=1e-9)
    assert dict(stats.sizes) == {320: 196, 161: 1, 0: 1, 640: 100, 16000: 3, 160: 6}
    assert list(stats.sizes) == [320, 161, 0, 640, 16000, 160]
    assert dict(stats.rates) == {8000: 207, 16000: 100}
    assert stats.digits == "5#1"
    assert dict(stats.refused) == {"dtmf message": 1, "error message": 1}
    assert stats.first_audio == pytest.approx(0.009647665529666324, abs=1e-12)
    assert stats.last_audio == pytest.approx(10.08994723486776, abs=1e-12)
    assert stats.max_gap == pytest.approx(1.0, abs=1e-9)
    assert stats.bursts == 2
    assert stats.max_window_audio == pytest.approx(1.0)
    assert stats.realtime_ratio == pytest.approx(0.890078797988475, abs=1e-9)
    assert stats.mean_gap == pytest.approx(0.03294215545535325, abs=1e-12)
    assert (stats.audio_messages, stats.messages, stats.wire_bytes) == (307, 316, 176814)
    # Unanimous after ENCODING_SETTLED frames: the guess is settled, no more analyses.
    assert dict(stats.encoding_votes) == {"s16le": ENCODING_SETTLED}
    assert stats.likely_encoding is None
    assert stats.summary() == "316 msgs 176814 B audio 8.99s dtmf=5#1"
    rows = {label: cell(stats) for label, cell in SUMMARY_ROWS}
    assert rows["gaps"] == "mean 32.9ms worst 1000.0ms"
    assert rows["kinds"] == "audio=307 dtmf=4 error=1 hangup=2 unknown=1 uuid=1"
    assert rows["rates"] == "8000,16000"


def test_counts_read_mid_run_and_after_it() -> None:
    """The current run is folded in whenever a figure is read, and not counted twice."""
    pcm = hello_pcm()
    stats = DirectionStats()
    for i in range(10):
        stats.add(i * 0.02, Message(Kind.AUDIO_8K, pcm[i * 320 : i * 320 + 320]))
    assert (stats.messages, stats.audio_messages, stats.wire_bytes) == (10, 10, 3230)
    assert stats.kinds == {"audio": 10} and stats.sizes == {320: 10}
    assert stats.audio_seconds == pytest.approx(0.2)
    stats.add(0.2, Message(Kind.DTMF, b"7"))  # another kind does not end the run
    stats.add(0.2, Message(Kind.AUDIO_8K, pcm[:320]))
    stats.add(0.22, Message(Kind.AUDIO_16K, pcm[:640]))
    assert stats.kinds == {"audio": 12, "dtmf": 1}
    assert stats.rates == {8000: 11, 16000: 1}
    assert stats.audio_seconds == pytest.approx(0.24)
    assert stats.as_dict()["bytes"] == 11 * 323 + 4 + 643


def test_an_empty_direction() -> None:
    stats = DirectionStats()
    assert stats.pacing() == "-"
    assert stats.as_dict() == {
        "messages": 0,
        "bytes": 0,
        "kinds": {},
        "audio_messages": 0,
        "audio_seconds": 0.0,
        "rates": {},
        "dtmf": "",
        "mean_gap_ms": None,
        "max_gap_ms": 0.0,
        "realtime_ratio": None,
        "jitter_p99_ms": None,
        "bursts": 0,
        "problems": {},
    }


# Bursts, against the rule computed the slow way.


def brute_force_bursts(arrivals: list[tuple[float, float]]) -> tuple[int, float]:
    """(bursts, most audio in one window) of (time, duration) arrivals: a burst
    starts when the audio that came within BURST_WINDOW up to an arrival exceeds
    BURST_AUDIO, and lasts while it does."""
    bursts, most, hot = 0, 0.0, False
    for i, (t, _) in enumerate(arrivals):
        within = sum(d for u, d in arrivals[: i + 1] if t - u <= BURST_WINDOW)
        most = max(most, within)
        if within > BURST_AUDIO + 1e-9:
            bursts += not hot
            hot = True
        else:
            hot = False
    return bursts, most


@pytest.mark.parametrize("seed", range(40))
def test_bursts_match_the_rule_on_random_streams(seed: int) -> None:
    rnd = random.Random(seed)
    t = 0.0
    arrivals, messages = [], []
    kinds = list(AUDIO_RATES)[:4]
    kind, size = int(Kind.AUDIO_8K), 320
    for _ in range(400):
        if rnd.random() < 0.05:  # a change of rate or size
            kind = rnd.choice(kinds)
            size = rnd.choice([160, 320, 640, 1280, 9600])
        roll = rnd.random()
        t += 0.0 if roll < 0.2 else rnd.uniform(0.0, 0.012) if roll < 0.5 else 0.0205
        messages.append((t, Message(kind, bytes(size))))
        arrivals.append((t, size / 2 / AUDIO_RATES[kind]))
        if rnd.random() < 0.05:
            messages.append((t, Message(Kind.DTMF, b"1")))
    stats = fed(messages)
    bursts, most = brute_force_bursts(arrivals)
    assert stats.bursts == bursts
    assert stats.max_window_audio == pytest.approx(most, abs=1e-9)


def test_burst_threshold_and_count() -> None:
    frame = Message(Kind.AUDIO_8K, bytes(320))
    five = fed([(1.0 + i * 0.004, frame) for i in range(5)])  # 100 ms within 20 ms: not more
    assert five.bursts == 0 and five.max_window_audio == pytest.approx(0.1)
    six = fed([(1.0 + i * 0.003, frame) for i in range(6)])
    assert six.bursts == 1 and six.max_window_audio == pytest.approx(0.12)
    # Two bursts with paced frames between them; the paced ones alone are no burst.
    stream = [(i * 0.0001, frame) for i in range(12)]
    stream += [(0.02 + i * 0.02, frame) for i in range(1, 50)]
    stream += [(2.0 + i * 0.0001, frame) for i in range(8)]
    two = fed(stream)
    assert two.bursts == 2
    assert two.max_window_audio == pytest.approx(0.24)
    paced = fed([(i * 0.02, frame) for i in range(100)])
    assert paced.bursts == 0 and paced.max_window_audio == pytest.approx(0.04)


def test_one_large_frame_is_a_burst_on_its_own() -> None:
    """A 1 s message is 1 s of audio within 20 ms, each time (one burst while they last)."""
    second = Message(Kind.AUDIO_8K, bytes(16000))
    stats = fed([(float(i), second) for i in range(5)])
    assert stats.bursts == 1 and stats.max_window_audio == pytest.approx(1.0)


# Gaps, jitter, real time.


def test_gaps_and_realtime_ratio() -> None:
    frame = Message(Kind.AUDIO_8K, bytes(320))
    stats = fed([(0.5 + i * 0.02, frame) for i in range(250)])
    assert stats.mean_gap == pytest.approx(0.02)
    assert stats.max_gap == pytest.approx(0.02)
    assert stats.realtime_ratio == pytest.approx(1.0)
    fast = fed([(i * 0.01, frame) for i in range(250)])
    assert fast.realtime_ratio == pytest.approx(5.0 / (2.49 + 0.02))
    gap = fed([(i * 0.02 + (1.0 if i >= 100 else 0.0), frame) for i in range(250)])
    assert gap.max_gap == pytest.approx(1.02)
    assert gap.realtime_ratio == pytest.approx(5.0 / 6.0)


def test_jitter_p99_from_the_histogram() -> None:
    frame = Message(Kind.AUDIO_8K, bytes(320))
    rnd = random.Random(3)
    late = set(rnd.sample(range(1, 999), 20))  # 2% of frames 5 ms late
    stats = fed([(i * 0.02 + (0.005 if i in late else 0.0), frame) for i in range(1000)])
    # A late frame and the one after it are each 5 ms off: 4% of gaps.
    assert stats.jitter_p99 == pytest.approx(0.0051, abs=1e-4)
    assert stats.as_dict()["jitter_p99_ms"] in (5.0, 5.1)
    steady = fed([(i * 0.02, frame) for i in range(1000)])
    assert steady.jitter_p99 is not None and steady.jitter_p99 <= 0.0001 + 1e-12
    assert steady.as_dict()["jitter_p99_ms"] == 0.1  # the bin's upper edge


def test_jitter_beyond_the_fine_bins() -> None:
    """Jitter over 25.6 ms goes to 10%-wide bins: p99 within 10% of the truth."""
    frame = Message(Kind.AUDIO_8K, bytes(320))
    late = set(range(10, 1000, 25))  # 4% of frames 100 ms late: 8% of gaps off by 100 ms
    stats = fed([(i * 0.02 + (0.1 if i in late else 0.0), frame) for i in range(1000)])
    assert stats.jitter_p99 is not None
    assert 0.1 <= stats.jitter_p99 <= 0.11 * 1.1


def test_pacing_text() -> None:
    frame = Message(Kind.AUDIO_8K, bytes(320))
    stats = fed([(i * 0.02 + (0.0004 if i % 10 == 5 else 0.0), frame) for i in range(500)])
    assert stats.pacing() == "1.00x real time, jitter p99 0.5ms, worst gap 20.4ms"
    assert stats.gaps() == "mean 20.0ms worst 20.4ms"


def offered_to(gate_says: bool) -> tuple[list[int], DirectionStats]:
    """Which audio messages (by count) a DirectionStats offers to its encoding gate,
    over 120 messages with a run change in the middle, when the gate always says
    `gate_says`."""
    pcm = hello_pcm()
    offered: list[int] = []
    stats: DirectionStats

    def gate() -> bool:
        offered.append(stats.audio_messages)
        return gate_says

    stats = DirectionStats(encoding_offset=3, encoding_gate=gate)
    t = 0.0
    for i in range(120):
        size = 640 if 40 <= i < 47 else 320  # a run change in the middle
        kind = Kind.AUDIO_16K if size == 640 else Kind.AUDIO_8K
        stats.add(t, Message(kind, pcm[i * 320 : i * 320 + size]))
        stats.add(t, Message(Kind.DTMF, b"1"))
        t += 0.02
    return offered, stats


def test_the_encoding_analysis_keeps_its_schedule() -> None:
    """One audio message in five (shifted by encoding_offset) is offered to the gate,
    whichever path it takes."""
    offered, stats = offered_to(True)
    schedule = [n for n in range(1, 121) if (n + 3) % 5 == 1]
    assert offered == schedule[: len(offered)]
    assert stats._encoding_tries == len(offered)
    # ... until ENCODING_SETTLED frames agree.
    assert dict(stats.encoding_votes) == {"s16le": ENCODING_SETTLED}
    assert len(offered) < len(schedule)


def test_a_closed_gate_is_asked_again_later() -> None:
    """When the gate says no (the budget of many calls is spent), the next message
    offered is ENCODING_BACKOFF samples later, on the same schedule; a run change
    starts the schedule again."""
    offered, stats = offered_to(False)
    step = ENCODING_SAMPLE_EVERY * ENCODING_BACKOFF
    # Runs: messages 1-40, 41-47 (640 bytes), 48-120. 3 is refused, so the next would
    # be 53, but the run ends at 40; the 640-byte run starts its schedule again (43);
    # 48 comes on the general path (a run's first message), 53 starts the last run's
    # schedule, and after its refusal comes 53 + 50.
    assert step == 50
    assert offered == [3, 43, 48, 53, 103]
    assert stats._encoding_tries == 0


# levels_dbfs


def test_levels_dbfs_equals_level_dbfs() -> None:
    pcm = hello_pcm()
    rnd = random.Random(5)
    payloads = [pcm[at : at + size] for at, size in ((0, 320), (640, 320), (5000, 321))]
    for _ in range(500):
        at = rnd.randrange(0, len(pcm) - 2000)
        payloads.append(pcm[at : at + rnd.choice([2, 160, 320, 321, 640, 1920])])
    payloads += [b"", b"\x01", bytes(320), bytes(321), b"\xff\x7f" * 160, b"\x00\x80" * 160]
    payloads.append(b"\x01\x00" + bytes(318))  # one sample of 1: about -100 dBFS
    got = levels_dbfs(payloads)
    assert got == [level_dbfs(p) for p in payloads]
    assert got[-3] == 0.0 and not math.copysign(1, got[-3]) < 0  # 0.0, not -0.0
    assert levels_dbfs([]) == []


def test_levels_dbfs_of_a_one_length_batch_equals_level_dbfs() -> None:
    """The usual batch (every payload 320 bytes) takes its own path: the same figures."""
    pcm = hello_pcm()
    rnd = random.Random(7)
    payloads = [pcm[at : at + 320] for at in (rnd.randrange(0, len(pcm) - 320) for _ in range(300))]
    payloads += [bytes(320), b"\xff\x7f" * 160, b"\x00\x80" * 160, b"\x01\x00" + bytes(318)]
    payloads += [payloads[0]] * 3  # the same object again, as an echo gives it
    got = levels_dbfs(payloads)
    assert got == [level_dbfs(p) for p in payloads]
    assert got[300] is None and got[301] == 0.0 and got[302] == 0.0


# The encoding guess


def ulaw_to_linear(byte: int) -> int:
    """G.711 mu-law to a 16-bit sample, from the standard's formula."""
    u = ~byte & 0xFF
    magnitude = (((u & 0x0F) << 3) + 0x84) << ((u >> 4) & 0x07)
    return -(magnitude - 0x84) if u & 0x80 else magnitude - 0x84


def reference_guess(payload: bytes) -> str | None:
    """guess_encoding as its docstring says it: the reading with by far the smallest
    mean magnitude, in plain Python."""
    n = len(payload) // 2
    if not n:
        return None
    le = sum(abs(v) for (v,) in struct.iter_unpack("<h", payload[: 2 * n])) / n
    if le < 64:
        return None
    be = sum(abs(v) for (v,) in struct.iter_unpack(">h", payload[: 2 * n])) / n
    ulaw = sum(abs(ulaw_to_linear(b)) for b in payload[: 2 * n]) / (2 * n)
    if ulaw * 4 < le and ulaw < be:
        return "ulaw"
    if be * 4 < le and be <= ulaw:
        return "s16be"
    return "s16le"


def test_guess_encoding_is_the_smallest_mean_magnitude() -> None:
    rnd = random.Random(11)
    pcm = hello_pcm()
    frames: list[bytes] = []
    for _ in range(300):
        size = rnd.choice([64, 160, 320, 321, 640])
        at = rnd.randrange(0, len(pcm) - size)
        le = pcm[at : at + size]
        frames.append(le)  # speech and pauses, as PCM
        frames.append(b"".join(le[i : i + 2][::-1] for i in range(0, len(le), 2)))  # s16be
        quiet_ulaw = bytes(rnd.choice([0x7F, 0x7E, 0xFF, 0xFE, 0x70, 0xF0]) for _ in range(size))
        frames.append(quiet_ulaw)
        frames.append(bytes(rnd.randrange(256) for _ in range(size)))  # noise
    frames += [b"", b"\x01", bytes(320), b"\xff" * 320]
    verdicts = [guess_encoding(f) for f in frames]
    assert verdicts == [reference_guess(f) for f in frames]
    assert {"s16le", "s16be", "ulaw", None} <= set(verdicts)  # every verdict was tried


def test_a_unanimous_encoding_guess_settles() -> None:
    """After ENCODING_SETTLED frames that all read the same way, no more are analysed:
    a stream's encoding does not change."""
    pcm = hello_pcm()
    offered: list[int] = []

    def gate() -> bool:
        offered.append(1)
        return True

    stats = DirectionStats(encoding_gate=gate)
    loud = [pcm[at : at + 320] for at in range(0, len(pcm) - 320, 320)]
    loud = [f for f in loud if guess_encoding(f) == "s16le"]
    for i in range(5 * 200):
        stats.add(i * 0.02, Message(Kind.AUDIO_8K, loud[i % len(loud)]))
    assert dict(stats.encoding_votes) == {"s16le": ENCODING_SETTLED}
    assert len(offered) == ENCODING_SETTLED


def test_a_split_encoding_vote_goes_on() -> None:
    """Frames that read two ways are analysed on, up to ENCODING_MAX_FRAMES."""
    pcm = hello_pcm()
    loud = [pcm[at : at + 320] for at in range(0, len(pcm) - 320, 320)]
    loud = [f for f in loud if guess_encoding(f) == "s16le"]
    ulaw = bytes([0x7F, 0xFF, 0x7E, 0xFE]) * 80
    assert guess_encoding(ulaw) == "ulaw"
    stats = DirectionStats()
    for i in range(5 * 200):
        frame = ulaw if i % 10 < 5 else loud[i % len(loud)]
        stats.add(i * 0.02, Message(Kind.AUDIO_8K, frame))
    assert sum(stats.encoding_votes.values()) == ENCODING_MAX_FRAMES
    assert set(stats.encoding_votes) == {"s16le", "ulaw"}
