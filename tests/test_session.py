"""The session's rules, sans I/O: bytes and times in, verdicts out.

Each test plays one side of a call (docs/protocol.md) by feeding a Session what
the peer sent and when, then asks the session what happened. There are no
sockets and no sleeps: a time is a float passed in, and `started` is 100.0 so
that an event time that is not relative to it cannot pass by accident.
"""

from __future__ import annotations

import uuid as uuid_lib
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audiosocket_cli.protocol.events import ENDINGS, VIOLATION_ENDINGS
from audiosocket_cli.protocol.session import (
    INACTIVITY,
    MESSAGE_STALL,
    PAYLOAD_WINDOW,
    Ended,
    Mode,
    Problem,
    Received,
    Role,
    Rules,
    Session,
    SessionEvent,
)
from audiosocket_cli.protocol.wire import AUDIO_RATES, RATE_KINDS, Kind, Message

STARTED = 100.0
CALL_UUID = uuid_lib.UUID("40325ec2-5efd-4bd3-805f-53576e581d13")
OTHER_UUID = uuid_lib.UUID("9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d")
PCM = b"\x01\x02" * 160  # 20 ms at 8 kHz: 320 bytes, even


def wire(kind: int, payload: bytes) -> bytes:
    """The wire bytes, built by hand rather than by the encoder."""
    return bytes([kind]) + len(payload).to_bytes(2, "big") + payload


UUID_MSG = wire(0x01, CALL_UUID.bytes)
FRAME = wire(0x10, PCM)
HANGUP = b"\x00\x00\x00"
HEADER_ONLY = FRAME[:3]  # a whole header promising 320 bytes


def at(seconds: float) -> float:
    """A monotonic time `seconds` into the call."""
    return STARTED + seconds


def t(seconds: float) -> float:
    """The event time of something at `at(seconds)`, computed as the session must."""
    return at(seconds) - STARTED


def app_side(rules: Rules | None = None) -> Session:
    """We are the application; the peer is Asterisk."""
    return Session(Role.APPLICATION, rules, started=STARTED)


def answered(rules: Rules | None = None) -> Session:
    """An application-side session that has had Asterisk's UUID at 0.01 s."""
    session = app_side(rules)
    assert session.receive(UUID_MSG, at(0.01)) == [
        Received(t(0.01), Message(0x01, CALL_UUID.bytes))
    ]
    return session


def asterisk_side(
    mode: Mode = Mode.STRICT,
    *,
    inactivity: float | None = None,
    payload_window: float | None = PAYLOAD_WINDOW,
) -> Session:
    """We are Asterisk; the peer is the application."""
    rules = Rules(mode=mode, inactivity=inactivity, payload_window=payload_window)
    return Session(Role.ASTERISK, rules, started=STARTED)


E = TypeVar("E", Received, Problem, Ended)


def of_type(events: list[SessionEvent], cls: type[E]) -> list[E]:
    return [event for event in events if isinstance(event, cls)]


def codes(events: list[SessionEvent]) -> list[str]:
    return [event.code for event in events if isinstance(event, Problem)]


def ending(events: list[SessionEvent]) -> Ended:
    (ended,) = of_type(events, Ended)
    assert ended.ended in ENDINGS
    return ended


def state(session: Session) -> tuple[object, ...]:
    """Everything a caller of the session can see of it."""
    return (
        session.decoder.buffered,
        session.partial,
        session.messages_received,
        session.deadline,
        session.ended,
        session.uuid,
        list(session.violations),
    )


# The application's side: what Asterisk sends ------------------------------------------


def test_the_uuid_comes_first_and_names_the_call() -> None:
    session = app_side()
    events = session.receive(UUID_MSG, at(0.25))
    assert events == [Received(0.25, Message(Kind.UUID, CALL_UUID.bytes))]
    assert session.uuid == str(CALL_UUID)
    assert session.messages_received == 1
    assert session.violations == []
    assert session.ended is None


FIRST_NOT_UUID = [
    ("audio", FRAME, "audio (kind 0x10, 320 bytes)"),
    ("dtmf", wire(0x03, b"5"), "dtmf (kind 0x03"),
    ("error", wire(0xFF, b"\x02"), "error (kind 0xff"),
    ("hangup", HANGUP, "hangup (kind 0x00, 0 bytes)"),
]


@pytest.mark.parametrize(
    ("name", "data", "words"), FIRST_NOT_UUID, ids=[n for n, *_ in FIRST_NOT_UUID]
)
def test_a_first_message_other_than_the_uuid_is_a_violation(
    name: str, data: bytes, words: str
) -> None:
    session = app_side()
    events = session.receive(data, at(0.5))
    assert events[0] == Received(0.5, Message(data[0], data[3:]))
    (problem,) = of_type(events, Problem)
    assert problem.code == "first-not-uuid"
    assert problem.violation
    assert problem.t == 0.5
    assert f"first message is {words}" in problem.text
    assert "not a uuid" in problem.text
    assert session.violations == [problem.text]
    assert session.uuid is None
    # A hangup still ends the call, after it has been judged.
    if name == "hangup":
        assert ending(events).ended == "caller-hangup"
    else:
        assert session.ended is None


def test_a_first_uuid_of_the_wrong_length_is_malformed_and_names_no_call() -> None:
    session = app_side()
    events = session.receive(wire(0x01, b"abcd"), at(0.5))
    assert codes(events) == ["malformed:uuid payload is 4 bytes, not 16"]
    assert session.uuid is None
    assert session.violations == [
        "the caller sent a malformed message: uuid payload is 4 bytes, not 16"
    ]


def test_a_second_different_uuid_is_a_problem_but_not_a_violation() -> None:
    session = answered()
    events = session.receive(wire(0x01, OTHER_UUID.bytes), at(1.0))
    assert events[0] == Received(1.0, Message(0x01, OTHER_UUID.bytes))
    (problem,) = of_type(events, Problem)
    assert problem.code == "second-uuid"
    assert not problem.violation
    assert str(OTHER_UUID) in problem.text
    assert f"it stays {CALL_UUID}" in problem.text
    assert session.uuid == str(CALL_UUID)
    assert session.violations == []


def test_the_same_uuid_again_is_no_problem() -> None:
    session = answered()
    assert session.receive(UUID_MSG, at(1.0)) == [Received(1.0, Message(0x01, CALL_UUID.bytes))]


GARBAGE = [
    ("http-get", b"GET / HTTP/1.1\r\nHost: example\r\n\r\n", ["HTTP", "'GET / HTTP/1.1'"]),
    ("http-post", b"POST /x HTTP/1.1\r\n\r\n", ["HTTP", "'POST /x HTTP/1.1'"]),
    ("http-response", b"HTTP/1.1 400 Bad Request\r\n\r\n", ["HTTP", "400 Bad Request"]),
    ("ssh", b"SSH-2.0-OpenSSH_9.6\r\n", ["SSH server"]),
    ("text", b"hello there\n", ["sent text", "hello there"]),
    ("unassigned-kind", b"\x02\x00\x02hi", ["first byte 0x02 is not a message kind", "02000268"]),
    ("unassigned-high", b"\xfe\x00\x00", ["first byte 0xfe is not a message kind"]),
    ("short-text", b"GE", ["first byte 0x47 is not a message kind"]),
]


@pytest.mark.parametrize(("name", "data", "words"), GARBAGE, ids=[n for n, *_ in GARBAGE])
def test_garbage_first_bytes_end_the_call(name: str, data: bytes, words: list[str]) -> None:
    session = app_side(Rules(idle_timeout=10.0))
    events = session.receive(data, at(0.2))
    assert events == [session.ended]
    ended = ending(events)
    assert ended.ended == "garbage"
    assert ended.t == t(0.2)
    assert ended.detail.startswith("not AudioSocket: ")
    for word in words:
        assert word in ended.detail
    assert session.violations == [ended.detail]
    assert session.messages_received == 0
    assert session.deadline is None
    assert session.receive(UUID_MSG, at(0.3)) == []  # over is over


TLS_CLIENT_HELLO = bytes.fromhex("16030100f5010000f10303") + bytes(32)


def test_a_tls_client_hello_is_garbage() -> None:
    # Asterisk's first byte is always 0x01; 0x16 0x03 is a TLS record, plainly another protocol.
    session = app_side()
    events = session.receive(TLS_CLIENT_HELLO, at(0.2))
    assert ending(events).ended == "garbage"
    assert "TLS" in ending(events).detail


def test_garbage_is_only_judged_on_the_first_read() -> None:
    # After the UUID, an unassigned kind is a malformed message, not another protocol.
    session = answered()
    events = session.receive(wire(0x02, b"hi"), at(1.0))
    assert events[0] == Received(1.0, Message(0x02, b"hi"))
    assert codes(events) == ["malformed:unassigned kind 0x02"]
    assert session.ended is None


# (id, the wire bytes after the UUID, problem codes, ending or None)
FROM_ASTERISK: list[tuple[str, bytes, list[str], str | None]] = [
    ("uuid-again", UUID_MSG, [], None),
    ("uuid-other", wire(0x01, OTHER_UUID.bytes), ["second-uuid"], None),
    ("uuid-short", wire(0x01, b"abcd"), ["malformed:uuid payload is 4 bytes, not 16"], None),
    *[(f"audio-{rate}", wire(kind, PCM), [], None) for kind, rate in AUDIO_RATES.items()],
    ("audio-empty", wire(0x10, b""), ["malformed:empty audio message"], None),
    ("audio-odd", wire(0x12, b"abc"), ["malformed:odd audio length 3 (16-bit samples)"], None),
    *[(f"dtmf-{d}", wire(0x03, d.encode()), [], None) for d in "0123456789*#ABCD"],
    ("dtmf-letter", wire(0x03, b"x"), ["malformed:dtmf byte 0x78 is not a digit"], None),
    ("dtmf-long", wire(0x03, b"12"), ["malformed:dtmf payload is 2 bytes, not 1"], None),
    ("hangup", HANGUP, [], "caller-hangup"),
    (
        "hangup-payload",
        wire(0x00, b"x"),
        ["malformed:hangup with a 1-byte payload"],
        "caller-hangup",
    ),
    ("error-empty", wire(0xFF, b""), [], None),
    ("error-code", wire(0xFF, b"\x02"), [], None),
    ("unassigned-02", wire(0x02, b"hi"), ["malformed:unassigned kind 0x02"], None),
    ("unassigned-19", wire(0x19, b""), ["malformed:unassigned kind 0x19"], None),
]


@pytest.mark.parametrize(
    ("name", "data", "problems", "ended"), FROM_ASTERISK, ids=[n for n, *_ in FROM_ASTERISK]
)
def test_every_kind_from_asterisk_is_received_and_judged(
    name: str, data: bytes, problems: list[str], ended: str | None
) -> None:
    session = answered()
    events = session.receive(data, at(1.5))
    assert events[0] == Received(1.5, Message(data[0], data[3:]))
    assert codes(events) == problems
    for problem in of_type(events, Problem):
        # Malformed content breaks the protocol; a second uuid does not.
        assert problem.violation is problem.code.startswith("malformed:")
        assert problem.t == 1.5
    if ended is None:
        assert session.ended is None
        assert len(events) == 1 + len(problems)
    else:
        assert ending(events).ended == ended
        assert events[-1] is session.ended
    assert session.messages_received == 2


@pytest.mark.parametrize("kind", sorted(AUDIO_RATES))
def test_audio_at_every_rate_carries_its_rate(kind: int) -> None:
    session = answered()
    (event,) = session.receive(wire(kind, PCM), at(1.0))
    assert isinstance(event, Received)
    assert event.message.rate == AUDIO_RATES[kind]
    assert event.message.payload == PCM


def test_a_hangup_ends_the_call_and_a_close_after_it_changes_nothing() -> None:
    session = answered()
    events = session.receive(HANGUP, at(2.0))
    assert events == [
        Received(2.0, Message(0x00, b"")),
        Ended(2.0, "caller-hangup", "the caller hung up"),
    ]
    # Asterisk never sends one, but if it did the close that follows is not a second end.
    assert session.receive(b"", at(2.5)) == []
    assert session.reset(at(2.6)) == []
    assert session.ended == Ended(2.0, "caller-hangup", "the caller hung up")
    assert session.violations == []


def test_messages_after_a_hangup_in_the_same_read_are_not_taken() -> None:
    session = answered()
    events = session.receive(HANGUP + FRAME, at(2.0))
    assert [type(e) for e in events] == [Received, Ended]
    assert session.messages_received == 2


def test_end_of_stream_is_caller_close() -> None:
    session = answered()
    session.receive(FRAME, at(1.0))
    events = session.receive(b"", at(3.0))
    assert events == [Ended(3.0, "caller-close", "the caller closed the connection")]
    assert "caller-close" not in VIOLATION_ENDINGS
    assert session.violations == []
    assert session.deadline is None


# (id, the bytes of the cut message that came, words of the detail)
CUTS = [
    ("one-byte", FRAME[:1], "inside a header: 1 bytes received, 2 missing"),
    ("header-short", FRAME[:2], "inside a header: 2 bytes received, 1 missing"),
    ("header", FRAME[:3], "inside a message of kind 0x10: 3 bytes received, 320 missing"),
    ("payload", FRAME[:103], "inside a message of kind 0x10: 103 bytes received, 220 missing"),
    ("last-byte", FRAME[:-1], "inside a message of kind 0x10: 322 bytes received, 1 missing"),
]


@pytest.mark.parametrize(("name", "cut", "words"), CUTS, ids=[n for n, *_ in CUTS])
def test_a_stream_cut_inside_a_message_is_truncated(name: str, cut: bytes, words: str) -> None:
    session = answered()
    assert session.receive(FRAME + cut, at(1.0)) == [Received(1.0, Message(0x10, PCM))]
    assert session.partial
    ended = ending(session.receive(b"", at(1.5)))
    assert ended.ended == "truncated"
    assert ended.t == 1.5
    assert ended.detail.startswith("the caller closed the connection: stream ended")
    assert words in ended.detail
    assert session.violations == [ended.detail]


def test_a_reset_is_caller_reset() -> None:
    session = answered()
    events = session.reset(at(4.0))
    assert events == [Ended(t(4.0), "caller-reset", "the caller reset the connection")]
    assert session.violations == []
    assert session.reset(at(5.0)) == []


def test_a_reset_for_another_reason_names_it() -> None:
    session = answered()
    ended = ending(session.reset(at(4.0), "broken pipe"))
    assert ended.ended == "caller-reset"
    assert ended.detail == "the caller reset the connection: broken pipe"


def test_a_reset_inside_a_message_is_truncated() -> None:
    session = answered()
    session.receive(FRAME[:13], at(1.0))
    ended = ending(session.reset(at(1.2)))
    assert ended.ended == "truncated"
    assert "reset the connection inside a message" in ended.detail
    assert "13 bytes of it had arrived" in ended.detail
    assert session.violations == [ended.detail]


# The application's own limits ---------------------------------------------------------


def test_no_timer_runs_between_whole_messages() -> None:
    # Asterisk sends nothing while its side is silent: a quiet socket is not a dead one.
    session = answered()
    assert session.deadline is None
    assert session.tick(at(3600.0)) == []
    assert session.ended is None


def test_a_message_left_incomplete_stalls() -> None:
    session = answered()
    session.receive(FRAME[:100], at(1.0))
    assert session.deadline == pytest.approx(at(1.0 + MESSAGE_STALL))
    assert session.tick(at(1.0 + MESSAGE_STALL - 0.01)) == []
    assert session.ended is None
    ended = ending(session.tick(at(1.0 + MESSAGE_STALL)))
    assert ended.ended == "stall"
    assert ended.t == pytest.approx(1.0 + MESSAGE_STALL)
    assert f"incomplete for {MESSAGE_STALL:g} s" in ended.detail
    assert "100 bytes of it arrived" in ended.detail
    assert session.violations == [ended.detail]
    assert session.deadline is None


def test_a_tick_late_still_stalls() -> None:
    session = answered(Rules(message_stall=2.0))
    session.receive(FRAME[:3], at(1.0))
    assert session.deadline == pytest.approx(at(3.0))
    assert ending(session.tick(at(9.0))).ended == "stall"


def test_the_rest_arriving_in_time_clears_the_stall() -> None:
    session = answered()
    session.receive(FRAME[:100], at(1.0))
    events = session.receive(FRAME[100:], at(1.0 + MESSAGE_STALL - 0.1))
    assert events == [Received(t(1.0 + MESSAGE_STALL - 0.1), Message(0x10, PCM))]
    assert session.deadline is None
    assert session.tick(at(1.0 + MESSAGE_STALL)) == []
    assert session.ended is None


def test_the_stall_counts_from_where_the_message_began() -> None:
    # More bytes of the same message do not make it less stalled.
    session = answered()
    session.receive(FRAME[:10], at(1.0))
    session.receive(FRAME[10:200], at(4.0))
    assert session.deadline == pytest.approx(at(1.0 + MESSAGE_STALL))
    ended = ending(session.tick(at(1.0 + MESSAGE_STALL)))
    assert ended.ended == "stall"
    assert "200 bytes of it arrived" in ended.detail


def test_a_new_message_restarts_the_stall_clock() -> None:
    session = answered()
    session.receive(FRAME[:100], at(1.0))
    session.receive(FRAME[100:] + FRAME[:5], at(4.0))  # the first completes; a second begins
    assert session.deadline == pytest.approx(at(4.0 + MESSAGE_STALL))
    assert session.tick(at(1.0 + MESSAGE_STALL)) == []
    assert ending(session.tick(at(4.0 + MESSAGE_STALL))).ended == "stall"


def test_an_observer_reports_a_stall_once_and_keeps_the_call() -> None:
    session = answered(Rules(mode=Mode.OBSERVE))
    session.receive(FRAME[:50], at(1.0))
    (problem,) = session.tick(at(1.0 + MESSAGE_STALL))
    assert isinstance(problem, Problem)
    assert problem.code == "stall"
    assert problem.violation
    assert session.ended is None
    assert session.deadline is None
    assert session.tick(at(60.0)) == []
    assert session.receive(FRAME[50:], at(61.0)) == [Received(t(61.0), Message(0x10, PCM))]


def test_no_message_stall_rule() -> None:
    session = answered(Rules(message_stall=None))
    session.receive(FRAME[:50], at(1.0))
    assert session.deadline is None
    assert session.tick(at(1000.0)) == []


def test_idle_timeout() -> None:
    session = answered(Rules(idle_timeout=3.0))
    assert session.deadline == pytest.approx(at(3.01))
    session.receive(FRAME, at(1.0))  # what arrives moves it
    assert session.deadline == pytest.approx(at(4.0))
    assert session.tick(at(3.9)) == []
    ended = ending(session.tick(at(4.0)))
    assert ended.ended == "timeout"
    assert ended.t == pytest.approx(4.0)
    assert ended.detail == "nothing received for 3 s"
    assert session.violations == []


def test_idle_timeout_is_not_moved_by_what_we_send() -> None:
    session = answered(Rules(idle_timeout=3.0))
    session.sent(Message.audio(PCM), at(2.0))
    assert session.deadline == pytest.approx(at(3.01))


def test_idle_timeout_ends_even_an_observer() -> None:
    session = answered(Rules(mode=Mode.OBSERVE, idle_timeout=1.0))
    assert ending(session.tick(at(1.01))).ended == "timeout"


# Splits: TCP has no message boundaries --------------------------------------------------

CALL_STREAM = b"".join(
    [
        UUID_MSG,
        *[wire(kind, PCM) for kind in AUDIO_RATES],
        wire(0x03, b"7"),
        wire(0x01, OTHER_UUID.bytes),
        wire(0xFF, b"\x02"),
        wire(0x02, b"hi"),
        wire(0x10, b""),
        FRAME,
        HANGUP,
    ]
)


def feed(session: Session, chunks: list[bytes], now: float) -> list[SessionEvent]:
    events: list[SessionEvent] = []
    for chunk in chunks:
        assert chunk, "b'' would be the end of the stream"
        events.extend(session.receive(chunk, now))
    return events


def test_a_whole_call_in_one_read() -> None:
    session = app_side()
    events = session.receive(CALL_STREAM, at(1.0))
    received = of_type(events, Received)
    assert [e.message.kind for e in received] == [
        0x01,
        *AUDIO_RATES,
        0x03,
        0x01,
        0xFF,
        0x02,
        0x10,
        0x10,
        0x00,
    ]
    assert session.messages_received == len(received) == 17
    assert codes(events) == [
        "second-uuid",
        "malformed:unassigned kind 0x02",
        "malformed:empty audio message",
    ]
    assert ending(events).ended == "caller-hangup"


@pytest.mark.parametrize(
    ("role", "mode"),
    [
        (Role.APPLICATION, Mode.STRICT),
        (Role.APPLICATION, Mode.OBSERVE),
        (Role.ASTERISK, Mode.LENIENT),
    ],
)
def test_byte_by_byte_gives_what_one_read_gives(role: Role, mode: Mode) -> None:
    whole = Session(role, Rules(mode=mode), started=STARTED).receive(CALL_STREAM, at(1.0))
    assert len(of_type(whole, Received)) == 17
    session = Session(role, Rules(mode=mode), started=STARTED)
    pieces = [CALL_STREAM[i : i + 1] for i in range(len(CALL_STREAM))]
    assert feed(session, pieces, at(1.0)) == whole
    assert session.messages_received == 17


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` in pieces at the cut points, none empty."""
    edges = [0, *sorted({c % len(data) for c in cuts} - {0}), len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]


message_strategy = st.one_of(
    st.builds(
        lambda pcm, rate: Message.audio(pcm, rate),
        st.binary(max_size=200),
        st.sampled_from(sorted(RATE_KINDS)),
    ),
    st.uuids().map(Message.for_uuid),
    st.sampled_from("0123456789*#ABCD").map(Message.dtmf),
    st.builds(Message.error, st.none() | st.integers(0, 255)),
    st.builds(Message, st.integers(0, 255), st.binary(max_size=40)),
)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(list(Role)),
    st.sampled_from([Mode.STRICT, Mode.LENIENT]),
    st.lists(message_strategy, max_size=10),
    st.lists(st.integers(0, 10_000), max_size=20),
)
def test_any_split_gives_the_same_events(
    role: Role, mode: Mode, messages: list[Message], cuts: list[int]
) -> None:
    stream = b"".join(m.encode() for m in [Message.for_uuid(CALL_UUID), *messages])
    one = Session(role, Rules(mode=mode), started=STARTED)
    whole = one.receive(stream, at(1.0))
    two = Session(role, Rules(mode=mode), started=STARTED)
    assert feed(two, split_at(stream, cuts), at(1.0)) == whole
    assert two.messages_received == one.messages_received == len(of_type(whole, Received))
    assert (two.ended, two.uuid, two.violations) == (one.ended, one.uuid, one.violations)
    if one.ended is None:
        assert state(two) == state(one)


@pytest.mark.parametrize(
    "garbage", [TLS_CLIENT_HELLO, b"GET / HTTP/1.1\r\n\r\n", b"SSH-2.0-OpenSSH_9.6\r\n"]
)
def test_an_observer_finds_no_messages_after_garbage(garbage: bytes) -> None:
    # Another protocol's bytes have no message boundaries: what follows them is not
    # decoded as if a message began there.
    session = Session(Role.APPLICATION, Rules(mode=Mode.OBSERVE), started=STARTED)
    assert ending(session.receive(garbage, at(0.1))).ended == "garbage"
    assert session.receive(FRAME + UUID_MSG, at(0.2)) == []
    assert session.messages_received == 0


@pytest.mark.parametrize("role", list(Role))
def test_an_observer_takes_what_follows_a_hangup_in_the_same_read(role: Role) -> None:
    # A proxy forwards what comes after an end; how TCP split the bytes must not matter.
    stream = UUID_MSG + HANGUP + FRAME
    split = Session(role, Rules(mode=Mode.OBSERVE), started=STARTED)
    in_pieces = feed(split, [UUID_MSG + HANGUP, FRAME], at(1.0))
    assert in_pieces[-1] == Received(t(1.0), Message(0x10, PCM))  # taken from a later read
    whole = Session(role, Rules(mode=Mode.OBSERVE), started=STARTED)
    assert whole.receive(stream, at(1.0)) == in_pieces
    assert whole.messages_received == split.messages_received == 3


# Asterisk's side: what the application sends ------------------------------------------

# (id, message, what it is counted as, malformed, how it is described)
REFUSED: list[tuple[str, Message, str, bool, str]] = [
    (
        "uuid",
        Message.for_uuid(CALL_UUID),
        "uuid message",
        False,
        f"uuid message (kind 0x01, 16 bytes, {CALL_UUID})",
    ),
    (
        "uuid-short",
        Message(0x01, b"abcd"),
        "uuid payload is 4 bytes, not 16",
        True,
        "uuid message (kind 0x01, 4 bytes)",
    ),
    (
        "dtmf",
        Message.dtmf("1"),
        "dtmf message",
        False,
        "a dtmf message (kind 0x03, 1 byte, digit 1)",
    ),
    (
        "error",
        Message.error(),
        "error message",
        False,
        "an error message (kind 0xff, 0 bytes)",
    ),
    (
        "error-code",
        Message.error(2),
        "error message",
        False,
        "an error message (kind 0xff, 1 byte, code 0x02)",
    ),
    (
        "audio-empty-8k",
        Message(0x10, b""),
        "empty audio message",
        True,
        "an empty audio message (kind 0x10, 0 bytes)",
    ),
    (
        "audio-empty-48k",
        Message(0x16, b""),
        "empty audio message",
        True,
        "an empty audio message (kind 0x16, 0 bytes)",
    ),
    (
        "unassigned-02",
        Message(0x02, b"hi"),
        "unassigned kind 0x02",
        True,
        "a message of unassigned kind 0x02 (kind 0x02, 2 bytes)",
    ),
    (
        "unassigned-19",
        Message(0x19, b""),
        "unassigned kind 0x19",
        True,
        "a message of unassigned kind 0x19 (kind 0x19, 0 bytes)",
    ),
]
REFUSED_IDS = [name for name, *_ in REFUSED]


def refused_after_a_frame(mode: Mode, message: Message) -> tuple[Session, list[SessionEvent]]:
    session = asterisk_side(mode)
    assert session.receive(FRAME, at(0.1)) == [Received(t(0.1), Message(0x10, PCM))]
    return session, session.receive(message.encode(), at(0.5))


@pytest.mark.parametrize(
    ("name", "message", "what", "malformed", "described"), REFUSED, ids=REFUSED_IDS
)
def test_strict_asterisk_ends_the_call_on_what_it_refuses(
    name: str, message: Message, what: str, malformed: bool, described: str
) -> None:
    session, events = refused_after_a_frame(Mode.STRICT, message)
    assert events[0] == Received(0.5, message)
    ended = ending(events)
    assert events == [events[0], ended]
    assert ended.ended == "refused"
    assert ended.t == 0.5
    assert described in ended.detail
    assert ended.detail.startswith("the application sent ")
    assert "at 0.500s" in ended.detail
    assert "Asterisk ends the session" in ended.detail
    assert session.violations == [ended.detail]
    assert session.receive(FRAME, at(0.6)) == []  # the call is over
    assert session.deadline is None


@pytest.mark.parametrize(
    ("name", "message", "what", "malformed", "described"), REFUSED, ids=REFUSED_IDS
)
def test_lenient_asterisk_warns_and_carries_on(
    name: str, message: Message, what: str, malformed: bool, described: str
) -> None:
    session, events = refused_after_a_frame(Mode.LENIENT, message)
    assert events[0] == Received(0.5, message)
    (problem,) = events[1:]
    assert isinstance(problem, Problem)
    assert problem.code == "refused"
    assert problem.t == 0.5
    assert problem.what == what
    # Malformed content still breaks the protocol; a well-formed uuid, dtmf or error does not.
    assert problem.violation is malformed
    assert described in problem.text
    assert problem.text.endswith("--lenient: carrying on")
    assert session.violations == ([problem.text] if malformed else [])
    assert session.ended is None
    assert session.receive(FRAME, at(0.6)) == [Received(t(0.6), Message(0x10, PCM))]


@pytest.mark.parametrize(
    ("name", "message", "what", "malformed", "described"), REFUSED, ids=REFUSED_IDS
)
def test_an_observer_judges_strictly_and_never_ends_the_call(
    name: str, message: Message, what: str, malformed: bool, described: str
) -> None:
    session, events = refused_after_a_frame(Mode.OBSERVE, message)
    (problem,) = events[1:]
    assert isinstance(problem, Problem)
    assert problem.code == "refused"
    assert problem.violation
    assert problem.what == what
    assert described in problem.text
    assert problem.text.endswith("(forwarded)")
    assert session.violations == [problem.text]
    assert session.ended is None


def test_an_observer_counts_each_distinct_violation_once() -> None:
    session = asterisk_side(Mode.OBSERVE)
    session.receive(wire(0x02, b""), at(0.5))
    session.receive(wire(0x02, b""), at(0.5))
    assert len(session.violations) == 1
    session.receive(wire(0x03, b"1"), at(0.5))
    assert len(session.violations) == 2


@pytest.mark.parametrize("kind", sorted(AUDIO_RATES))
def test_asterisk_takes_audio_at_any_rate_first(kind: int) -> None:
    # The application owes no UUID: its first message may be audio.
    session = asterisk_side()
    events = session.receive(wire(kind, PCM), at(0.2))
    assert events == [Received(t(0.2), Message(kind, PCM))]
    assert session.violations == []


def test_asterisk_takes_odd_audio_with_a_warning() -> None:
    session = asterisk_side()
    events = session.receive(wire(0x10, b"x" * 161), at(0.2))
    (problem,) = of_type(events, Problem)
    assert problem.code == "odd-audio"
    assert not problem.violation
    assert "odd length 161" in problem.text
    assert session.ended is None


@pytest.mark.parametrize("mode", list(Mode))
def test_an_application_hangup_ends_the_call_in_every_mode(mode: Mode) -> None:
    session = asterisk_side(mode)
    events = session.receive(HANGUP, at(3.0))
    assert events == [
        Received(3.0, Message(0, b"")),
        Ended(3.0, "app-hangup", "the application hung up"),
    ]
    assert session.violations == []


def test_an_application_close_and_reset() -> None:
    session = asterisk_side()
    assert session.receive(b"", at(1.0)) == [
        Ended(1.0, "app-close", "the application closed the connection")
    ]
    session = asterisk_side()
    assert session.reset(at(1.0)) == [
        Ended(1.0, "app-reset", "the application reset the connection")
    ]
    session = asterisk_side()
    session.receive(FRAME[:7], at(1.0))
    ended = ending(session.receive(b"", at(1.001)))
    assert ended.ended == "truncated"
    assert ended.detail.startswith("the application closed the connection")


def test_an_application_speaking_ssh_is_garbage() -> None:
    session = asterisk_side()
    ended = ending(session.receive(b"SSH-2.0-OpenSSH_9.6\r\n", at(0.05)))
    assert ended.ended == "garbage"
    assert "SSH server" in ended.detail


def test_an_application_starting_with_an_unassigned_kind_is_refused_not_garbage() -> None:
    # The application owes no first byte: only plainly another protocol is garbage.
    session = asterisk_side()
    ended = ending(session.receive(wire(0x02, b"\x00\x01"), at(0.05)))
    assert ended.ended == "refused"


# The payload window


def test_a_payload_late_after_its_header_stalls() -> None:
    session = asterisk_side()
    assert session.receive(HEADER_ONLY, at(1.0)) == []
    assert session.deadline == pytest.approx(at(1.0 + PAYLOAD_WINDOW))
    assert session.tick(at(1.0 + PAYLOAD_WINDOW - 0.002)) == []
    events = session.tick(at(1.0 + PAYLOAD_WINDOW))
    ended = ending(events)
    assert ended.ended == "stall"
    assert 1.0 - 1e-9 <= ended.t <= 1.0 + PAYLOAD_WINDOW + 1e-9
    assert "sent a header and then stalled" in ended.detail
    assert "3 bytes of a message arrived" in ended.detail
    assert f"{PAYLOAD_WINDOW * 1000:g} ms" in ended.detail
    assert session.violations == [ended.detail]
    # The payload that comes after is not taken.
    assert session.receive(FRAME[3:], at(1.02)) == []


def test_a_payload_in_time_is_taken() -> None:
    session = asterisk_side()
    session.receive(FRAME[:100], at(1.0))
    events = session.receive(FRAME[100:], at(1.003))
    assert events == [Received(t(1.003), Message(0x10, PCM))]
    assert session.deadline is None
    assert session.tick(at(1.02)) == []


def test_the_window_opens_when_the_header_is_whole() -> None:
    # Asterisk waits for a header that arrives in pieces.
    session = asterisk_side()
    session.receive(FRAME[:1], at(1.0))
    assert session.deadline is None
    session.receive(FRAME[1:2], at(1.5))
    assert session.deadline is None
    assert session.tick(at(1.6)) == []
    session.receive(FRAME[2:10], at(2.0))
    assert session.deadline == pytest.approx(at(2.0 + PAYLOAD_WINDOW))
    assert ending(session.tick(at(2.0 + PAYLOAD_WINDOW))).ended == "stall"


def test_the_window_opens_for_a_header_behind_a_whole_message() -> None:
    session = asterisk_side()
    session.receive(FRAME + HEADER_ONLY, at(1.0))
    assert session.deadline == pytest.approx(at(1.0 + PAYLOAD_WINDOW))


@pytest.mark.parametrize(("mode", "violation"), [(Mode.LENIENT, False), (Mode.OBSERVE, True)])
def test_a_stalled_payload_is_a_warning_when_not_strict(mode: Mode, violation: bool) -> None:
    session = asterisk_side(mode)
    session.receive(HEADER_ONLY, at(1.0))
    (problem,) = session.tick(at(1.0 + PAYLOAD_WINDOW))
    assert isinstance(problem, Problem)
    assert problem.code == "stall"
    assert problem.violation is violation
    assert problem.what == "payload stalled after its header"
    assert session.ended is None
    assert session.deadline is None  # reported once
    assert session.tick(at(2.0)) == []
    assert session.receive(FRAME[3:], at(2.0)) == [Received(t(2.0), Message(0x10, PCM))]


def test_no_payload_window_rule() -> None:
    session = asterisk_side(payload_window=None)
    session.receive(HEADER_ONLY, at(1.0))
    assert session.deadline is None
    assert session.tick(at(5.0)) == []


# Inactivity


def test_inactivity_ends_a_strict_call() -> None:
    session = asterisk_side(inactivity=INACTIVITY)
    assert session.deadline == pytest.approx(at(INACTIVITY))
    assert session.tick(at(INACTIVITY - 0.01)) == []
    ended = ending(session.tick(at(INACTIVITY)))
    assert ended.ended == "inactivity"
    assert ended.t == pytest.approx(INACTIVITY)
    assert f"nothing either way for {INACTIVITY:g} s" in ended.detail
    assert session.violations == []


def test_activity_either_way_moves_inactivity() -> None:
    session = asterisk_side(inactivity=2.0)
    session.sent(Message.audio(PCM), at(1.0))
    assert session.deadline == pytest.approx(at(3.0))
    session.receive(FRAME, at(2.5))
    assert session.deadline == pytest.approx(at(4.5))
    session.sent_raw(FRAME, at(3.0))
    assert session.deadline == pytest.approx(at(5.0))
    assert session.tick(at(4.9)) == []
    assert ending(session.tick(at(5.0))).ended == "inactivity"


@pytest.mark.parametrize("mode", [Mode.LENIENT, Mode.OBSERVE])
def test_inactivity_is_only_enforced_when_strict(mode: Mode) -> None:
    session = asterisk_side(mode, inactivity=2.0)
    assert session.deadline is None
    assert session.tick(at(100.0)) == []
    assert session.ended is None


def test_the_payload_window_comes_before_inactivity() -> None:
    session = asterisk_side(inactivity=2.0)
    session.receive(HEADER_ONLY, at(1.0))
    assert session.deadline == pytest.approx(at(1.0 + PAYLOAD_WINDOW))


# What we sent ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message", "what", "malformed", "described"), REFUSED, ids=REFUSED_IDS
)
def test_sending_what_asterisk_refuses_is_a_warning_for_the_application(
    name: str, message: Message, what: str, malformed: bool, described: str
) -> None:
    session = answered()
    (problem,) = session.sent(message, at(2.0), " by --inject x@2")
    assert problem.code == f"we-sent-refused:{int(message.kind)}"
    assert problem.t == 2.0
    assert not problem.violation  # ours, not the peer's
    assert problem.text.startswith("we sent ")
    assert f"{described} by --inject x@2" in problem.text
    assert "Asterisk would end the session" in problem.text
    assert session.violations == []
    assert session.ended is None


@pytest.mark.parametrize(
    "message", [Message.hangup(), Message.audio(PCM), Message.audio(b"x" * 161, 16000)]
)
def test_sending_what_asterisk_takes_is_no_problem(message: Message) -> None:
    assert answered().sent(message, at(2.0)) == []


@pytest.mark.parametrize(
    ("name", "message", "what", "malformed", "described"), REFUSED, ids=REFUSED_IDS
)
def test_asterisk_may_send_anything_without_a_warning(
    name: str, message: Message, what: str, malformed: bool, described: str
) -> None:
    assert asterisk_side().sent(message, at(2.0)) == []


def test_sent_raw_gives_the_messages_and_a_partial_tail() -> None:
    session = answered()
    messages, problems = session.sent_raw(wire(0x03, b"1") + FRAME + b"\x10\x01", at(2.0), " (raw)")
    assert messages == [Message(0x03, b"1"), Message(0x10, PCM)]
    assert [p.code for p in problems] == ["we-sent-refused:3", "raw-partial"]
    partial = problems[1]
    assert partial.t == 2.0
    assert not partial.violation
    assert "we sent 2 raw bytes that are not a whole message (raw)" in partial.text
    assert "about 5 ms" in partial.text  # Asterisk's payload window
    # What we write is not what the peer sent.
    assert session.messages_received == 1
    assert session.decoder.buffered == 0


def test_sent_raw_as_asterisk_warns_only_of_the_partial_tail() -> None:
    session = asterisk_side()
    messages, problems = session.sent_raw(wire(0x03, b"1") + b"\x10", at(2.0))
    assert messages == [Message(0x03, b"1")]
    (partial,) = problems
    assert partial.code == "raw-partial"
    assert partial.text == "we sent 1 raw bytes that are not a whole message"


def test_sent_raw_of_whole_messages_is_quiet() -> None:
    assert asterisk_side().sent_raw(FRAME + FRAME, at(1.0)) == ([Message(0x10, PCM)] * 2, [])


def test_close_keeps_the_first_ending() -> None:
    session = answered(Rules(idle_timeout=5.0))
    first = session.close("interrupted", "Ctrl-C", at(3.0))
    assert first == Ended(3.0, "interrupted", "Ctrl-C")
    assert session.close("terminated", "SIGTERM", at(4.0)) is first
    assert session.ended is first
    assert session.deadline is None
    assert session.tick(at(100.0)) == []
    assert session.receive(FRAME, at(5.0)) == []
    assert session.reset(at(6.0)) == []


def test_close_after_the_peer_ended_keeps_the_peers_ending() -> None:
    session = answered()
    session.receive(b"", at(2.0))
    assert session.close("interrupted", "Ctrl-C", at(3.0)) == Ended(
        2.0, "caller-close", "the caller closed the connection"
    )


def test_event_times_are_seconds_since_the_start() -> None:
    session = Session(Role.APPLICATION, Rules(idle_timeout=1.0), started=5000.0)
    assert session.receive(UUID_MSG, 5000.25) == [Received(0.25, Message(0x01, CALL_UUID.bytes))]
    (problem,) = of_type(session.receive(wire(0x02, b""), 5000.5), Problem)
    assert problem.t == 0.5
    assert ending(session.tick(5001.5)).t == 1.5


# The fast path: whole_audio() ---------------------------------------------------------


class NoFastPath(Session):
    """A session whose receive() always decodes: what the fast path must agree with."""

    def whole_audio(self, data: bytes, now: float) -> Message | None:
        return None


def twins(role: Role, history: list[bytes], mode: Mode = Mode.STRICT) -> tuple[Session, Session]:
    """A session and its reference twin with no fast path, with the same past fed to
    receive(); with timers on, so that a timer moved or not shows in `deadline`."""
    if role is Role.APPLICATION:
        rules = Rules(mode=mode, idle_timeout=30.0)
    else:
        rules = Rules(mode=mode, inactivity=INACTIVITY)
    fast, slow = Session(role, rules, started=STARTED), NoFastPath(role, rules, started=STARTED)
    for session in (fast, slow):
        for i, chunk in enumerate(history):
            session.receive(chunk, at(0.01 * (i + 1)))
    assert state(fast) == state(slow)
    return fast, slow


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("kind", sorted(AUDIO_RATES))
def test_whole_audio_takes_one_whole_audio_message(role: Role, kind: int) -> None:
    data = wire(kind, PCM)
    fast, slow = twins(role, [UUID_MSG] if role is Role.APPLICATION else [FRAME])
    now = at(0.7)
    message = fast.whole_audio(data, now)
    assert message == Message(kind, PCM)
    assert slow.receive(data, now) == [Received(now - STARTED, Message(kind, PCM))]
    assert state(fast) == state(slow)  # counted, and timers moved, as receive() does


def test_whole_audio_takes_the_smallest_audio_message() -> None:
    (fast, _) = twins(Role.ASTERISK, [FRAME])
    assert fast.whole_audio(wire(0x10, b"\x00\x00"), at(0.1)) == Message(0x10, b"\x00\x00")


def test_whole_audio_declines_the_first_read() -> None:
    """The first read is judged for garbage: a TLS alert (0x15, also an audio kind) is
    not taken for audio, even when its length would fit."""
    (fast, _) = twins(Role.ASTERISK, [])
    first = wire(0x10, PCM)
    assert fast.whole_audio(first, at(0.1)) is None
    alert = bytes.fromhex("1503010002022f").ljust(3 + 0x0301, b"\x00")  # a whole "message"
    (fast, _) = twins(Role.ASTERISK, [])
    assert fast.whole_audio(alert, at(0.1)) is None
    events = fast.receive(alert, at(0.1))
    assert ending(events).ended == "garbage" and "TLS" in ending(events).detail


# (id, role, mode, history fed to receive(), the read offered to whole_audio())
DECLINED: list[tuple[str, Role, Mode, list[bytes], bytes]] = [
    ("app-first-message", Role.APPLICATION, Mode.STRICT, [], FRAME),
    ("odd-payload", Role.APPLICATION, Mode.STRICT, [UUID_MSG], wire(0x10, b"abc")),
    ("odd-payload-asterisk", Role.ASTERISK, Mode.STRICT, [], wire(0x10, b"x" * 161)),
    ("empty-audio", Role.ASTERISK, Mode.STRICT, [], wire(0x10, b"")),
    ("uuid", Role.APPLICATION, Mode.STRICT, [UUID_MSG], wire(0x01, OTHER_UUID.bytes)),
    ("error-2-bytes", Role.ASTERISK, Mode.STRICT, [], wire(0xFF, b"\x00\x02")),
    ("unassigned-2-bytes", Role.ASTERISK, Mode.LENIENT, [FRAME], wire(0x02, b"hi")),
    ("hangup", Role.APPLICATION, Mode.STRICT, [UUID_MSG], HANGUP),
    ("two-messages", Role.APPLICATION, Mode.STRICT, [UUID_MSG], FRAME + FRAME),
    # An odd-length read starting as audio: its header does not claim the whole read.
    (
        "two-messages-odd-read",
        Role.ASTERISK,
        Mode.STRICT,
        [],
        wire(0x10, b"ab") + wire(0x10, b"abc"),
    ),
    ("partial", Role.APPLICATION, Mode.STRICT, [UUID_MSG], FRAME[:-1]),
    ("partial-odd", Role.ASTERISK, Mode.STRICT, [], FRAME[:-2]),
    ("header-only", Role.ASTERISK, Mode.STRICT, [], HEADER_ONLY),
    ("rest-of-partial", Role.APPLICATION, Mode.STRICT, [UUID_MSG, FRAME[:100]], FRAME[100:]),
    # Looks whole on its own, but the decoder holds "\x10\x00": 10 00 10 | 00 02 61 62 ...
    ("after-held-bytes", Role.APPLICATION, Mode.STRICT, [UUID_MSG, b"\x10\x00"], wire(0x10, b"ab")),
    ("after-held-header", Role.ASTERISK, Mode.STRICT, [HEADER_ONLY], wire(0x10, b"ab")),
    ("ended-hangup", Role.APPLICATION, Mode.STRICT, [UUID_MSG, HANGUP], FRAME),
    ("ended-close", Role.ASTERISK, Mode.STRICT, [b""], FRAME),
    ("ended-refused", Role.ASTERISK, Mode.STRICT, [wire(0x03, b"1")], FRAME),
    # An observer decodes on after the end: receive() still gives the message.
    ("ended-observer", Role.APPLICATION, Mode.OBSERVE, [UUID_MSG, HANGUP], FRAME),
]


@pytest.mark.parametrize(
    ("name", "role", "mode", "history", "data"), DECLINED, ids=[n for n, *_ in DECLINED]
)
def test_whole_audio_declines_and_changes_nothing(
    name: str, role: Role, mode: Mode, history: list[bytes], data: bytes
) -> None:
    fast, slow = twins(role, history, mode)
    before = state(fast)
    assert fast.whole_audio(data, at(0.7)) is None
    assert state(fast) == before
    # And receive() then does with the read exactly what it would have done.
    assert fast.receive(data, at(0.7)) == slow.receive(data, at(0.7))
    assert state(fast) == state(slow)
    assert fast.tick(at(40.0)) == slow.tick(at(40.0))
    assert fast.receive(b"", at(41.0)) == slow.receive(b"", at(41.0))


def test_whole_audio_declines_after_close() -> None:
    fast, slow = twins(Role.ASTERISK, [FRAME])
    for session in (fast, slow):
        session.close("interrupted", "Ctrl-C", at(0.5))
    assert fast.whole_audio(FRAME, at(0.7)) is None
    assert state(fast) == state(slow)
    assert fast.messages_received == 1


def test_the_first_message_declined_is_still_judged() -> None:
    session = app_side()
    assert session.whole_audio(FRAME, at(0.1)) is None
    assert codes(session.receive(FRAME, at(0.1))) == ["first-not-uuid"]


even_pcm = st.integers(1, 8).flatmap(lambda n: st.binary(min_size=2 * n, max_size=2 * n))
# The usual read: one whole audio message, at any rate.
audio_read = st.builds(wire, st.sampled_from(sorted(AUDIO_RATES)), even_pcm | st.just(PCM))
chunk_strategy = st.one_of(
    audio_read,
    st.builds(wire, st.sampled_from(sorted(AUDIO_RATES)), st.binary(max_size=9)),
    st.sampled_from([UUID_MSG, HANGUP, HEADER_ONLY, FRAME[:1], FRAME[:200], FRAME[200:]]),
    st.builds(wire, st.sampled_from([0x00, 0x01, 0x03, 0x02, 0xFF]), st.binary(max_size=4)),
    st.binary(min_size=1, max_size=12),
)
read_strategy = st.one_of(
    audio_read,
    chunk_strategy,
    st.lists(chunk_strategy, min_size=2, max_size=3).map(b"".join),
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(list(Role)),
    st.sampled_from(list(Mode)),
    st.booleans(),
    st.lists(chunk_strategy, max_size=5),
    read_strategy,
)
def test_the_fast_paths_agree_with_receive(
    role: Role, mode: Mode, uuid_first: bool, history: list[bytes], data: bytes
) -> None:
    """whole_audio() (one message) and whole_audios() (one or more) take a read as
    receive() would, or decline it and change nothing."""
    if uuid_first:
        history = [UUID_MSG, *history]
    one, one_ref = twins(role, history, mode)
    several, several_ref = twins(role, history, mode)
    before = state(one)
    now = at(0.9)
    message = one.whole_audio(data, now)
    messages = several.whole_audios(data, now)
    expected = one_ref.receive(data, now)
    assert several_ref.receive(data, now) == expected
    if message is not None:
        # Only ever one whole audio message of even length, taken as receive() takes it.
        assert message == Message(data[0], data[3:])
        assert message.is_audio
        assert len(message.payload) % 2 == 0
        assert expected == [Received(now - STARTED, message)]
        assert messages == [message]  # what one takes, the other takes alike
    if messages is not None:
        assert messages and all(m.is_audio and len(m.payload) % 2 == 0 for m in messages)
        assert expected == [Received(now - STARTED, m) for m in messages]
    for taken, fast, slow in ((message, one, one_ref), (messages, several, several_ref)):
        if taken is None:
            assert state(fast) == before
            assert fast.receive(data, now) == expected
        assert state(fast) == state(slow)
        assert fast.tick(at(45.0)) == slow.tick(at(45.0))


# Several whole audio messages in one read: whole_audios() --------------------------------


@pytest.mark.parametrize("role", list(Role))
def test_whole_audios_takes_frames_read_together(role: Role) -> None:
    data = wire(0x10, PCM) + wire(0x10, b"\x01\x00" * 4) + wire(0x12, PCM)
    fast, slow = twins(role, [UUID_MSG] if role is Role.APPLICATION else [FRAME])
    now = at(0.7)
    messages = fast.whole_audios(data, now)
    assert messages == [Message(0x10, PCM), Message(0x10, b"\x01\x00" * 4), Message(0x12, PCM)]
    t = now - STARTED
    assert slow.receive(data, now) == [Received(t, m) for m in messages]
    assert state(fast) == state(slow)


@pytest.mark.parametrize(
    ("name", "role", "mode", "history", "data"), DECLINED, ids=[n for n, *_ in DECLINED]
)
def test_whole_audios_declines_what_whole_audio_declines_but_several_frames(
    name: str, role: Role, mode: Mode, history: list[bytes], data: bytes
) -> None:
    fast, slow = twins(role, history, mode)
    before = state(fast)
    if name == "two-messages":  # what whole_audios() is for
        messages = fast.whole_audios(data, at(0.7))
        assert messages == [Message(0x10, FRAME[3:])] * 2
        assert slow.receive(data, at(0.7)) == [Received(at(0.7) - STARTED, m) for m in messages]
        assert state(fast) == state(slow)
        return
    assert fast.whole_audios(data, at(0.7)) is None
    assert state(fast) == before
    assert fast.receive(data, at(0.7)) == slow.receive(data, at(0.7))


@pytest.mark.parametrize(
    "data",
    [
        FRAME + FRAME[:-1],  # the last one cut short
        FRAME + HEADER_ONLY,
        FRAME + HANGUP,  # a hangup after the audio is for receive() to judge
        FRAME + wire(0x10, b"abc"),  # odd payload
        FRAME + wire(0x10, b""),
        FRAME + b"\x10\x00",
    ],
    ids=["cut", "header", "hangup", "odd", "empty", "two-bytes"],
)
def test_whole_audios_declines_a_read_with_anything_else(data: bytes) -> None:
    fast, slow = twins(Role.ASTERISK, [FRAME])
    before = state(fast)
    assert fast.whole_audios(data, at(0.7)) is None
    assert state(fast) == before
    assert fast.receive(data, at(0.7)) == slow.receive(data, at(0.7))
    assert state(fast) == state(slow)
