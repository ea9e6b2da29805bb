"""The sans-I/O codec: every kind both ways, every split, every content problem.

In the style of h11's tests/test_io.py, every sample input is fed whole, one
byte at a time, and followed by the start of another message; hypothesis
then covers arbitrary splits and arbitrary bytes.
"""

from __future__ import annotations

import struct
import uuid as uuid_lib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audiosocket_cli.protocol.wire import (
    AUDIO_RATES,
    MAX_PAYLOAD,
    MESSAGE_NAMES,
    RATE_KINDS,
    Decoder,
    ErrorCode,
    Kind,
    LocalProtocolError,
    Message,
    ProtocolError,
    RemoteProtocolError,
    TruncatedMessage,
    decode_all,
    describe_error_code,
    encode,
    frame_bytes,
)

CALL_UUID = uuid_lib.UUID("40325ec2-5bd7-4a4e-9a2c-6a4f6d3b1c01")
RATES = {
    0x10: 8000,
    0x11: 12000,
    0x12: 16000,
    0x13: 24000,
    0x14: 32000,
    0x15: 44100,
    0x16: 48000,
    0x17: 96000,
    0x18: 192000,
}
DIGITS = "0123456789*#ABCD"
PCM = bytes(range(256)) * 2 + b"\x01\x80" * 32  # 576 bytes, even


def wire(kind: int, payload: bytes) -> bytes:
    """The wire bytes, built independently of the encoder under test."""
    return bytes([kind]) + len(payload).to_bytes(2, "big") + payload


# (name, wire bytes, the message they decode to); hand-built, not from encode().
SAMPLES: list[tuple[str, bytes, Message]] = [
    ("hangup", b"\x00\x00\x00", Message(0x00, b"")),
    ("uuid", b"\x01\x00\x10" + CALL_UUID.bytes, Message(0x01, CALL_UUID.bytes)),
    *[(f"dtmf-{d}", b"\x03\x00\x01" + d.encode(), Message(0x03, d.encode())) for d in DIGITS],
    *[(f"audio-{r}", wire(k, PCM), Message(k, PCM)) for k, r in RATES.items()],
    ("audio-max", wire(0x10, b"\x01" * 65535), Message(0x10, b"\x01" * 65535)),
    ("error-empty", b"\xff\x00\x00", Message(0xFF, b"")),
    ("error-code", b"\xff\x00\x01\x02", Message(0xFF, b"\x02")),
    ("error-long", b"\xff\x00\x03abc", Message(0xFF, b"abc")),
    ("unknown-02", b"\x02\x00\x02hi", Message(0x02, b"hi")),
    ("unknown-19", b"\x19\x00\x00", Message(0x19, b"")),
    ("unknown-fe", b"\xfe\x00\x01\x00", Message(0xFE, b"\x00")),
    # Content problems decode like anything else.
    ("uuid-short", b"\x01\x00\x04abcd", Message(0x01, b"abcd")),
    ("audio-odd", b"\x10\x00\x03abc", Message(0x10, b"abc")),
    ("audio-empty", b"\x12\x00\x00", Message(0x12, b"")),
    ("dtmf-letter", b"\x03\x00\x01x", Message(0x03, b"x")),
]
SAMPLE_IDS = [name for name, _, _ in SAMPLES]
WHOLE_STREAM = b"".join(data for _, data, _ in SAMPLES)
WHOLE_MESSAGES = [message for _, _, message in SAMPLES]
# Beginnings of a message: one byte, a header short by one, a header, a partial payload.
PARTIAL_TAILS = [
    (b"\x10", None, 2),
    (b"\x10\x01", None, 1),
    (b"\x10\x01\x40", 0x10, 320),
    (b"\x10\x01\x40" + b"\x00" * 100, 0x10, 220),
    (b"\x03\x00\x01", 0x03, 1),
    (b"\xff\xff\xff" + b"\x00" * 65534, 0xFF, 1),
]


# Encoding ----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "data", "message"), SAMPLES, ids=SAMPLE_IDS)
def test_encode_gives_the_wire_bytes(name: str, data: bytes, message: Message) -> None:
    assert encode(message) == data
    assert message.encode() == data


@pytest.mark.parametrize(("name", "data", "message"), SAMPLES, ids=SAMPLE_IDS)
def test_round_trip(name: str, data: bytes, message: Message) -> None:
    assert decode_all(message.encode()) == [message]


def test_constructors_build_the_wire_bytes() -> None:
    assert Message.hangup().encode() == b"\x00\x00\x00"
    assert Message.for_uuid(CALL_UUID).encode() == b"\x01\x00\x10" + CALL_UUID.bytes
    assert Message.for_uuid(str(CALL_UUID)) == Message.for_uuid(CALL_UUID)
    assert Message.for_uuid(CALL_UUID.bytes) == Message.for_uuid(CALL_UUID)
    assert Message.error().encode() == b"\xff\x00\x00"
    assert Message.error(0x02).encode() == b"\xff\x00\x01\x02"
    assert Message.error(0).encode() == b"\xff\x00\x01\x00"
    assert Message.error(255).encode() == b"\xff\x00\x01\xff"


@pytest.mark.parametrize("digit", list(DIGITS))
def test_dtmf_every_digit(digit: str) -> None:
    message = Message.dtmf(digit)
    assert message.encode() == b"\x03\x00\x01" + digit.encode("ascii")
    (decoded,) = decode_all(message.encode())
    assert decoded.name == "dtmf"
    assert decoded.digit == digit
    assert decoded.problem is None


@pytest.mark.parametrize(("kind", "rate"), sorted(RATES.items()))
def test_audio_every_rate(kind: int, rate: int) -> None:
    assert AUDIO_RATES[kind] == rate
    assert RATE_KINDS[rate] == kind
    message = Message.audio(PCM, rate)
    assert message.kind == kind
    assert message.encode() == bytes([kind]) + struct.pack(">H", len(PCM)) + PCM
    (decoded,) = decode_all(message.encode())
    assert decoded == (kind, PCM)
    assert decoded.name == "audio"
    assert decoded.is_audio
    assert decoded.rate == rate
    assert decoded.samples == len(PCM) // 2
    assert decoded.duration == pytest.approx(len(PCM) / 2 / rate)
    assert decoded.problem is None
    assert decoded.refused_by_asterisk is False


def test_kind_numbers_are_asterisks() -> None:
    assert (Kind.HANGUP, Kind.UUID, Kind.DTMF, Kind.ERROR) == (0x00, 0x01, 0x03, 0xFF)
    assert [int(k) for k in Kind if k.name.startswith("AUDIO")] == list(range(0x10, 0x19))
    assert Kind.AUDIO_16K == 0x12 and Kind.AUDIO_48K == 0x16
    assert (ErrorCode.HANGUP, ErrorCode.FRAME_FORWARDING, ErrorCode.MEMORY) == (1, 2, 4)
    assert MESSAGE_NAMES == ("hangup", "uuid", "dtmf", "audio", "error", "unknown")


def test_derived_fields() -> None:
    (uuid_msg,) = decode_all(Message.for_uuid(CALL_UUID).encode())
    assert uuid_msg.name == "uuid" and uuid_msg.uuid == CALL_UUID
    assert uuid_msg.rate is None and uuid_msg.duration == 0.0 and uuid_msg.samples == 0
    (err,) = decode_all(b"\xff\x00\x01\x04")
    assert err.name == "error" and err.code == 4
    (bare_err,) = decode_all(b"\xff\x00\x00")
    assert bare_err.code is None and bare_err.problem is None
    (hangup,) = decode_all(b"\x00\x00\x00")
    assert hangup.name == "hangup" and hangup.digit is None and hangup.uuid is None
    (unknown,) = decode_all(b"\x02\x00\x01\x31")
    assert unknown.name == "unknown" and unknown.digit is None and unknown.payload == b"1"
    frame = Message.audio(b"\x00" * 320)
    assert frame.duration == 0.02 and frame.rate == 8000


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (0x01, "hangup-of-calling-party"),
        (0x02, "frame-forwarding-error"),
        (0x04, "memory-error"),
        (0x03, "hangup-of-calling-party+frame-forwarding-error"),
        (0x07, "hangup-of-calling-party+frame-forwarding-error+memory-error"),
        (0x00, "application-specific"),
        (0x08, "application-specific"),
        (0x82, "frame-forwarding-error+application-specific"),
    ],
)
def test_describe_error_code(code: int, text: str) -> None:
    assert describe_error_code(code) == text


@pytest.mark.parametrize(
    ("rate", "ms", "size"),
    [(8000, 20, 320), (16000, 20, 640), (44100, 20, 1764), (48000, 20, 1920), (192000, 20, 7680)]
    + [(8000, 10, 160), (44100, 10, 882), (12000, 30, 720)],
)
def test_frame_bytes(rate: int, ms: float, size: int) -> None:
    assert frame_bytes(rate, ms) == size


def test_encoder_limits() -> None:
    assert len(Message.audio(b"\x00" * MAX_PAYLOAD).encode()) == 3 + 65535
    with pytest.raises(LocalProtocolError, match="65536 bytes"):
        encode(Message(0x10, b"\x00" * (MAX_PAYLOAD + 1)))
    with pytest.raises(LocalProtocolError, match="65536 bytes"):
        Message.audio(b"\x00" * 65536, 8000).encode()
    with pytest.raises(LocalProtocolError):
        encode(Message(256, b""))
    with pytest.raises(LocalProtocolError):
        encode(Message(-1, b""))


@pytest.mark.parametrize("value", [b"", b"\x00" * 15, b"\x00" * 17, "not-a-uuid", "1234"])
def test_uuid_refused_unless_16_bytes(value: bytes | str) -> None:
    with pytest.raises(LocalProtocolError):
        Message.for_uuid(value)


@pytest.mark.parametrize("digit", ["", "12", "a", "d", "E", "x", " ", "é", "\x00", "١"])
def test_bad_dtmf_digit_refused(digit: str) -> None:
    with pytest.raises(LocalProtocolError, match="DTMF"):
        Message.dtmf(digit)


@pytest.mark.parametrize("rate", [0, 11025, 22050, 8001, -8000])
def test_audio_at_a_rate_with_no_kind_refused(rate: int) -> None:
    with pytest.raises(LocalProtocolError, match=str(rate)):
        Message.audio(b"\x00\x00", rate)


@pytest.mark.parametrize("code", [-1, 256, 1000])
def test_error_code_must_be_one_byte(code: int) -> None:
    with pytest.raises(LocalProtocolError):
        Message.error(code)


def test_errors_are_typed_by_blame() -> None:
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert issubclass(TruncatedMessage, RemoteProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)


# Decoding: whole, byte by byte, with trailing bytes ----------------------------------


def feed_whole(data: bytes, one_at_a_time: bool) -> tuple[list[Message], Decoder]:
    decoder = Decoder()
    decoder.feed(data)
    if one_at_a_time:
        out = []
        while (message := decoder.next_message()) is not None:
            out.append(message)
        return out, decoder
    return decoder.messages(), decoder


def feed_bytewise(data: bytes, one_at_a_time: bool) -> tuple[list[Message], Decoder]:
    decoder = Decoder()
    out: list[Message] = []
    for i in range(len(data)):
        decoder.feed(data[i : i + 1])
        if one_at_a_time:
            while (message := decoder.next_message()) is not None:
                out.append(message)
        else:
            out.extend(decoder.messages())
        # Nothing is taken early: what is held is exactly the incomplete message.
        assert decoder.buffered == (i + 1) - sum(3 + len(m.payload) for m in out)
    return out, decoder


PATHS = pytest.mark.parametrize("one_at_a_time", [False, True], ids=["messages", "next_message"])
SAMPLE_PARAMS = pytest.mark.parametrize(("name", "data", "message"), SAMPLES, ids=SAMPLE_IDS)


@PATHS
@SAMPLE_PARAMS
def test_decode_whole(name: str, data: bytes, message: Message, one_at_a_time: bool) -> None:
    out, decoder = feed_whole(data, one_at_a_time)
    assert out == [message]
    assert decoder.buffered == 0
    assert decoder.header_complete is False
    decoder.end_of_stream()  # nothing cut short


@PATHS
@SAMPLE_PARAMS
def test_decode_byte_by_byte(name: str, data: bytes, message: Message, one_at_a_time: bool) -> None:
    out, decoder = feed_bytewise(data, one_at_a_time)
    assert out == [message]
    assert decoder.buffered == 0
    decoder.end_of_stream()


@PATHS
@SAMPLE_PARAMS
@pytest.mark.parametrize(("tail", "tail_kind", "missing"), PARTIAL_TAILS)
def test_decode_with_trailing_partial_message(
    name: str,
    data: bytes,
    message: Message,
    one_at_a_time: bool,
    tail: bytes,
    tail_kind: int | None,
    missing: int,
) -> None:
    out, decoder = feed_whole(data + tail, one_at_a_time)
    assert out == [message]
    # The partial message is held, whole: nothing of it was consumed.
    assert decoder.buffered == len(tail)
    assert decoder.header_complete is (len(tail) >= 3)
    assert decoder.next_message() is None
    assert decoder.messages() == []
    with pytest.raises(TruncatedMessage) as info:
        decoder.end_of_stream()
    assert (info.value.kind, info.value.have, info.value.missing) == (tail_kind, len(tail), missing)
    assert f"{missing} missing" in str(info.value)


@PATHS
def test_decode_all_samples_in_one_stream(one_at_a_time: bool) -> None:
    assert feed_whole(WHOLE_STREAM, one_at_a_time)[0] == WHOLE_MESSAGES
    assert decode_all(WHOLE_STREAM) == WHOLE_MESSAGES


@PATHS
def test_decode_all_samples_byte_by_byte(one_at_a_time: bool) -> None:
    # Without the 65 KB message, which would make this slow for no gain.
    stream = b"".join(d for n, d, _ in SAMPLES if n != "audio-max")
    expected = [m for n, _, m in SAMPLES if n != "audio-max"]
    out, decoder = feed_bytewise(stream, one_at_a_time)
    assert out == expected


def test_rest_of_message_completes_after_partial() -> None:
    decoder = Decoder()
    decoder.feed(b"\x10\x01\x40" + b"\x01" * 100)
    assert decoder.messages() == []
    assert decoder.header_complete
    decoder.feed(b"\x01" * 220 + b"\x00\x00")
    assert decoder.messages() == [Message(0x10, b"\x01" * 320)]
    assert decoder.buffered == 2 and not decoder.header_complete
    decoder.feed(b"\x00")
    assert decoder.next_message() == Message(0, b"")
    decoder.end_of_stream()


def test_end_of_stream_leaves_whole_messages_for_reading() -> None:
    decoder = Decoder()
    decoder.feed(b"\x00\x00\x00\x03\x00\x015")
    decoder.end_of_stream()  # two whole messages, nothing cut short
    assert decoder.messages() == [Message(0, b""), Message(3, b"5")]
    decoder.feed(b"\x03\x00\x015\x10\x00\x04ab")
    with pytest.raises(TruncatedMessage) as info:
        decoder.end_of_stream()
    assert (info.value.kind, info.value.have, info.value.missing) == (0x10, 5, 2)


def test_decode_all_raises_on_a_cut_stream() -> None:
    with pytest.raises(TruncatedMessage) as info:
        decode_all(Message.audio(PCM).encode()[:-10])
    assert info.value.kind == 0x10 and info.value.missing == 10
    assert "kind 0x10" in str(info.value)


# Content problems do not stop decoding ------------------------------------------------

PROBLEMS = [
    # (wire bytes, name, problem text contains, refused by Asterisk)
    (b"\x00\x00\x00", "hangup", None, False),
    (wire(0x01, CALL_UUID.bytes), "uuid", None, True),
    (b"\x01\x00\x04abcd", "uuid", "uuid payload is 4 bytes, not 16", True),
    (b"\x01\x00\x00", "uuid", "uuid payload is 0 bytes, not 16", True),
    (b"\x03\x00\x015", "dtmf", None, True),
    (b"\x03\x00\x01x", "dtmf", "dtmf byte 0x78 is not a digit", True),
    (b"\x03\x00\x01\xe9", "dtmf", "dtmf byte 0xe9 is not a digit", True),
    (b"\x03\x00\x0212", "dtmf", "dtmf payload is 2 bytes, not 1", True),
    (b"\x03\x00\x00", "dtmf", "dtmf payload is 0 bytes, not 1", True),
    (wire(0x10, b"\x00" * 320), "audio", None, False),
    (wire(0x10, b"\x00" * 161), "audio", "odd audio length 161", False),
    (wire(0x10, b"\x00" * 65535), "audio", "odd audio length 65535", False),
    (b"\x10\x00\x00", "audio", "empty audio message", True),
    (b"\x18\x00\x00", "audio", "empty audio message", True),
    (b"\xff\x00\x00", "error", None, True),
    (b"\xff\x00\x01\x02", "error", None, True),
    (b"\x02\x00\x01\x31", "unknown", "unassigned kind 0x02", True),
    (b"\x04\x00\x00", "unknown", "unassigned kind 0x04", True),
    (b"\x0f\x00\x00", "unknown", "unassigned kind 0x0f", True),
    (b"\x19\x00\x00", "unknown", "unassigned kind 0x19", True),
    (b"\xfe\x00\x00", "unknown", "unassigned kind 0xfe", True),
]


@pytest.mark.parametrize(("data", "name", "problem", "refused"), PROBLEMS)
def test_content_problems_are_named_and_judged(
    data: bytes, name: str, problem: str | None, refused: bool
) -> None:
    # Followed by a hangup: a content problem must not derail the framing.
    messages = decode_all(data + b"\x00\x00\x00")
    assert len(messages) == 2
    message, after = messages
    assert (message.kind, message.payload) == (data[0], data[3:])
    assert message.name == name
    if problem is None:
        assert message.problem is None
    else:
        assert message.problem is not None and problem in message.problem
    assert message.refused_by_asterisk is refused
    assert after == Message(0, b"")


def test_content_problem_fields_are_none() -> None:
    (short_uuid,) = decode_all(b"\x01\x00\x04abcd")
    assert short_uuid.uuid is None
    (long_dtmf,) = decode_all(b"\x03\x00\x0212")
    assert long_dtmf.digit is None


def test_every_kind_byte_decodes() -> None:
    stream = b"".join(wire(kind, b"\x02\x00") for kind in range(256))
    messages = decode_all(stream)
    assert [m.kind for m in messages] == list(range(256))
    names = {m.kind: m.name for m in messages}
    assert {k for k, n in names.items() if n == "audio"} == set(range(0x10, 0x19))
    assert {k for k, n in names.items() if n == "unknown"} == set(range(256)) - {
        0x00,
        0x01,
        0x03,
        0xFF,
        *range(0x10, 0x19),
    }
    refused = {m.kind for m in messages if m.refused_by_asterisk}
    assert refused == set(range(256)) - {0x00, *range(0x10, 0x19)}


# Properties ---------------------------------------------------------------------------

message_strategy = st.one_of(
    st.just(Message.hangup()),
    st.uuids().map(Message.for_uuid),
    st.sampled_from(DIGITS).map(Message.dtmf),
    st.builds(
        lambda pcm, rate: Message.audio(pcm, rate),
        st.binary(min_size=0, max_size=400),
        st.sampled_from(sorted(RATE_KINDS)),
    ),
    st.builds(Message.error, st.none() | st.integers(0, 255)),
    st.builds(Message, st.integers(0, 255), st.binary(max_size=64)),
)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]


@settings(max_examples=200, deadline=None)
@given(st.lists(message_strategy, max_size=12), st.lists(st.integers(0, 10_000), max_size=20))
def test_any_split_gives_the_same_messages(messages: list[Message], cuts: list[int]) -> None:
    stream = b"".join(m.encode() for m in messages)
    expected = [(m.kind, m.payload) for m in messages]
    decoder = Decoder()
    got: list[Message] = []
    for part in split_at(stream, cuts):
        decoder.feed(part)
        got.extend(decoder.messages())
    decoder.end_of_stream()
    assert got == expected
    # next_message(), on the same split.
    decoder = Decoder()
    got = []
    for part in split_at(stream, cuts):
        decoder.feed(part)
        while (message := decoder.next_message()) is not None:
            got.append(message)
    assert got == expected
    assert decoder.buffered == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=30), st.booleans())
def test_arbitrary_bytes_only_raise_typed_errors(chunks: list[bytes], one_at_a_time: bool) -> None:
    decoder = Decoder()
    total = 0
    consumed = 0
    for chunk in chunks:
        decoder.feed(chunk)
        total += len(chunk)
        if one_at_a_time:
            got = []
            while (message := decoder.next_message()) is not None:
                got.append(message)
        else:
            got = decoder.messages()
        for message in got:
            consumed += 3 + len(message.payload)
            # Every derived field works on any content.
            assert message.name in MESSAGE_NAMES
            assert message.problem is None or isinstance(message.problem, str)
            assert isinstance(message.refused_by_asterisk, bool)
        # Bounded: at most one incomplete message is held.
        assert decoder.buffered == total - consumed
        assert decoder.buffered <= 3 + MAX_PAYLOAD - 1
    try:
        decoder.end_of_stream()
    except TruncatedMessage as exc:
        assert exc.have == decoder.buffered and exc.missing > 0
    else:
        assert decoder.buffered == 0


def _feed_and_check(decoder: Decoder, chunk: bytes, drain_all_at_once: bool) -> int:
    decoder.feed(chunk)
    # The buffer itself (private: what memory holds), not just what is unconsumed.
    held = len(decoder._buffer)
    assert held <= 3 + MAX_PAYLOAD + len(chunk)
    if drain_all_at_once:
        count = len(decoder.messages())
    else:
        count = 0
        while decoder.next_message() is not None:
            count += 1
    assert decoder.buffered < 3 + MAX_PAYLOAD
    return count


@pytest.mark.parametrize("drain_all_at_once", [True, False])
def test_memory_bounded_in_a_long_stream(drain_all_at_once: bool) -> None:
    # 40 maximal messages (2.6 MB) in 64 KiB chunks: memory stays at one message + one chunk.
    stream = (b"\x10\xff\xff" + b"\x01" * MAX_PAYLOAD) * 40
    decoder = Decoder()
    count = 0
    for start in range(0, len(stream), 65536):
        count += _feed_and_check(decoder, stream[start : start + 65536], drain_all_at_once)
    assert count == 40
    decoder.end_of_stream()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 140_000), min_size=2, max_size=12),
    st.lists(st.integers(0, MAX_PAYLOAD), min_size=1, max_size=8),
    st.booleans(),
)
def test_memory_bounded_by_one_message_plus_chunk(
    sizes: list[int], lengths: list[int], drain_all_at_once: bool
) -> None:
    # Messages up to the largest, fed in chunks up to two of them long.
    stream = b"".join(b"\x10" + n.to_bytes(2, "big") + b"\x00" * n for n in lengths)
    decoder = Decoder()
    count = 0
    pos = 0
    for size in sizes:
        chunk = stream[pos : pos + size]
        pos += size
        count += _feed_and_check(decoder, chunk, drain_all_at_once)
    if pos >= len(stream):
        assert count == len(lengths)
