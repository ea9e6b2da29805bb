"""--inject SPEC: something to send (or do) at a moment of a call.

SPEC is WHAT@SECONDS, WHAT one of hangup, error, error:CODE, dtmf:DIGITS,
raw:HEX, close.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

from audiosocket_cli.protocol.wire import LocalProtocolError, Message


@dataclass(frozen=True)
class Injection:
    at: float
    what: str
    messages: tuple[Message, ...] = ()
    raw: bytes = b""
    close: bool = False

    @property
    def ends_call(self) -> bool:
        """After this, the call is over from our side."""
        return self.close or any(m.kind == 0 for m in self.messages)

    def wire_writes(self) -> list[bytes]:
        """The bytes to write, one element per send."""
        writes = [m.encode() for m in self.messages]
        if self.raw:
            writes.append(self.raw)
        return writes


def parse_inject(spec: str) -> Injection:
    """Parse a SPEC; raise ValueError naming the bad part."""
    what, sep, when = spec.rpartition("@")
    if not sep or not what:
        raise ValueError(f"{spec!r}: expected WHAT@SECONDS, for example hangup@5")
    try:
        at = float(when)
    except ValueError:
        raise ValueError(f"{spec!r}: {when!r} is not a number of seconds") from None
    if not at >= 0 or at == float("inf"):
        raise ValueError(f"{spec!r}: {when!r} is not a time from 0 on")
    name, colon, arg = what.partition(":")
    if name == "hangup" and not arg:
        return Injection(at, what, messages=(Message.hangup(),))
    if name == "close" and not arg:
        return Injection(at, what, close=True)
    if name == "error":
        if not colon:
            return Injection(at, what, messages=(Message.error(),))
        try:
            code = int(arg, 0)
            return Injection(at, what, messages=(Message.error(code),))
        except (ValueError, LocalProtocolError):
            raise ValueError(
                f"{spec!r}: error code {arg!r} is not 0..255 (decimal or 0x-hex)"
            ) from None
    if name == "dtmf":
        if not arg:
            raise ValueError(f"{spec!r}: dtmf needs digits, for example dtmf:12#@3")
        try:
            return Injection(at, what, messages=tuple(Message.dtmf(d) for d in arg))
        except LocalProtocolError as exc:
            raise ValueError(f"{spec!r}: {exc}") from None
    if name == "raw":
        try:
            data = binascii.unhexlify(arg.replace(" ", ""))
        except (binascii.Error, ValueError):
            raise ValueError(f"{spec!r}: {arg!r} is not hex bytes") from None
        if not data:
            raise ValueError(f"{spec!r}: raw needs bytes, for example raw:ff0001@2")
        return Injection(at, what, raw=data)
    raise ValueError(
        f"{spec!r}: unknown WHAT {what!r} (hangup, error, error:CODE, dtmf:DIGITS, raw:HEX, close)"
    )
