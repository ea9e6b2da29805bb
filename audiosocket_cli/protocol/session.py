"""The rules of an AudioSocket call, sans I/O: one session object per role.

A :class:`Session` is fed what the peer sent (bytes and the time they came)
and what we sent, and is asked to :meth:`~Session.tick` when its
:attr:`~Session.deadline` passes. It returns what happened: whole messages
(:class:`Received`), things worth a warning (:class:`Problem`, which says
whether it breaks the protocol) and the end of the call (:class:`Ended`).
Engines act on those and never re-state a rule; every rule of
docs/protocol.md that the tool enforces lives here:

- the UUID comes first, in one message, from Asterisk's side;
- what each side refuses: Asterisk ends the session on anything from the
  application but hangup and non-empty audio ("What Asterisk accepts");
- malformed messages (Message.problem);
- Asterisk's payload window: a payload that has not followed its header
  within about 5 ms ends the session;
- the dialplan application's inactivity timeout (2 s with nothing either way);
- the application side's own limits: a message left incomplete for seconds,
  and --timeout;
- how a call ended, as one token of events.ENDINGS.

Times are monotonic seconds, as the engine's clock gives them; event times
are seconds since the call's connection (`started`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from audiosocket_cli.protocol.events import VIOLATION_ENDINGS
from audiosocket_cli.protocol.wire import (
    AUDIO_RATES,
    KIND_NAMES,
    Decoder,
    Kind,
    Message,
    TruncatedMessage,
    new_message,
)

PAYLOAD_WINDOW = 0.005  # s Asterisk waits for a payload after its header
INACTIVITY = 2.0  # s with nothing either way before the dialplan application hangs up
MESSAGE_STALL = 5.0  # s a message may stay incomplete before the application side gives up
TIME_SLACK = 0.0005  # a timer that fires this early has still fired


class Role(enum.Enum):
    """Which side of the call we play."""

    ASTERISK = "asterisk"  # we are Asterisk (the TCP client); the peer is the application
    APPLICATION = "application"  # we are the application; the peer is Asterisk


class Mode(enum.Enum):
    """What happens when the application sends what Asterisk refuses."""

    STRICT = "strict"  # the call ends as Asterisk would end it
    LENIENT = "lenient"  # reported, and the call goes on
    OBSERVE = "observe"  # judged as strictly, but never ends a call (a proxy cannot)


@dataclass(frozen=True)
class Rules:
    """The limits a session enforces; the defaults are Asterisk's."""

    mode: Mode = Mode.STRICT
    payload_window: float | None = PAYLOAD_WINDOW  # Asterisk's side
    inactivity: float | None = None  # Asterisk's side: INACTIVITY as the dialplan app does
    message_stall: float | None = MESSAGE_STALL  # the application's side
    idle_timeout: float | None = None  # the application's side: --timeout


@dataclass(frozen=True, slots=True)
class Received:
    """A whole message from the peer."""

    t: float
    message: Message


@dataclass(frozen=True)
class Problem:
    """Something worth a warning; `violation` when it breaks the protocol (exit 3)."""

    t: float
    code: str
    text: str
    violation: bool
    what: str = ""  # for what Asterisk refuses: the thing refused, to count by


@dataclass(frozen=True)
class Ended:
    """The call is over: one token of events.ENDINGS and a line of detail."""

    t: float
    ended: str
    detail: str


SessionEvent = Received | Problem | Ended


def describe_message(message: Message) -> str:
    """`an error message (kind 0xff, 1 byte, code 0x02)`: a message named for a user."""
    kind, size = message.kind, len(message.payload)
    name = message.name
    if name == "unknown":
        what = f"a message of unassigned kind 0x{kind:02x}"
    elif name == "audio" and not size:
        what = "an empty audio message"
    else:
        what = f"{'an' if name in ('audio', 'error') else 'a'} {name} message"
    detail = f"kind 0x{kind:02x}, {size} byte{'' if size == 1 else 's'}"
    if message.code is not None:
        detail += f", code 0x{message.code:02x}"
    elif name == "uuid" and message.uuid:
        detail += f", {message.uuid}"
    elif name == "dtmf" and message.digit:
        detail += f", digit {message.digit}"
    return f"{what} ({detail})"


def looks_like_tls(head: bytes) -> bool:
    """A TLS record header: a handshake (a client's or server's hello) or the alert a
    TLS server answers plain bytes with. Its first byte, 0x16 or 0x15, is also an
    audio kind (48 and 44.1 kHz), so the rest of the header must fit too."""
    if len(head) < 3 or head[1] != 0x03 or head[2] > 0x04:
        return False
    if head[0] == 0x16:  # handshake: then a hello (type 1 or 2) once it is there
        return len(head) < 6 or head[5] in (0x01, 0x02)
    return head[0] == 0x15 and head[3:5] == b"\x00\x02"  # an alert is 2 bytes long


def describe_garbage(data: bytes, strict: bool = True) -> str | None:
    """Why these first bytes are not AudioSocket, naming what they look like; None
    when they are not plainly another protocol and `strict` is off."""
    head = bytes(data[:48])
    if head.startswith((b"HTTP/", b"GET ", b"POST ", b"PUT ", b"HEAD ")):
        line = head.split(b"\r\n", 1)[0].decode("ascii", "replace")
        return f"not AudioSocket: the peer speaks HTTP ({line!r})"
    if head.startswith(b"SSH-"):
        return "not AudioSocket: the peer is an SSH server"
    if looks_like_tls(head):
        return "not AudioSocket: the peer speaks TLS"
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head)
    if len(head) >= 4 and printable == len(head):
        return f"not AudioSocket: the peer sent text ({head.decode('ascii')!r})"
    if not strict:
        return None
    return (
        f"not AudioSocket: first byte 0x{head[0]:02x} is not a message kind "
        f"(data {head[:16].hex()})"
    )


class Session:
    """One call from one side: feed it what happens, act on what it returns."""

    __slots__ = (
        "role",
        "rules",
        "started",
        "decoder",
        "ended",
        "violations",
        "uuid",
        "messages_received",
        "_peer",
        "_peer_words",
        "_first_byte",
        "_first_message",
        "_plain",
        "_partial_since",
        "_header_at",
        "_stall_reported",
        "_last_rx",
        "_last_activity",
        "_reported",
    )

    def __init__(self, role: Role, rules: Rules | None = None, *, started: float) -> None:
        self.role = role
        self.rules = rules or Rules()
        self.started = started
        self.decoder = Decoder()
        self.ended: Ended | None = None
        self.violations: list[str] = []  # each distinct one once, in order
        self.uuid: str | None = None  # the call's, from Asterisk's first message
        self.messages_received = 0
        self._peer = "app" if role is Role.ASTERISK else "caller"
        self._peer_words = "application" if role is Role.ASTERISK else "caller"
        self._first_byte = True
        self._first_message = role is Role.APPLICATION  # Asterisk's first must be the UUID
        # No first byte or message left to judge, no end, nothing held: the state in
        # which whole_audio() may take a read (kept by receive() and close()).
        self._plain = False
        self._partial_since: float | None = None  # an incomplete message began
        self._header_at: float | None = None  # ... and its header was whole
        self._stall_reported = False
        self._last_rx = started
        self._last_activity = started
        self._reported: set[str] = set()

    # What the peer did.

    def receive(self, data: bytes, now: float) -> list[SessionEvent]:
        """Bytes from the peer; b"" is the end of its stream."""
        ended = self.ended
        if ended is not None and (self.rules.mode is not Mode.OBSERVE or ended.ended == "garbage"):
            # An observer decodes on (a proxy forwards what comes after), but not
            # another protocol's bytes: they have no messages to find.
            return []
        if not data:
            return self._end_of_stream(now)
        message = self.whole_audio(data, now)
        if message is not None:
            return [Received(now - self.started, message)]
        self._last_rx = self._last_activity = now
        t = now - self.started
        if self._first_byte:
            self._first_byte = False
            if data[0] not in KIND_NAMES or looks_like_tls(data[:6]):
                # Asterisk's first byte is always a UUID message's; an application's
                # unassigned kind is only garbage when it is plainly another protocol.
                why = describe_garbage(data, strict=self.role is Role.APPLICATION)
                if why is not None:
                    return [self._end(now, "garbage", why)]
        decoder = self.decoder
        decoder.feed(data)
        messages = decoder.messages()
        out: list[SessionEvent] = []
        for message in messages:
            out.append(Received(t, message))
            self.messages_received += 1
            self._judge(t, now, message, out)
            if self.ended is not None and self.rules.mode is not Mode.OBSERVE:
                return out  # an observer takes what follows, as from a later read
        if decoder.buffered:
            self._plain = False
            if messages or self._partial_since is None:
                self._partial_since, self._header_at = now, None
                self._stall_reported = False
            if self._header_at is None and decoder.header_complete:
                self._header_at = now
        else:
            self._partial_since = self._header_at = None
            self._plain = not self._first_message and self.ended is None
        return out

    def whole_audio(self, data: bytes, now: float) -> Message | None:
        """The usual read, 50 times a second per call, taken on its own fast path:
        if `data` is one whole audio message of even length, with nothing held
        before it and no rule of either side to apply, that message (received, as
        receive() would give it). Otherwise None, with nothing changed: give the
        bytes to receive()."""
        n = len(data)
        if (
            n & 1
            and n > 3
            and data[0] in AUDIO_RATES
            and (data[1] << 8 | data[2]) == n - 3
            and self._plain
        ):
            self._last_rx = self._last_activity = now
            self.messages_received += 1
            return new_message(Message, (data[0], bytes(data[3:])))
        return None

    def whole_audios(self, data: bytes, now: float) -> list[Message] | None:
        """whole_audio() for a read of several whole audio messages (a peer that writes
        two frames at once, or a reader that fell behind): each of even length, the
        last ending where `data` ends. Otherwise None, with nothing changed."""
        if not self._plain:
            return None
        out: list[Message] = []
        i, n = 0, len(data)
        while i < n:
            if n - i <= 3:
                return None
            kind = data[i]
            size = data[i + 1] << 8 | data[i + 2]
            end = i + 3 + size
            if kind not in AUDIO_RATES or not size or size & 1 or end > n:
                return None
            out.append(new_message(Message, (kind, data[i + 3 : end])))
            i = end
        self._last_rx = self._last_activity = now
        self.messages_received += len(out)
        return out

    def reset(self, now: float, reason: str = "connection reset by peer") -> list[SessionEvent]:
        """The peer reset the connection (or it failed under us)."""
        if self.ended is not None:
            return []
        buffered = self.decoder.buffered
        if buffered:
            return [
                self._end(
                    now,
                    "truncated",
                    f"the {self._peer_words} reset the connection inside a message "
                    f"({buffered} bytes of it had arrived)",
                )
            ]
        detail = f"the {self._peer_words} reset the connection"
        if reason != "connection reset by peer":
            detail = f"{detail}: {reason}"
        return [self._end(now, f"{self._peer}-reset", detail)]

    def tick(self, now: float) -> list[SessionEvent]:
        """The deadline passed with nothing read meanwhile: apply the timers' rules.

        Call it only after reading whatever the socket holds, so that bytes
        which did arrive in time are not taken for a stall.
        """
        if self.ended is not None:
            return []
        rules, out = self.rules, []
        t = now - self.started
        due = now + TIME_SLACK
        if self.role is Role.ASTERISK:
            window = rules.payload_window
            at = self._header_at
            if (
                window is not None
                and at is not None
                and not self._stall_reported
                and due >= at + window
            ):
                self._stall_reported = True
                text = (
                    f"the application sent a header and then stalled: "
                    f"{self.decoder.buffered} bytes of a message arrived and its payload "
                    f"was not complete {window * 1000:g} ms later (Asterisk ends the "
                    "session; write header and payload in one send)"
                )
                event = self._refusal(
                    at - self.started,
                    at,
                    "stall",
                    text,
                    malformed=False,
                    what="payload stalled after its header",
                )
                out.append(event)
                if self.ended is not None:
                    return out
            if (
                rules.inactivity is not None
                and rules.mode is Mode.STRICT
                and due >= self._last_activity + rules.inactivity
            ):
                out.append(
                    self._end(
                        now,
                        "inactivity",
                        f"nothing either way for {rules.inactivity:g} s: Asterisk's dialplan "
                        "application hangs up (--lenient keeps the call)",
                    )
                )
        else:
            stall = rules.message_stall
            since = self._partial_since
            if stall is not None and since is not None and due >= since + stall:
                text = (
                    f"a message stayed incomplete for {stall:g} s "
                    f"({self.decoder.buffered} bytes of it arrived)"
                )
                if rules.mode is Mode.OBSERVE:
                    if not self._stall_reported:
                        self._stall_reported = True
                        out.append(self._problem(t, "stall", text, violation=True))
                else:
                    out.append(self._end(now, "stall", text))
                    return out
            timeout = rules.idle_timeout
            if timeout is not None and due >= self._last_rx + timeout:
                out.append(self._end(now, "timeout", f"nothing received for {timeout:g} s"))
        return out

    @property
    def deadline(self) -> float | None:
        """When tick() must next be called (monotonic), or None."""
        if self.ended is not None:
            return None
        rules = self.rules
        times: list[float] = []
        if self.role is Role.ASTERISK:
            if (
                rules.payload_window is not None
                and self._header_at is not None
                and not self._stall_reported
            ):
                times.append(self._header_at + rules.payload_window)
            if rules.inactivity is not None and rules.mode is Mode.STRICT:
                times.append(self._last_activity + rules.inactivity)
        else:
            if (
                rules.message_stall is not None
                and self._partial_since is not None
                and not self._stall_reported
            ):
                times.append(self._partial_since + rules.message_stall)
            if rules.idle_timeout is not None:
                times.append(self._last_rx + rules.idle_timeout)
        return min(times) if times else None

    @property
    def partial(self) -> bool:
        """Part of a message has arrived, and not the rest."""
        return bool(self.decoder.buffered)

    # What we did.

    def sent(self, message: Message, now: float, why: str = "") -> list[Problem]:
        """We sent a message: it counts as activity; warn if Asterisk would refuse it.
        `why` says what made us send it (`by --inject hangup@3`)."""
        self._last_activity = now
        if self.role is Role.APPLICATION and message.refused_by_asterisk:
            return [self._we_sent_refused(now - self.started, message, why)]
        return []

    def sent_audio(self, now: float) -> None:
        """We sent audio at `now` that the engine does not hand over message by message
        (load's frames): it counts as activity, as the caller's audio keeps Asterisk's
        dialplan application from hanging up."""
        if now > self._last_activity:
            self._last_activity = now

    def sent_raw(
        self, data: bytes, now: float, why: str = ""
    ) -> tuple[list[Message], list[Problem]]:
        """We wrote bytes as they are (--inject raw:HEX): the messages they make, and
        what is wrong with them from the other side's point of view."""
        self._last_activity = now
        t = now - self.started
        decoder = Decoder()
        decoder.feed(data)
        messages = decoder.messages()
        problems: list[Problem] = []
        if self.role is Role.APPLICATION:
            problems = [
                self._we_sent_refused(t, message, why)
                for message in messages
                if message.refused_by_asterisk
            ]
        if decoder.buffered:
            text = f"we sent {decoder.buffered} raw bytes that are not a whole message{why}"
            if self.role is Role.APPLICATION:
                text += (
                    ": Asterisk waits for the rest, and ends the session when a payload "
                    "stalls for more than about 5 ms"
                )
            problems.append(Problem(t, "raw-partial", text, violation=False))
        return messages, problems

    def close(self, ended: str, detail: str, now: float) -> Ended:
        """We end the call (or the tool stops); the first ending given stays."""
        if self.ended is None:
            self.ended = Ended(now - self.started, ended, detail)
            self._plain = False
        return self.ended

    # Judging.

    def _judge(self, t: float, now: float, message: Message, out: list[SessionEvent]) -> None:
        kind = message.kind
        if self.role is Role.APPLICATION:
            # The peer is Asterisk: it sends the UUID first, then audio, DTMF.
            if self._first_message:
                self._first_message = False
                if kind != Kind.UUID:
                    out.append(
                        self._problem(
                            t,
                            "first-not-uuid",
                            f"first message is {message.name} (kind 0x{kind:02x}, "
                            f"{len(message.payload)} byte{'' if len(message.payload) == 1 else 's'}"
                            "), not a uuid: Asterisk always "
                            "sends the UUID first",
                            violation=True,
                        )
                    )
                elif message.uuid is not None:
                    self.uuid = str(message.uuid)
            elif (
                kind == Kind.UUID
                and message.uuid is not None
                and self.uuid is not None
                and str(message.uuid) != self.uuid
            ):
                out.append(
                    self._problem(
                        t,
                        "second-uuid",
                        f"a second uuid {message.uuid} in the call; it stays {self.uuid}",
                        violation=False,
                    )
                )
            problem = message.problem
            if problem is not None:
                out.append(
                    self._problem(
                        t,
                        f"malformed:{problem}",
                        f"the caller sent a malformed message: {problem}",
                        violation=True,
                    )
                )
            if kind == Kind.HANGUP:
                out.append(self._end(now, "caller-hangup", "the caller hung up"))
            return
        # The peer is the application: Asterisk takes hangup and non-empty audio only.
        if message.refused_by_asterisk:
            text = (
                f"the application sent {describe_message(message)} at {t:.3f}s: Asterisk "
                "ends the session on anything but hangup and non-empty audio"
            )
            what = message.problem or f"{message.name} message"
            out.append(
                self._refusal(
                    t, now, "refused", text, malformed=message.problem is not None, what=what
                )
            )
        elif kind == Kind.HANGUP:
            out.append(self._end(now, "app-hangup", "the application hung up"))
        elif message.payload and len(message.payload) & 1:
            out.append(
                self._problem(
                    t,
                    "odd-audio",
                    f"the application sent audio of odd length {len(message.payload)}: "
                    "Asterisk takes it, but 16-bit samples come in pairs of bytes",
                    violation=False,
                )
            )

    def _refusal(
        self, t: float, now: float, code: str, text: str, malformed: bool, what: str
    ) -> SessionEvent:
        """What Asterisk refuses, by mode: the end of the call, or a warning."""
        mode = self.rules.mode
        if mode is Mode.STRICT:
            return self._end(now, code, text)
        if mode is Mode.OBSERVE:
            return self._problem(t, code, f"{text} (forwarded)", violation=True, what=what)
        text = f"{text}; --lenient: carrying on"
        return self._problem(t, code, text, violation=malformed, what=what)

    def _problem(self, t: float, code: str, text: str, violation: bool, what: str = "") -> Problem:
        if violation and text not in self.violations:
            self.violations.append(text)
        return Problem(t, code, text, violation, what)

    def _we_sent_refused(self, t: float, message: Message, why: str) -> Problem:
        return Problem(
            t,
            f"we-sent-refused:{message.kind}",
            f"we sent {describe_message(message)}{why}: Asterisk would end the session on it",
            violation=False,
        )

    def _end_of_stream(self, now: float) -> list[SessionEvent]:
        try:
            self.decoder.end_of_stream()
        except TruncatedMessage as exc:
            return [
                self._end(now, "truncated", f"the {self._peer_words} closed the connection: {exc}")
            ]
        return [
            self._end(now, f"{self._peer}-close", f"the {self._peer_words} closed the connection")
        ]

    def _end(self, now: float, ended: str, detail: str) -> Ended:
        if ended in VIOLATION_ENDINGS and detail not in self.violations:
            self.violations.append(detail)
        return self.close(ended, detail, now)
