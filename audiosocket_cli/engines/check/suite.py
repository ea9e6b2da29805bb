"""The cases of `check`, in order, and how to pick them."""

from __future__ import annotations

from collections.abc import Iterable

from audiosocket_cli.engines.check.cases_call import (
    case_dtmf,
    case_many_calls,
    case_second_uuid,
    case_short_last,
    case_silence,
    case_ulaw,
    closing_case,
    rate_case,
)
from audiosocket_cli.engines.check.cases_framing import (
    case_bytewise,
    case_coalesced,
    case_max_payload,
    case_odd_length,
    case_split_header,
    case_uuid_one_write,
)
from audiosocket_cli.engines.check.cases_hostile import (
    case_flood,
    case_garbage,
    case_header_silence,
    case_promise_reset,
    case_unassigned,
)
from audiosocket_cli.engines.check.cases_sent import (
    RATE_CALLS,
    case_encoding,
    case_first_audio,
    case_frame_size,
    case_kinds,
    case_pacing,
    case_payload_window,
    case_rate_follows,
)
from audiosocket_cli.engines.check.probe import Case
from audiosocket_cli.engines.check.results import SECTIONS

CASES: list[Case] = [
    Case(
        "1.1",
        "the UUID in one write",
        "the baseline: Asterisk's first message, one 19-byte write",
        case_uuid_one_write,
        0.8,
    ),
    Case(
        "1.2",
        "header and payload in separate segments",
        "a reader must buffer a header until its payload comes (less than 5 ms later)",
        case_split_header,
        1.0,
    ),
    Case("1.3", "every message byte by byte", "one recv is not one message", case_bytewise, 0.9),
    Case(
        "1.4", "50 messages in one segment", "one recv can hold many messages", case_coalesced, 0.9
    ),
    Case(
        "1.5",
        "an odd-length audio payload",
        "Asterisk sends and accepts any length (161 bytes observed)",
        case_odd_length,
        0.9,
    ),
    Case(
        "1.6",
        "a maximal (65535-byte) audio payload",
        "the length field's largest value",
        case_max_payload,
        0.9,
    ),
    Case(
        "2.1",
        "an 8 kHz call (kind 0x10)",
        "the dialplan application's call, 4 s (long enough to judge pacing over 3 s)",
        rate_case(8000, 4.0),
        4.6,
    ),
    Case(
        "2.2",
        "a 16 kHz call (kind 0x12)",
        "the channel driver with c(slin16); answered at 16 kHz",
        rate_case(16000),
        2.6,
    ),
    Case(
        "2.3",
        "a 48 kHz call (kind 0x16)",
        "the channel driver with c(slin48); answered at 48 kHz",
        rate_case(48000),
        2.6,
    ),
    Case(
        "2.4",
        "DTMF in the middle of audio",
        "Asterisk sends a digit as its own 0x03 message between frames",
        case_dtmf,
        1.6,
    ),
    Case(
        "2.5",
        "2 s of silence",
        "Asterisk sends no messages while its side is silent",
        case_silence,
        3.3,
    ),
    Case(
        "2.6",
        "a short last frame",
        "a played file's last frame is sent short (224 bytes observed)",
        case_short_last,
        1.2,
    ),
    Case(
        "2.7",
        "Asterisk closes without 0x00",
        "Asterisk ends a call with close(); the application must close its side within 1 s",
        closing_case(False),
        1.8,
    ),
    Case(
        "2.8",
        "Asterisk sends 0x00 then closes",
        "a hangup message, then the close",
        closing_case(True),
        1.8,
    ),
    Case(
        "2.9",
        "mu-law labelled as slin",
        "the channel driver without c(slin) sends 160-byte mu-law frames as 0x10",
        case_ulaw,
        1.5,
    ),
    Case("2.10", "a second UUID", "a UUID message in the middle of a call", case_second_uuid, 1.3),
    Case(
        "2.11",
        "20 calls in a row, then 20 at once",
        "every call answered; every socket closed by the application",
        case_many_calls,
        7.0,
    ),
    Case(
        "3.1",
        "pacing",
        "no bursts; real time within 2% over every 3 s of audio (warn), within 5% over the call",
        case_pacing,
        0,
        RATE_CALLS,
    ),
    Case("3.2", "frame size", "20 ms frames, as Asterisk sends", case_frame_size, 0, RATE_CALLS),
    Case(
        "3.3",
        "the rate follows the caller",
        "answers at the rate of the caller's audio (Asterisk transcodes: a warn)",
        case_rate_follows,
        0,
        RATE_CALLS,
    ),
    Case(
        "3.4",
        "only messages Asterisk accepts",
        "no UUID, DTMF, error, unassigned kind or empty audio",
        case_kinds,
        0,
        RATE_CALLS,
    ),
    Case(
        "3.5",
        "no payload more than 5 ms after its header",
        "Asterisk's payload window",
        case_payload_window,
        0,
        RATE_CALLS,
    ),
    Case(
        "3.6",
        "16-bit little-endian PCM",
        "not mu-law, not big-endian",
        case_encoding,
        0,
        RATE_CALLS,
    ),
    Case(
        "3.7",
        "time to first audio and speech",
        "from the caller's first audio to the application's first audio and first speech",
        case_first_audio,
        0,
        RATE_CALLS,
    ),
    Case("4.1", "an unassigned kind", "a peer may send anything", case_unassigned, 1.2),
    Case(
        "4.2",
        "garbage bytes",
        "a peer may send anything: random bytes, none of them an assigned kind",
        case_garbage,
        1.2,
    ),
    Case(
        "4.3",
        "a header promising 64 KiB, then a reset",
        "a stream cut inside a message",
        case_promise_reset,
        1.0,
    ),
    Case(
        "4.4",
        "a header, then silence",
        "a stalled connection must not hold up the others",
        case_header_silence,
        1.0,
    ),
    Case(
        "4.5",
        "200 connections opened and dropped at once",
        "a port scan, a load balancer's health checks",
        case_flood,
        2.0,
    ),
]
BY_ID = {case.id: case for case in CASES}


def select_cases(ids: Iterable[str]) -> list[Case]:
    """The cases named (in suite order); ValueError naming an unknown id. A section
    number alone (`2`) names the whole section."""
    wanted: set[str] = set()
    for text in ids:
        text = text.strip()
        if text in BY_ID:
            wanted.add(text)
        elif text.isdigit() and int(text) in SECTIONS:
            wanted.update(c.id for c in CASES if c.section == int(text))
        else:
            raise ValueError(f"no case {text!r} (see --list)")
    return [case for case in CASES if case.id in wanted]


def case_list() -> list[str]:
    return [f"{case.id} {case.name}: {case.why}" for case in CASES]
