"""The AudioSocket wire format, sans I/O: bytes in, messages out, and back.

Every message is a 3-byte header (kind, big-endian 16-bit length) and a
payload. Nothing here touches a socket or a clock; the transport feeds bytes
to a :class:`Decoder` and writes what :func:`encode` returns in one send.

Content problems (a UUID of the wrong length, empty audio, an unassigned
kind) never stop decoding, because the framing is self-delimiting: such a
message is decoded, and :attr:`Message.problem` names what is wrong with it.
The only framing error is a stream that ends inside a message.
"""

from __future__ import annotations

import enum
import struct
import uuid as uuid_lib
from typing import NamedTuple

HEADER = struct.Struct(">BH")
HEADER_SIZE = HEADER.size
MAX_PAYLOAD = 0xFFFF
DTMF_DIGITS = frozenset(b"0123456789*#ABCD")


class Kind(enum.IntEnum):
    """Message kinds as Asterisk numbers them (res_audiosocket.h)."""

    HANGUP = 0x00
    UUID = 0x01
    DTMF = 0x03
    AUDIO_8K = 0x10
    AUDIO_12K = 0x11
    AUDIO_16K = 0x12
    AUDIO_24K = 0x13
    AUDIO_32K = 0x14
    AUDIO_44K = 0x15
    AUDIO_48K = 0x16
    AUDIO_96K = 0x17
    AUDIO_192K = 0x18
    ERROR = 0xFF


AUDIO_RATES: dict[int, int] = {
    Kind.AUDIO_8K: 8000,
    Kind.AUDIO_12K: 12000,
    Kind.AUDIO_16K: 16000,
    Kind.AUDIO_24K: 24000,
    Kind.AUDIO_32K: 32000,
    Kind.AUDIO_44K: 44100,
    Kind.AUDIO_48K: 48000,
    Kind.AUDIO_96K: 96000,
    Kind.AUDIO_192K: 192000,
}
RATE_KINDS: dict[int, Kind] = {rate: Kind(kind) for kind, rate in AUDIO_RATES.items()}
KIND_NAMES: dict[int, str] = {
    Kind.HANGUP: "hangup",
    Kind.UUID: "uuid",
    Kind.DTMF: "dtmf",
    Kind.ERROR: "error",
    **{kind: "audio" for kind in AUDIO_RATES},
}
MESSAGE_NAMES = ("hangup", "uuid", "dtmf", "audio", "error", "unknown")


class ErrorCode(enum.IntFlag):
    """Bit flags of Asterisk's one-byte error payload."""

    HANGUP = 0x01
    FRAME_FORWARDING = 0x02
    MEMORY = 0x04


ERROR_CODE_NAMES = {
    ErrorCode.HANGUP: "hangup-of-calling-party",
    ErrorCode.FRAME_FORWARDING: "frame-forwarding-error",
    ErrorCode.MEMORY: "memory-error",
}


def describe_error_code(code: int) -> str:
    """`frame-forwarding-error`, `hangup-of-calling-party+memory-error`, ..."""
    names = [name for flag, name in ERROR_CODE_NAMES.items() if code & flag]
    if code & ~0x07 or not names:
        names.append("application-specific")
    return "+".join(names)


class ProtocolError(Exception):
    """Something that is not AudioSocket."""


class LocalProtocolError(ProtocolError):
    """We tried to send something that cannot be encoded."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something that cannot be decoded."""


class TruncatedMessage(RemoteProtocolError):
    """The stream ended inside a message."""

    def __init__(self, kind: int | None, have: int, missing: int) -> None:
        self.kind = kind
        self.have = have
        self.missing = missing
        what = "header" if kind is None else f"message of kind 0x{kind:02x}"
        super().__init__(f"stream ended inside a {what}: {have} bytes received, {missing} missing")


class Message(NamedTuple):
    """One AudioSocket message: its kind byte and its payload.

    A tuple, so that decoding millions a second stays cheap; everything else
    is derived from these two fields.
    """

    kind: int
    payload: bytes

    @property
    def name(self) -> str:
        """One of hangup, uuid, dtmf, audio, error, unknown."""
        return KIND_NAMES.get(self.kind, "unknown")

    @property
    def is_audio(self) -> bool:
        return self.kind in AUDIO_RATES

    @property
    def rate(self) -> int | None:
        return AUDIO_RATES.get(self.kind)

    @property
    def samples(self) -> int:
        return len(self.payload) // 2 if self.kind in AUDIO_RATES else 0

    @property
    def duration(self) -> float:
        """Seconds of audio this message carries (0 for other kinds)."""
        rate = AUDIO_RATES.get(self.kind)
        return len(self.payload) / 2 / rate if rate else 0.0

    @property
    def uuid(self) -> uuid_lib.UUID | None:
        if self.kind == Kind.UUID and len(self.payload) == 16:
            return uuid_lib.UUID(bytes=self.payload)
        return None

    @property
    def digit(self) -> str | None:
        if self.kind == Kind.DTMF and len(self.payload) == 1:
            return chr(self.payload[0]) if self.payload[0] < 0x80 else None
        return None

    @property
    def code(self) -> int | None:
        if self.kind == Kind.ERROR and self.payload:
            return self.payload[0]
        return None

    @property
    def problem(self) -> str | None:
        """What is wrong with this message's content, or None."""
        kind, size = self.kind, len(self.payload)
        if kind in AUDIO_RATES:
            if size == 0:
                return "empty audio message"
            if size % 2:
                return f"odd audio length {size} (16-bit samples)"
            return None
        if kind == Kind.UUID:
            return None if size == 16 else f"uuid payload is {size} bytes, not 16"
        if kind == Kind.DTMF:
            if size != 1:
                return f"dtmf payload is {size} bytes, not 1"
            if self.payload[0] not in DTMF_DIGITS:
                return f"dtmf byte 0x{self.payload[0]:02x} is not a digit"
            return None
        if kind == Kind.HANGUP:
            return f"hangup with a {size}-byte payload" if size else None
        if kind == Kind.ERROR:
            return None
        return f"unassigned kind 0x{kind:02x}"

    @property
    def refused_by_asterisk(self) -> bool:
        """Would Asterisk end the session if the application sent this?

        It accepts only hangup and non-empty audio (docs/protocol.md, "What
        Asterisk accepts").
        """
        if self.kind in AUDIO_RATES:
            return not self.payload
        return self.kind != Kind.HANGUP

    def encode(self) -> bytes:
        return encode(self)

    # Constructors that refuse what cannot be sent.

    @classmethod
    def hangup(cls) -> Message:
        return cls(Kind.HANGUP, b"")

    @classmethod
    def for_uuid(cls, value: uuid_lib.UUID | str | bytes) -> Message:
        if isinstance(value, uuid_lib.UUID):
            raw = value.bytes
        elif isinstance(value, str):
            try:
                raw = uuid_lib.UUID(value).bytes
            except ValueError:
                raise LocalProtocolError(f"not a UUID: {value!r}") from None
        else:
            raw = bytes(value)
        if len(raw) != 16:
            raise LocalProtocolError(f"a UUID is 16 bytes, not {len(raw)}")
        return cls(Kind.UUID, raw)

    @classmethod
    def dtmf(cls, digit: str) -> Message:
        raw = digit.encode("ascii", "replace")
        if len(raw) != 1 or raw[0] not in DTMF_DIGITS:
            raise LocalProtocolError(f"not a DTMF digit: {digit!r} (0-9 * # A-D)")
        return cls(Kind.DTMF, raw)

    @classmethod
    def audio(cls, pcm: bytes, rate: int = 8000) -> Message:
        try:
            kind = RATE_KINDS[rate]
        except KeyError:
            raise LocalProtocolError(f"no AudioSocket kind for {rate} Hz") from None
        return cls(kind, bytes(pcm))

    @classmethod
    def error(cls, code: int | None = None) -> Message:
        if code is None:
            return cls(Kind.ERROR, b"")
        if not 0 <= code <= 255:
            raise LocalProtocolError(f"error code {code} is not one byte")
        return cls(Kind.ERROR, bytes([code]))


def encode(message: Message) -> bytes:
    """Header and payload as one bytes object, for one write."""
    kind, payload = message
    if not 0 <= kind <= 0xFF:
        raise LocalProtocolError(f"kind {kind} is not one byte")
    if len(payload) > MAX_PAYLOAD:
        raise LocalProtocolError(
            f"payload of {len(payload)} bytes is over the limit of {MAX_PAYLOAD}"
        )
    return HEADER.pack(kind, len(payload)) + payload


# new_message(Message, (kind, payload)) is Message(kind, payload) without the
# NamedTuple's Python-level __new__: half the cost, for the per-message paths.
new_message = tuple.__new__
_HEADER_FROM = HEADER.unpack_from


class Decoder:
    """Turns bytes, in any split, into whole messages.

    Nothing is consumed until a whole message is there, and no more than one
    incomplete message is kept beyond what was fed. A read that holds whole
    messages is decoded from its own bytes without a copy; only a message
    that arrives in pieces is gathered (in place) until it is whole.
    """

    __slots__ = ("_buffer", "_pos")

    def __init__(self) -> None:
        self._buffer: bytes | bytearray = b""
        self._pos = 0

    def feed(self, data: bytes) -> None:
        buf, pos = self._buffer, self._pos
        if pos >= len(buf):
            self._buffer = data if type(data) is bytes else bytes(data)
        elif pos == 0 and type(buf) is bytearray:
            buf += data  # a message still arriving in pieces: grown in place
        else:
            held = bytearray(buf[pos:])
            held += data
            self._buffer = held
        self._pos = 0

    def _whole(self) -> bytes | None:
        """The buffer as bytes if it holds a whole message, else None (and no copy)."""
        buf, pos = self._buffer, self._pos
        end = len(buf)
        if end - pos < HEADER_SIZE or pos + HEADER_SIZE + (buf[pos + 1] << 8 | buf[pos + 2]) > end:
            return None
        if type(buf) is bytearray:
            buf = self._buffer = bytes(buf)
        return buf  # type: ignore[return-value]

    def next_message(self) -> Message | None:
        """The next whole message, or None while one is incomplete."""
        buf = self._whole()
        if buf is None:
            return None
        pos = self._pos
        kind, length = _HEADER_FROM(buf, pos)
        stop = pos + HEADER_SIZE + length
        self._pos = stop
        return new_message(Message, (kind, buf[pos + HEADER_SIZE : stop]))

    def messages(self) -> list[Message]:
        """Every whole message buffered so far (the fast path)."""
        buf = self._whole()
        if buf is None:
            return []
        pos, last = self._pos, len(buf) - 3
        out: list[Message] = []
        append, unpack, new = out.append, _HEADER_FROM, new_message
        while pos <= last:
            kind, length = unpack(buf, pos)
            stop = pos + 3 + length
            if stop > last + 3:
                break
            append(new(Message, (kind, buf[pos + 3 : stop])))
            pos = stop
        self._pos = pos
        return out

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete message held back."""
        return len(self._buffer) - self._pos

    @property
    def header_complete(self) -> bool:
        """A header has arrived whose payload has not (yet) all arrived."""
        buf, pos, end = self._buffer, self._pos, len(self._buffer)
        if end - pos < HEADER_SIZE:
            return False
        return pos + HEADER_SIZE + ((buf[pos + 1] << 8) | buf[pos + 2]) > end

    def end_of_stream(self) -> None:
        """The peer closed: raise if that cut a message short.

        Whole messages not yet taken stay buffered for messages(); only an
        incomplete one after them is an error.
        """
        buf, pos, end = self._buffer, self._pos, len(self._buffer)
        while end - pos >= HEADER_SIZE:
            stop = pos + HEADER_SIZE + ((buf[pos + 1] << 8) | buf[pos + 2])
            if stop > end:
                raise TruncatedMessage(buf[pos], end - pos, stop - end)
            pos = stop
        if pos < end:
            raise TruncatedMessage(None, end - pos, HEADER_SIZE - (end - pos))


def decode_all(data: bytes) -> list[Message]:
    """Every message in a complete stream; raises if the stream is cut short."""
    decoder = Decoder()
    decoder.feed(data)
    out = decoder.messages()
    decoder.end_of_stream()
    return out


def frame_bytes(rate: int, frame_ms: float = 20) -> int:
    """Bytes of 16-bit mono audio in one frame: 320 for 20 ms at 8 kHz."""
    return int(rate * frame_ms / 1000) * 2
