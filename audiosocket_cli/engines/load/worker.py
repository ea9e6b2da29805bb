"""A share of a load run's calls on one reactor: launching, pacing, reading, ending."""

from __future__ import annotations

import errno
import functools
import math
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from audiosocket_cli.analysis.stats import AnalysisBudget
from audiosocket_cli.engines.before_call import BeforeCall
from audiosocket_cli.engines.call import CallReport, SessionClock
from audiosocket_cli.engines.load import conversations
from audiosocket_cli.engines.load.calls import Call, Slot
from audiosocket_cli.engines.load.conversations import ConversationLog
from audiosocket_cli.engines.load.frames import K_BITS, N_BITS, Wire, frames_for, frames_until
from audiosocket_cli.engines.load.heard import count_in, heard, take_runs
from audiosocket_cli.engines.load.periods import NORMAL_ENDINGS, STOPPED_ENDINGS, PeriodStats
from audiosocket_cli.engines.load.plan import FRAME_MS, LoadPlan, make_uuid
from audiosocket_cli.media.recorder import Recording, call_recording
from audiosocket_cli.net.reactor import Reactor, Timer, frozen_heap
from audiosocket_cli.net.tcpstate import waiting_ports
from audiosocket_cli.net.transport import CONNECT_TIMEOUT, ended_by_reset, set_nodelay
from audiosocket_cli.output.sinks import Output
from audiosocket_cli.protocol.events import CallEnd, CallInfo
from audiosocket_cli.protocol.session import Ended, Problem, Received, Role, Session
from audiosocket_cli.protocol.wire import RATE_KINDS, Message
from audiosocket_cli.status import Terminated

PHASE_STEP = (5**0.5 - 1) / 2  # the golden ratio's fraction: a low-discrepancy sequence
SLOT_SECONDS = 0.001  # calls starting within the same millisecond of the grid share a tick
RECV_SIZE = 65536  # a load call's read; small enough never to need a fresh mmap
CLOSE_LIMIT = 1.0  # s the application has to close its side after our close
CLOSE_POLL = 0.05  # s between looks at the kernel's table while the run waits on closes
ECHO_WINDOW = 100  # frames (2 s) remembered per call for matching echoes
SETTLE_EVERY = 4096  # values noted in a histogram before they are binned
RUNS_EVERY = 1.0  # s between the batches of a slot's calls' run messages (analysis.runs)


# A worker: a share of the calls on one loop.

OnPeriod = Callable[[dict[str, Any]], None]
OnCallEnd = Callable[[CallEnd | None, str, float], None]  # (end, reason, call seconds)


class Worker:
    """A share of the calls, on one reactor; reports each period through `on_period`.

    Worker `index` of `count` launches calls number index+1, index+1+count, ...
    at rate/count per second (offset so that the workers interleave), at most
    ceil-share of `calls` at once, and its share of `total`.
    """

    _wire: Wire | None = None  # made at the first tick

    def __init__(
        self,
        plan: LoadPlan,
        *,
        index: int = 0,
        count: int = 1,
        epoch: float | None = None,
        on_period: OnPeriod | None = None,
        on_call_end: OnCallEnd | None = None,
        on_ttfa: Callable[[float], None] | None = None,
        control: Any = None,
    ) -> None:
        self.plan = plan
        self.index = index
        self.count = count
        self.epoch = time.monotonic() if epoch is None else epoch
        self.on_period = on_period
        self.on_call_end = on_call_end
        self.on_ttfa = on_ttfa
        self.control = control  # a multiprocessing connection: "stop" arrives on it
        self.max_calls = plan.calls // count + (index < plan.calls % count)
        self.total = (
            None if plan.total is None else plan.total // count + (index < plan.total % count)
        )
        self.interval = count / plan.rate if plan.rate > 0 else 0.0
        self.reactor = Reactor()
        self.output = Output([])  # per-call events are not shown: the periods are the output
        self.budget = AnalysisBudget(per_second=200.0)
        self.frames = frames_for(plan)
        self.finite = plan.source == "file"
        self.kind = RATE_KINDS[plan.sample_rate]
        self.frame_s = plan.frame_seconds
        self.k_end = frames_until(plan.duration, self.frame_s)
        self.slot_count = max(1, round(self.frame_s / SLOT_SECONDS))
        self.slots = [Slot() for _ in range(self.slot_count)]
        self.calls: dict[int, Call] = {}
        self.launched = 0
        self.next_launch = self.epoch + index * (1.0 / plan.rate if plan.rate > 0 else 0.0)
        self.launch_timer: Timer | None = None
        self.stats = PeriodStats()
        # Calls we closed, by local port: (when, whether the application sent anything),
        # until the kernel shows whether it closed its side within CLOSE_LIMIT.
        self.closing: dict[int, tuple[float, bool]] = {}
        self.said_before_call = False
        self.period_index = 0
        self.stopping = ""  # "interrupted" or "terminated" once asked to stop
        self.finished = False
        self._sockaddr: tuple[int, Any] | None = None
        self._said: set[str] = set()
        self.conversation_log: ConversationLog | None = None
        if plan.scenario is not None:
            # Each call holds the scenario's conversation: the slots tick its scripts.
            self._tick = functools.partial(conversations.tick, self)  # type: ignore[method-assign]
            if plan.conversations_path is not None:
                self.conversation_log = ConversationLog(plan.conversations_path)

    # Running.

    def run(self) -> str:
        """Run every call; returns "" when done, or "interrupted"/"terminated"."""
        plan = self.plan
        infos = socket.getaddrinfo(plan.address.host, plan.address.port, type=socket.SOCK_STREAM)
        family, _, _, _, sockaddr = infos[0]
        self._sockaddr = (family, sockaddr)
        reactor = self.reactor
        if self.control is not None:
            reactor.add_reader(self.control, self._control)
        self._schedule_launch(self.next_launch)
        reactor.call_at(self.epoch + plan.period, self._period)
        try:
            # Before the first call: half the objects a full collection scans at 500
            # calls, whose pause (every call's frames wait) falls from 30 ms to 12-22.
            with frozen_heap():
                reactor.run()
        except KeyboardInterrupt:
            self.stop("interrupted")
        except Terminated:
            self.stop("terminated")
        if not self.finished:
            self._finish()
        return self.stopping

    def stop(self, how: str = "interrupted") -> None:
        """End every call now (cleanly, as Ctrl-C does) and report the last period."""
        if not self.stopping:
            self.stopping = how
        if self.launch_timer is not None:
            self.launch_timer.cancel()
        for call in list(self.calls.values()):
            if call.session is None:
                self._connect_ended(call, None)
            else:
                assert call.session is not None
                self._end(call, call.session.close(how, "stopped", time.monotonic()))
        self._finish()

    def _control(self) -> None:
        # The controller's only word is "stop"; its end of file means it died.
        if self.control.stop_asked():
            if self.control.gone:
                self.reactor.forget(self.control)
            self.stop("interrupted")

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._emit(final=True)
        if self.conversation_log is not None:
            self.conversation_log.close()
        self.reactor.stop()
        if self.control is not None:
            self.reactor.forget(self.control)

    def _period(self) -> None:
        if self.finished:
            return
        self._emit(final=False)
        self.period_index += 1
        self.reactor.call_at(self.epoch + (self.period_index + 1) * self.plan.period, self._period)

    def _judge_closes(self, now: float, final: bool = False) -> None:
        """Calls whose close the application never answered within CLOSE_LIMIT: left
        open (its socket in CLOSE-WAIT), and unserved if it never sent a byte."""
        if not self.closing:
            return
        left = waiting_ports(self.plan.address.port)  # one look, filtered by the kernel
        if left is None:
            self.closing.clear()  # no kernel table here: not judged
            return
        stats = self.stats
        for port, (at, served) in list(self.closing.items()):
            waiting = port in left
            if waiting and now - at >= CLOSE_LIMIT:
                stats.left_open += 1
                if not served:
                    stats.unserved += 1
            elif waiting and not final:
                continue
            del self.closing[port]

    def say_once(self, key: str, text: str) -> None:
        """A warning on stderr, once per run and worker for each `key`."""
        if key not in self._said:
            self._said.add(key)
            print(f"audiosocket: warning: {text}", file=sys.stderr, flush=True)

    def _emit(self, final: bool) -> None:
        now = time.monotonic()
        self._judge_closes(now, final)
        stats = self.stats
        for call in self.calls.values():
            count_in(self, call)
            if call.first_audio is not None:
                stats.talk_s += now - call.acct_at
                call.acct_at = now
        record = stats.record()
        record.update(
            worker=self.index,
            period=self.period_index,
            final=final,
            at=now,
            active=sum(1 for c in self.calls.values() if c.state == "up"),
            connecting=sum(
                1 for c in self.calls.values() if c.state in ("connecting", "before-call")
            ),
        )
        self.stats = PeriodStats()
        if self.on_period is not None:
            self.on_period(record)

    # Launching calls.

    def _schedule_launch(self, when: float) -> None:
        if self.launch_timer is not None:
            self.launch_timer.cancel()
        self.launch_timer = self.reactor.call_at(when, self._launch_due)

    def _launch_due(self) -> None:
        self.launch_timer = None
        if self.stopping:
            return
        if self.total is not None and self.launched >= self.total:
            self._maybe_done()
            return
        if len(self.calls) >= self.max_calls:
            return  # a call's end launches the next
        now = time.monotonic()
        self._launch(now)
        # A rate the loop could not keep is not made up for with a burst later.
        self.next_launch = max(self.next_launch + self.interval, now - self.interval)
        self._schedule_launch(self.next_launch)

    def _launch(self, now: float) -> None:
        n = self.index + self.launched * self.count + 1
        self.launched += 1
        self.stats.started += 1
        call = Call(n, make_uuid(self.plan, n), None, now)
        self.calls[n] = call
        command = self.plan.before_call
        if command is None:
            self._dial(call, now)
            return
        # The dialplan's step before AudioSocket: the call waits for it, the loop does not.
        call.state = "before-call"
        try:
            before = call.before = BeforeCall(command, call.uuid, n, self.plan.address)
        except OSError as exc:
            self._before_call_failed(call, f"--before-call {command!r} could not run: {exc}")
            return
        self.reactor.add_reader(before.pipe, lambda: self._before_call_read(call))
        call.connect_timer = self.reactor.call_at(
            before.deadline, lambda: self._before_call_failed(call, before.kill())
        )

    def _before_call_read(self, call: Call) -> None:
        before = call.before
        if before is None or not before.read():
            return
        self.reactor.forget(before.pipe)
        call.before = None
        if call.connect_timer is not None:
            call.connect_timer.cancel()
            call.connect_timer = None
        why = before.result()
        if why is not None:
            self._before_call_failed(call, why)
        elif call.state == "before-call":
            call.state = "connecting"
            self._dial(call, time.monotonic())

    def _before_call_failed(self, call: Call, why: str) -> None:
        if call.before is not None:
            self.reactor.forget(call.before.pipe)
            call.before = None
        if not self.said_before_call:
            self.said_before_call = True  # once: the same command fails the same way
            print(f"audiosocket: warning: call {call.n}: {why}", file=sys.stderr, flush=True)
        self._connect_ended(call, "before-call-failed")

    def _dial(self, call: Call, now: float) -> None:
        assert self._sockaddr is not None
        family, sockaddr = self._sockaddr
        sock = call.sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        set_nodelay(sock)
        err = sock.connect_ex(sockaddr)
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            self._connect_ended(call, _connect_reason(err))
            return
        self.reactor.add_writer(sock, lambda: self._connected(call))
        call.connect_timer = self.reactor.call_at(
            now + CONNECT_TIMEOUT, lambda: self._connect_ended(call, "connect-timeout")
        )

    def _connect_ended(self, call: Call, reason: str | None) -> None:
        """A call that never came up: failed with `reason`, or stopped (None)."""
        if call.state == "done":
            return
        call.state = "done"
        if call.connect_timer is not None:
            call.connect_timer.cancel()
        if call.before is not None:  # stopped while its command ran
            self.reactor.forget(call.before.pipe)
            call.before.kill()
            call.before = None
        if call.sock is not None:
            self.reactor.forget(call.sock)
            call.sock.close()
        self.calls.pop(call.n, None)
        if reason is None:
            self.stats.stopped += 1
        else:
            self.stats.failed[reason] += 1
        if self.on_call_end is not None:
            self.on_call_end(None, reason or self.stopping or "interrupted", 0.0)
        self._after_end()

    def _connected(self, call: Call) -> None:
        err = call.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self.reactor.remove_writer(call.sock)
        if err:
            self._connect_ended(call, _connect_reason(err))
            return
        if call.connect_timer is not None:
            call.connect_timer.cancel()
            call.connect_timer = None
        try:
            call.local_port = call.sock.getsockname()[1]
        except (OSError, IndexError):
            pass
        now = time.monotonic()
        plan = self.plan
        call.state = "up"
        call.up_at = now
        self.stats.up += 1
        info = call.info = CallInfo(conn=call.n, uuid=call.uuid, peer=plan.address)
        info.started = now
        session = call.session = Session(Role.ASTERISK, plan.rules, started=now)
        recordings: dict[str, Recording] = {}
        if plan.record_dir is not None:
            uuid = call.uuid
            recordings["<"] = call_recording(plan.record_dir, lambda: uuid)
        call.report = CallReport(
            self.output,
            info,
            recordings=recordings,
            diagnose=("<",),
            encoding_gate=self.budget,
            frame_ms=FRAME_MS,
        )
        call.clock = SessionClock(self.reactor, session, lambda: self._check(call))
        self.reactor.add_reader(call.sock, functools.partial(self._readable, call))
        call.ours = call.report.stats[">"].add
        call.app = call.report.stats["<"]
        call.plain = not recordings and not call.report.show
        uuid_message = Message.for_uuid(call.uuid)
        self._send(call, uuid_message.encode(), now)
        session.sent(uuid_message, now)
        call.ours(0.0, uuid_message)
        if call.state != "up":
            return
        # Each call has its own phase of the 20 ms cycle, as Asterisk's per-channel
        # timers give it: calls started a whole number of frames apart (any --rate
        # that divides 50) would otherwise all send in the same millisecond. The
        # phases follow the golden-ratio sequence of call numbers, evenly spread
        # whatever the rate; calls that share a phase share one tick. The first
        # frame goes at the call's phase on or after now; its media clock starts there.
        phase = int((call.n * PHASE_STEP) % 1.0 * self.slot_count)
        first = math.ceil((now - self.epoch) / SLOT_SECONDS)
        step = first + (phase - first) % self.slot_count
        slot = self.slots[step % self.slot_count]
        call.slot = slot
        slot.calls[call.n] = call
        if slot.timer is None:
            slot.due = self.epoch + step * SLOT_SECONDS
            slot.timer = self.reactor.call_at(slot.due, lambda: self._tick(slot))
        if plan.scenario is not None:
            # The script's times are the call report's: seconds since the connection.
            call.talk = conversations.Talk(self, call, max(0.0, slot.due - now))
        call.batched = call.plain and call.talk is None
        call.clock.arm()

    # Sending: one pass over a slot's calls per tick.

    def _tick(self, slot: Slot) -> None:
        """Each member's frame, in one pass: the whole per-frame cost is here.

        Per frame: the payload from its precomputed parts (Wire), one clock read,
        the echo table, one send(); the message counts and the lateness are added once
        per pass (each frame's lateness counted as the pass's latest, a bound within
        the pass's own time, tens of microseconds). TCP offers nothing cheaper than
        one send() per frame: each call is its own socket (sendmmsg batches one
        socket's messages, not many sockets'), and on loopback most of a send's cost
        is the kernel's. Calls
        whose --duration has passed end after the pass's sends (an end, with its
        diagnoses, costs a millisecond or more: the other members' frames would wait
        for it), at the same media time."""
        due = slot.due
        wire = self._wire
        if wire is None:
            wire = self._wire = Wire(self.frames, self.finite, self.kind, self.k_end)
        frames, nframes, finite = wire.frames, wire.count, wire.finite
        parts_get, part_of = wire.parts.get, wire.part
        k_bits, n_bits, k_end = K_BITS, N_BITS, wire.k_end
        dtmf = self.plan.dtmf
        ndtmf = len(dtmf)
        frame_s = self.frame_s
        header_kind = self.kind
        monotonic = time.monotonic
        out_msgs = out_bytes = 0
        pass_late = 0.0  # the pass's latest frame: a bound for each of its frames
        ending: list[Call] = []
        for call in list(slot.calls.values()):
            k = call.k
            if k >= k_end:
                ending.append(call)
                continue
            if ndtmf and call.dtmf_i < ndtmf and dtmf[call.dtmf_i][0] <= k * frame_s + 1e-9:
                self._send_dtmf(call, k * frame_s)
                if call.state != "up":
                    continue
            call.k = k + 1
            if finite:
                if k >= nframes:
                    continue
                f = k
            elif nframes:
                f = k % nframes
            else:
                continue
            base, tail, header = parts_get(f) or part_of(frames, f)
            if base is None:
                payload = tail  # too short to carry the mark: sent as it is
            else:
                mark12 = base | k_bits[k & 0xFFF] | n_bits[call.nonce]
                payload = mark12.to_bytes(12, "little") + tail
            data = header + payload
            now = monotonic()
            late = now - due
            if late > pass_late:
                pass_late = late
            if late > call.max_late:
                call.max_late = late
            sent = call.sent
            sent[hash(payload)] = now
            if len(sent) > ECHO_WINDOW:
                del sent[next(iter(sent))]
            call.last_sent = now
            out_msgs += 1
            out_bytes += len(data)
            if call.outbox:
                call.outbox += data
            else:
                try:
                    n = call.sock.send(data)
                except BlockingIOError:
                    n = 0
                except OSError as exc:
                    # Counted first: if this was the last call, its end sends the last record.
                    self.stats.late.add_many(pass_late, out_msgs)
                    self.stats.msgs_out += out_msgs
                    self.stats.bytes_out += out_bytes
                    out_msgs = out_bytes = 0
                    self._write_failed(call, exc)
                    continue
                if n < len(data):
                    self._keep(call, data, n)
            if not k:
                # Only our first frame goes into the call's '>' statistics: load shows
                # no per-call counts, and the diagnoses need only know we sent audio
                # (one-way audio). A DirectionStats.add per frame would be the
                # hot path's largest cost after the send itself.
                call.ours(now - call.up_at, Message(header_kind, payload))
        stats = self.stats  # counted before the ends: the last call's end sends the last record
        stats.late.add_many(pass_late, out_msgs)
        if len(stats.echo.pending) > SETTLE_EVERY:
            # Binned in small batches: numpy's temporaries stay small enough to be
            # reused instead of mapped afresh, so memory does not grow with the rate.
            stats.echo.settle()
            stats.jitter.settle()
        stats.msgs_out += out_msgs
        stats.bytes_out += out_bytes
        if due >= slot.runs_due:
            # After the sends, about once a second: this slot's calls' run messages in
            # one batch. A slot at a time, so that no tick waits for every call's.
            slot.runs_due = due + RUNS_EVERY
            take_runs(self, slot.calls.values())
        if ending:
            why = f"--duration {self.plan.duration:g} passed"
            for call in ending:
                if call.state == "up":
                    assert call.session is not None
                    self._end(call, call.session.close("caller-close", why, due))
        if slot.calls:
            slot.due = due + frame_s
            slot.timer = self.reactor.call_at(slot.due, lambda: self._tick(slot))
        else:
            slot.timer = None

    def _send_dtmf(self, call: Call, media: float) -> None:
        plan = self.plan
        assert call.session is not None
        while call.dtmf_i < len(plan.dtmf) and plan.dtmf[call.dtmf_i][0] <= media + 1e-9:
            for message in plan.dtmf[call.dtmf_i][1]:
                now = time.monotonic()
                self._send(call, message.encode(), now)
                if call.state != "up":
                    return
                call.session.sent(message, now)
                call.ours(now - call.up_at, message)
            call.dtmf_i += 1

    def _send(self, call: Call, data: bytes, now: float) -> None:
        """Write one whole message; what the socket does not take waits in the outbox."""
        stats = self.stats
        stats.msgs_out += 1
        stats.bytes_out += len(data)
        if call.outbox:
            call.outbox += data
            return
        try:
            n = call.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self._write_failed(call, exc)
            return
        if n < len(data):
            self._keep(call, data, n)

    def _keep(self, call: Call, data: bytes, sent: int) -> None:
        """What the socket did not take of `data` waits in the outbox, sent when it can."""
        call.outbox += data[sent:]
        self.reactor.add_writer(call.sock, lambda: self._flush(call))

    def _flush(self, call: Call) -> None:
        try:
            n = call.sock.send(call.outbox)
        except BlockingIOError:
            return
        except OSError as exc:
            self._write_failed(call, exc)
            return
        del call.outbox[:n]
        if not call.outbox:
            self.reactor.remove_writer(call.sock)

    def _write_failed(self, call: Call, exc: OSError) -> None:
        # Its close or reset is in the socket: reading tells the truer story (a reset
        # whose error this send took included: see _take).
        self._readable(call)
        if call.state == "up" and call.session is not None:
            now = time.monotonic()
            events = call.session.reset(now, str(exc))
            ended = next((e for e in events if isinstance(e, Ended)), None)
            self._end(call, ended or call.session.close("app-reset", str(exc), now))

    # Receiving.

    def _readable(self, call: Call) -> None:
        if call.state != "up":
            return
        session = call.session
        assert session is not None
        try:
            data: bytes | None = call.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except ConnectionResetError:
            data = None
        except OSError as exc:
            events = session.reset(time.monotonic(), str(exc))
            self._handle(call, events)
            return
        now = time.monotonic()
        if data:
            message = session.whole_audio(data, now)
            if message is not None:
                # The usual read: one whole audio message. It only moves the session's
                # deadline later, so its timer stays (it fires first, then re-arms).
                heard(self, call, now - session.started, message)
                return
        self._take(call, data, now)

    def _take(self, call: Call, data: bytes | None, now: float) -> None:
        """A read's bytes (b"": the end of the stream, None: a reset) at `now`."""
        session = call.session
        assert session is not None
        if data:
            messages = session.whole_audios(data, now)
            if messages is not None:
                # Several at once (our reads fell behind, or the application writes
                # frames together): the same path, each at the read's time.
                t = now - session.started
                for message in messages:
                    heard(self, call, t, message)
                return
        if data == b"" and ended_by_reset(call.sock):
            data = None  # a send of ours took the reset's error: this end is a reset
        events = session.reset(now) if data is None else session.receive(data, now)
        self._handle(call, events)

    def _check(self, call: Call) -> None:
        """The session's deadline passed: read what came first, then tick."""
        if call.state != "up":
            return
        self._readable(call)
        if call.state == "up" and call.session is not None:
            # Our frames count as activity: the dialplan application's inactivity timer
            # sees both directions (only the UUID and DTMF go through session.sent()).
            call.session.sent_audio(call.last_sent)
            self._handle(call, call.session.tick(time.monotonic()))

    def _handle(self, call: Call, events: list[Any], rearm: bool = True) -> None:
        report = call.report
        assert report is not None
        ended = None
        for event in events:
            if type(event) is Received:
                heard(self, call, event.t, event.message)
            elif isinstance(event, Problem):
                report.problem(event, "<")
            elif isinstance(event, Ended):
                ended = event
        if ended is not None:
            self._end(call, ended)
        elif rearm and call.clock is not None:
            call.clock.arm()

    # Ending.

    def _end(self, call: Call, ended: Ended) -> None:
        if call.state != "up":
            return
        call.state = "done"
        if call.runs:
            take_runs(self, (call,))
        count_in(self, call)
        session, report = call.session, call.report
        assert session is not None and report is not None
        if call.slot is not None:
            call.slot.calls.pop(call.n, None)
        if call.clock is not None:
            call.clock.cancel()
        self.reactor.forget(call.sock)
        try:
            call.sock.close()  # as Asterisk ends a call: no hangup message
        except OSError:
            pass
        self.calls.pop(call.n, None)
        now = time.monotonic()
        if not ended.ended.startswith("app-") and call.local_port:
            # Did the application close its side after ours? The kernel says, later.
            served = bool(report.stats["<"].messages or session.decoder.buffered)
            self.closing[call.local_port] = (now, served)
        stats = self.stats
        if call.first_audio is not None:
            stats.talk_s += now - call.acct_at
        if call.talk is not None and ended.ended not in STOPPED_ENDINGS:
            # A conversation cut by Ctrl-C or SIGTERM is not judged: it was not held.
            conversations.conclude(self, call, ended)
        end = report.finish(
            ended,
            session.violations,
            drop=("refused",) if ended.ended in ("refused", "stall") else (),
            max_send_lag_ms=round(call.max_late * 1000, 3),
        )
        stats.diagnoses.update(end.diagnoses)
        if end.broke_protocol:
            stats.violations += 1
        reason = end.ended
        if reason in STOPPED_ENDINGS:
            stats.stopped += 1
        elif reason in NORMAL_ENDINGS:
            stats.ended += 1
        else:
            stats.failed[reason] += 1
        if self.on_call_end is not None:
            self.on_call_end(end, reason, end.t)
        self._after_end()

    def _after_end(self) -> None:
        if self.stopping:
            return
        if self.total is not None and self.launched >= self.total:
            self._maybe_done()
        elif self.launch_timer is None:
            self._schedule_launch(max(self.next_launch, time.monotonic()))

    def _maybe_done(self) -> None:
        if not self.calls and self.total is not None and self.launched >= self.total:
            if self.closing and not self.stopping:
                # The last calls' closes get their CLOSE_LIMIT before the last word;
                # those the application answered at once are not waited for.
                self._judge_closes(time.monotonic())
                if self.closing:
                    self.reactor.call_later(CLOSE_POLL, self._maybe_done)
                    return
            self._finish()


def _connect_reason(err: int) -> str:
    # A reset before we saw the connection complete: it sat in the listen backlog of
    # an application that then closed its listening socket. Refused, all the same.
    if err in (errno.ECONNREFUSED, errno.ECONNRESET):
        return "connect-refused"
    if err == errno.ETIMEDOUT:
        return "connect-timeout"
    return "connect-failed"
