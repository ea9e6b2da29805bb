"""One call as every engine reports it: counted, shown, recorded, judged, ended.

Each engine moves bytes its own way (a selector loop, two threads, a proxy)
and feeds a protocol.session.Session. What it then does with a call is the
same everywhere and lives here: each message is counted per direction, shown
once, recorded; the session's problems become warnings (each kind once);
and the call ends with diagnoses and one CallEnd. So a call reads the same
whichever command saw it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from audiosocket_cli.analysis.diagnoses import diagnose_application, diagnose_asterisk
from audiosocket_cli.analysis.stats import DirectionStats
from audiosocket_cli.media.recorder import Recording
from audiosocket_cli.net.reactor import Reactor, Timer
from audiosocket_cli.output.sinks import Output
from audiosocket_cli.protocol.events import FAILURE_ENDINGS, CallEnd, CallInfo
from audiosocket_cli.protocol.session import Ended, Problem, Received, Session, SessionEvent
from audiosocket_cli.protocol.wire import AUDIO_RATES, Message
from audiosocket_cli.status import ExitStatus

WHO = {">": "caller", "<": "application"}
HOLD_MESSAGES = 500  # audio held at most until a call has its name, then recorded as conn-N


class CallReport:
    """What one call did, kept and shown as it happens."""

    def __init__(
        self,
        output: Output,
        info: CallInfo,
        *,
        recordings: dict[str, Recording] | None = None,
        diagnose: Iterable[str] = (">", "<"),
        encoding_gate: Callable[[], bool] | None = None,
        frame_ms: float = 20.0,
    ) -> None:
        self.output = output
        self.info = info
        self.recordings = recordings or {}
        self.diagnose = frozenset(diagnose)
        self.frame_ms = frame_ms
        # The encoding analysis (numpy, the costly part) only where it is diagnosed.
        self.stats = {
            direction: DirectionStats(
                analyse_encoding=direction in self.diagnose,
                encoding_offset=info.conn,
                encoding_gate=encoding_gate,
                analyse_pacing=direction == "<" and "<" in self.diagnose,
            )
            for direction in (">", "<")
        }
        self._in, self._out = self.stats[">"], self.stats["<"]
        self.show = output.shows_messages
        self._warned: set[str] = set()
        self._held: list[tuple[float, str, int, bytes]] | None = None
        self.end: CallEnd | None = None

    # As the call goes.

    def start(self, text: str, **fields: Any) -> None:
        self.output.call_start(self.info, text, **fields)

    def message(self, t: float, direction: str, message: Message) -> None:
        """One message either way: counted, recorded, shown (in that order: what was
        shown is in the file)."""
        kind, payload = message
        if self.recordings and payload and kind in AUDIO_RATES and direction in self.recordings:
            if self._held is None:
                self._record(t, direction, AUDIO_RATES[kind], payload)
            else:
                self._held.append((t, direction, AUDIO_RATES[kind], payload))
                if len(self._held) >= HOLD_MESSAGES:
                    self.release_recordings()
        self.stats[direction].add(t, message)
        if self.show:
            self.output.message(self.info, t, direction, message)

    def echoed(self, t: float, message: Message) -> None:
        """A message received and sent straight back at once: message() both ways,
        in one call (an echo server's every message)."""
        if self.recordings:
            self.message(t, ">", message)
            self.message(t, "<", message)
            return
        self._in.add(t, message)
        self._out.add(t, message)
        if self.show:
            self.output.echoed(self.info, t, message)

    def _record(self, t: float, direction: str, rate: int, payload: bytes) -> None:
        recording = self.recordings[direction]
        if recording.error is None:
            note = recording.write(rate, payload)
            if note:
                self.warning(t, f"{WHO[direction]} {note}", direction=direction)

    def hold_recordings(self) -> None:
        """Keep audio from the files until the call has its name (release_recordings)."""
        if self._held is None:
            self._held = []

    def release_recordings(self) -> None:
        held, self._held = self._held, None
        for t, direction, rate, payload in held or ():
            self._record(t, direction, rate, payload)

    def received(self, direction: str, events: list[SessionEvent]) -> Ended | None:
        """A session's events for what came from `direction`: shown; the end if it ended."""
        ended = None
        for event in events:
            if type(event) is Received:
                self.message(event.t, direction, event.message)
            elif isinstance(event, Problem):
                self.problem(event, direction)
            elif isinstance(event, Ended):
                ended = event
        return ended

    def problem(self, problem: Problem, direction: str | None = None) -> None:
        """A warning, once per kind of problem: the call-end counts the rest."""
        if problem.what:  # something Asterisk refuses: counted for the diagnosis
            self.stats[direction or "<"].refused[problem.what] += 1
        if problem.code in self._warned:
            return
        self._warned.add(problem.code)
        fields: dict[str, Any] = {"code": problem.code, "violation": problem.violation}
        if direction:
            fields["direction"] = direction
        self.warning(problem.t, problem.text, **fields)

    def warning(self, t: float, text: str, **fields: Any) -> None:
        self.output.warning(self.info, t, text, **fields)

    # The end.

    def finish(
        self,
        ended: Ended,
        violations: Iterable[str] = (),
        *,
        t: float | None = None,
        annotate: Callable[[str, str], str] | None = None,
        drop: Iterable[str] = (),
        **fields: Any,
    ) -> CallEnd:
        """Recordings closed, diagnoses shown, then the one CallEnd of the call.

        `annotate(code, text)` may add to a diagnosis's text; `drop` names
        diagnoses not to give (the ending already says it).
        """
        if self.end is not None:
            return self.end
        t = self.info.elapsed() if t is None else t
        self.release_recordings()
        for direction, recording in self.recordings.items():
            # end(): close, and a line if the audio held at the end could not be written.
            end = getattr(recording, "end", None)  # an adapter (converse's stereo) may lack it
            if end is None:
                recording.close()
                continue
            note = end()
            if note:
                self.warning(t, f"{WHO.get(direction, direction)} {note}", direction=direction)
        recordings = self.recordings.values()
        paths = tuple(str(path) for r in recordings for path in r.paths)
        partial = any(r.partial for r in recordings)
        codes: list[str] = []
        try:
            for diagnosis in self._diagnoses(ended):
                if diagnosis.code in drop:
                    continue
                text = annotate(diagnosis.code, diagnosis.text) if annotate else diagnosis.text
                codes.append(diagnosis.code)
                self.output.diagnosis(self.info, t, diagnosis.code, text)
        except Exception:  # a diagnosis is a nicety; the call's end must come out
            pass
        self.end = CallEnd(
            t=t,
            ended=ended.ended,
            detail=ended.detail,
            directions={d: s.as_dict() for d, s in self.stats.items()},
            summary=self.summary(t, paths, partial),
            violations=tuple(violations),
            diagnoses=tuple(codes),
            recordings=paths,
            partial=partial,
            fields={"peer": str(self.info.peer), **fields} if self.info.peer else fields,
        )
        self.output.call_end(self.info, self.end)
        return self.end

    def _diagnoses(self, ended: Ended | None = None) -> list[Any]:
        found = []
        app, asterisk = self.stats["<"], self.stats[">"]
        if "<" in self.diagnose:
            found += diagnose_application(app, asterisk, self.frame_ms, ended)
        if ">" in self.diagnose:
            found += diagnose_asterisk(asterisk)
        return found

    def summary(self, t: float, paths: tuple[str, ...], partial: bool) -> str:
        """`after 5.02s; > 252 msgs ...; < 250 msgs ...; < pacing 1.00x jitter 0.4ms`."""
        asterisk, app = self.stats[">"], self.stats["<"]
        text = f"after {t:.2f}s; > {asterisk.summary()}; < {app.summary()}"
        for direction, stats in self.stats.items():
            pacing = stats.pacing()
            if pacing != "-":
                text += f"; {direction} pacing {pacing}"
        if paths:
            text += f"; recorded {', '.join(paths)}"
            if partial:
                text += " (partial: a write failed)"
        return text


def plural(n: int, word: str) -> str:
    """`1 call`, `2 calls`."""
    return f"{n} {word}{'' if n == 1 else 's'}"


class Refusals:
    """Callers turned away at a limit: the first is said at once, the rest summed up
    once a second, so that a flood of connections is a few lines, not one per caller."""

    INTERVAL = 1.0

    def __init__(self, output: Output, reactor: Reactor) -> None:
        self.output = output
        self.reactor = reactor
        self.total = 0
        self._since = 0  # refused since the last line
        self._limit = ""
        self._timer: Timer | None = None

    def refused(self, info: CallInfo, calls: int, limit: str) -> None:
        self.total += 1
        self._limit = limit
        if self._timer is None:
            self.output.warning(
                info,
                0.0,
                f"refused a caller from {info.peer}: {plural(calls, 'call')} already ({limit})",
                peer=str(info.peer),
            )
            self._timer = self.reactor.call_later(self.INTERVAL, self._summary)
        else:
            self._since += 1

    def _summary(self, again: bool = True) -> None:
        self._timer = None
        if not self._since:
            return
        count, self._since = self._since, 0
        self.output.warning(
            CallInfo(conn=0),
            0.0,
            f"refused {plural(count, 'more caller')} in the last {self.INTERVAL:g} s "
            f"({self._limit}); {self.total} in all",
            refused=count,
        )
        if again:
            self._timer = self.reactor.call_later(self.INTERVAL, self._summary)

    def close(self) -> None:
        """The last summary now (the tool stops)."""
        if self._timer is not None:
            self._timer.cancel()
        self._summary(again=False)


class SessionClock:
    """Asks a session to tick when its deadline passes, on a reactor: one timer at a time.

    `check` must read what the socket holds and then call session.tick()
    (protocol.session: bytes that arrived in time are not a stall).
    """

    def __init__(self, reactor: Reactor, session: Session, check: Callable[[], None]) -> None:
        self.reactor = reactor
        self.session = session
        self.check = check
        self.timer: Timer | None = None

    def arm(self) -> None:
        deadline = self.session.deadline
        timer = self.timer
        if deadline is None:
            self.cancel()
            return
        if timer is not None and not timer.cancelled and timer.when <= deadline:
            return  # it fires first; the check re-arms for the later one
        if timer is not None:
            timer.cancel()
        self.timer = self.reactor.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self.timer = None
        self.check()
        self.arm()

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class Tally:
    """The exit status of a run of calls: 3 if a peer broke the protocol in any,
    else 1 if the tool could not do its job in one, else 0."""

    def __init__(self) -> None:
        self.calls = 0
        self.broke_protocol = 0
        self.failed = 0

    def add(self, end: CallEnd) -> None:
        self.calls += 1
        if end.broke_protocol:
            self.broke_protocol += 1
        elif end.ended in FAILURE_ENDINGS:
            self.failed += 1

    @property
    def status(self) -> ExitStatus:
        if self.broke_protocol:
            return ExitStatus.PROTOCOL
        if self.failed:
            return ExitStatus.FAILED
        return ExitStatus.OK
