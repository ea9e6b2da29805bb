"""The human display: rich and coloured, audio folded into a live line per call."""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from audiosocket_cli.analysis.levels import format_level, level_dbfs
from audiosocket_cli.output.sinks import Environment, message_detail
from audiosocket_cli.protocol.events import CallEnd, CallInfo, CallStart, Event
from audiosocket_cli.protocol.wire import Message

DIRECTION_STYLE = {">": "cyan", "<": "magenta", "-": "dim"}
EVENT_STYLE = {
    "call-start": "bold green",
    "call-end": "bold",
    "warning": "bold yellow",
    "diagnosis": "yellow",
}


@dataclass
class _AudioLine:
    frames_in: int = 0
    frames_out: int = 0
    rate: int | None = None
    level: float | None = None
    t: float = 0.0


class HumanSink:
    shows_messages = True
    needs_level = False  # a level is shown a few times a second, computed here

    def __init__(self, env: Environment, verbose: int = 0, quiet: bool = False) -> None:
        self.console = Console(
            file=env.stdout, no_color=not env.color, highlight=False, soft_wrap=True
        )
        self.verbose = verbose
        self.quiet = quiet
        self.active: dict[int, tuple[CallInfo, _AudioLine]] = {}
        self.live = Live(
            get_renderable=self._render,
            console=self.console,
            transient=True,
            auto_refresh=True,
            refresh_per_second=4,
        )
        self._started = False
        self._last_level = 0.0

    def _render(self) -> Group:
        lines = []
        for call, line in list(self.active.values())[:20]:
            text = Text()
            text.append(f"  {call.short_id} ", style="bold")
            text.append(
                f"audio > {line.frames_in} frames  < {line.frames_out} frames  "
                f"{line.rate or '-'} Hz  {format_level(line.level)}  {line.t:.1f}s",
                style="dim",
            )
            lines.append(text)
        if len(self.active) > 20:
            lines.append(Text(f"  ... and {len(self.active) - 20} more calls", style="dim"))
        return Group(*lines)

    def _print(self, text: Text) -> None:
        if not self._started:
            self.live.start()
            self._started = True
        self.console.print(text)

    def _prefix(self, call: CallInfo, t: float, direction: str) -> Text:
        text = Text()
        text.append(f"{t:10.3f} ", style="dim")
        text.append(f"{call.short_id:8} ", style="bold")
        text.append(f"{direction} ", style=DIRECTION_STYLE.get(direction, ""))
        return text

    def message(
        self, call: CallInfo, t: float, direction: str, message: Message, level: float | None
    ) -> None:
        if message.is_audio and message.payload and not (self.verbose and not self.quiet):
            line = self.active.setdefault(call.conn, (call, _AudioLine()))[1]
            if direction == ">":
                line.frames_in += 1
            else:
                line.frames_out += 1
            line.rate, line.t = message.rate, t
            now = time.monotonic()
            if now - self._last_level > 0.2:  # the level is shown, not logged
                line.level = level_dbfs(message.payload)
                self._last_level = now
            if not self._started:
                self.live.start()
                self._started = True
            return
        if self.quiet:
            return
        text = self._prefix(call, t, direction)
        text.append(f"{message.name:7} ", style="bold red" if message.problem else "bold")
        text.append(f"{len(message.payload):5} ")
        if message.is_audio and level is None:
            level = level_dbfs(message.payload)
        text.append(message_detail(message, level))
        self._print(text)

    def event(self, call: CallInfo, event: Event) -> None:
        if isinstance(event, CallStart):
            self.active.setdefault(call.conn, (call, _AudioLine()))
        elif isinstance(event, CallEnd):
            self._fold_summary(call.conn)
        line = self._prefix(call, event.t, "-")
        line.append(f"{event.name} ", style=EVENT_STYLE.get(event.name, "bold"))
        line.append(event.text)
        self._print(line)

    def flush(self) -> None:
        pass

    def _fold_summary(self, conn: int) -> None:
        """The folded audio of a call that has ended, as one line."""
        entry = self.active.pop(conn, None)
        if entry is None:
            return
        call, line = entry
        if line.frames_in or line.frames_out:
            text = self._prefix(call, line.t, "-")
            text.append("audio   ", style="bold")
            text.append(
                f"> {line.frames_in} frames  < {line.frames_out} frames  {line.rate or '-'} Hz"
            )
            self._print(text)

    def close(self) -> None:
        for conn in list(self.active):
            self._fold_summary(conn)
        if self._started:
            self.live.stop()
