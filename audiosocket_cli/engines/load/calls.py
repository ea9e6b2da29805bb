"""One call of a load run, and the calls that share a millisecond of the 20 ms cycle."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from audiosocket_cli.engines.before_call import BeforeCall
from audiosocket_cli.engines.call import CallReport, SessionClock
from audiosocket_cli.net.reactor import Timer
from audiosocket_cli.protocol.events import CallInfo
from audiosocket_cli.protocol.session import Session
from audiosocket_cli.protocol.wire import Message


class Call:
    __slots__ = (
        "n",
        "uuid",
        "sock",
        "state",
        "connect_timer",
        "launched",
        "up_at",
        "info",
        "session",
        "report",
        "clock",
        "slot",
        "k",
        "dtmf_i",
        "outbox",
        "sent",
        "first_audio",
        "last_audio",
        "last_dur",
        "acct_at",
        "ours",
        "max_late",
        "nonce",
        "last_sent",
        "before",
        "local_port",
        "talk",
        "app",
        "plain",
        "counted",
        "batched",
        "runs",
        "run_payload",
    )

    def __init__(self, n: int, uuid: str, sock: socket.socket | None, now: float) -> None:
        self.n = n
        self.uuid = uuid
        # None until dialled (after --before-call); typed as it is from then on.
        self.sock: socket.socket = sock  # type: ignore[assignment]
        self.state = "connecting"
        self.connect_timer: Timer | None = None
        self.launched = now
        self.up_at = now
        self.info: CallInfo | None = None
        self.session: Session | None = None
        self.report: CallReport | None = None
        self.clock: SessionClock | None = None
        self.slot: Slot | None = None
        self.k = 0
        self.dtmf_i = 0
        self.outbox = bytearray()
        self.sent: dict[int, float] = {}  # hash of a payload sent -> when
        self.first_audio: float | None = None
        self.last_audio = 0.0
        self.last_dur = 0.0
        self.acct_at = 0.0
        self.ours: Callable[[float, Message], None] = ignore
        self.max_late = 0.0
        self.nonce = n % 4095 + 1  # never 0: see frames.mark()
        self.last_sent = now
        self.before: BeforeCall | None = None
        self.local_port = 0
        self.talk: Any = None  # --scenario: its conversations.Talk
        self.app: Any = None  # the call report's statistics of the application's messages
        self.plain = False  # the call report neither records nor shows the application's
        # The application's messages, bytes, audio seconds and bursts in the periods so
        # far: each period takes the difference from the call report's statistics.
        self.counted: tuple[int, int, float, int] = (0, 0, 0.0, 0)
        # Arrival times of the application's messages that continue its current run
        # (analysis.runs), taken into the statistics in a batch about once a second,
        # and the last one's payload.
        self.batched = False  # plain, and no conversation listening to each message
        self.runs: list[float] = []
        self.run_payload = b""


def ignore(t: float, message: Message) -> None:
    pass


class Slot:
    """The calls whose frames are due on the same millisecond of the 20 ms grid."""

    __slots__ = ("calls", "timer", "due", "runs_due")

    def __init__(self) -> None:
        self.calls: dict[int, Call] = {}
        self.timer: Timer | None = None
        self.due = 0.0
        self.runs_due = 0.0  # the tick that takes its calls' run messages next
