"""--inject SPEC: WHAT@SECONDS parsed into the bytes to send, or refused by name."""

from __future__ import annotations

import pytest

from audiosocket_cli.protocol.inject import Injection, parse_inject
from audiosocket_cli.protocol.wire import Message


@pytest.mark.parametrize(
    ("spec", "at", "messages", "writes", "ends_call"),
    [
        ("hangup@5", 5.0, (Message(0, b""),), [b"\x00\x00\x00"], True),
        ("hangup@0", 0.0, (Message(0, b""),), [b"\x00\x00\x00"], True),
        ("error@1.5", 1.5, (Message(0xFF, b""),), [b"\xff\x00\x00"], False),
        ("error:2@1", 1.0, (Message(0xFF, b"\x02"),), [b"\xff\x00\x01\x02"], False),
        ("error:0x04@1", 1.0, (Message(0xFF, b"\x04"),), [b"\xff\x00\x01\x04"], False),
        ("error:0@1", 1.0, (Message(0xFF, b"\x00"),), [b"\xff\x00\x01\x00"], False),
        ("error:255@1", 1.0, (Message(0xFF, b"\xff"),), [b"\xff\x00\x01\xff"], False),
        ("error:0xff@1", 1.0, (Message(0xFF, b"\xff"),), [b"\xff\x00\x01\xff"], False),
        ("dtmf:5@2", 2.0, (Message(3, b"5"),), [b"\x03\x00\x015"], False),
        (
            "dtmf:12#*AD@0.25",
            0.25,
            tuple(Message(3, d.encode()) for d in "12#*AD"),
            [b"\x03\x00\x01" + d.encode() for d in "12#*AD"],
            False,
        ),
        (
            "dtmf:0123456789*#ABCD@3",
            3.0,
            tuple(Message.dtmf(d) for d in "0123456789*#ABCD"),
            None,
            False,
        ),
        ("hangup@1e1", 10.0, (Message(0, b""),), [b"\x00\x00\x00"], True),
    ],
)
def test_message_injections(
    spec: str,
    at: float,
    messages: tuple[Message, ...],
    writes: list[bytes] | None,
    ends_call: bool,
) -> None:
    injection = parse_inject(spec)
    assert injection.at == at
    assert injection.what == spec.rpartition("@")[0]
    assert injection.messages == messages
    assert injection.raw == b""
    assert injection.close is False
    assert injection.ends_call is ends_call
    # One write per message, each a whole encoded message.
    assert injection.wire_writes() == (writes or [m.encode() for m in messages])


def test_raw() -> None:
    injection = parse_inject("raw:ff0001@2")
    assert injection == Injection(2.0, "raw:ff0001", raw=b"\xff\x00\x01")
    assert injection.messages == ()
    assert injection.wire_writes() == [b"\xff\x00\x01"]
    assert injection.ends_call is False
    # Spaces between bytes are allowed, case does not matter.
    assert parse_inject("raw:10 00 02 AB cd@0.5").raw == b"\x10\x00\x02\xab\xcd"
    # raw bytes are sent as they are, even a hangup: it does not count as ending the call.
    assert parse_inject("raw:000000@1").ends_call is False


def test_close() -> None:
    injection = parse_inject("close@3")
    assert injection == Injection(3.0, "close", close=True)
    assert injection.wire_writes() == []
    assert injection.ends_call is True


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        ("hangup", "WHAT@SECONDS"),
        ("@5", "WHAT@SECONDS"),
        ("", "WHAT@SECONDS"),
        ("hangup@", "'' is not a number"),
        ("hangup@soon", "'soon' is not a number"),
        ("hangup@-1", "'-1' is not a time"),
        ("hangup@nan", "'nan' is not a time"),
        ("hangup@inf", "'inf' is not a time"),
        ("hangup:now@1", "unknown WHAT 'hangup:now'"),
        ("close:x@1", "unknown WHAT 'close:x'"),
        ("bye@1", "unknown WHAT 'bye'"),
        ("HANGUP@1", "unknown WHAT 'HANGUP'"),
        ("error:256@1", "error code '256'"),
        ("error:-1@1", "error code '-1'"),
        ("error:0x100@1", "error code '0x100'"),
        ("error:two@1", "error code 'two'"),
        ("error:@1", "error code ''"),
        ("dtmf@1", "dtmf needs digits"),
        ("dtmf:@1", "dtmf needs digits"),
        ("dtmf:12x@1", "'x'"),
        ("dtmf:e@1", "'e'"),
        ("dtmf:1@2@3", "'@'"),
        ("raw:zz@1", "'zz' is not hex"),
        ("raw:abc@1", "'abc' is not hex"),
        ("raw:@1", "raw needs bytes"),
    ],
)
def test_bad_specs_name_the_bad_part(spec: str, names: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_inject(spec)
    message = str(info.value)
    assert names in message
    assert repr(spec) in message  # the whole SPEC, so the user sees which --inject
    assert "\n" not in message
