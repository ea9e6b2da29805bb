"""One TCP connection of a capture: whether it is AudioSocket (a UUID message first,
or the port given), its call's start, its messages out, and its call's end in the
words of every command."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dpkt

from audiosocket_cli.analysis.stats import DirectionStats
from audiosocket_cli.files.pcap.direction import SEQ_MOD, _Direction
from audiosocket_cli.files.pcap.packets import Endpoint, Segment, format_endpoint
from audiosocket_cli.protocol.wire import Kind, Message

if TYPE_CHECKING:
    from audiosocket_cli.files.pcap.capture import _Capture

UNDECIDED_LIMIT = 1 << 16  # bytes a connection may carry before it looks like AudioSocket
_ENDINGS = {
    "client-hangup": "caller-hangup",
    "server-hangup": "app-hangup",
    "client-close": "caller-close",
    "client-reset": "caller-reset",
    "server-close": "app-close",
    "server-reset": "app-reset",
    "capture-end": "unknown",
}
_DETAILS = {
    "caller-hangup": "the caller hung up",
    "app-hangup": "the application hung up",
    "caller-close": "the caller closed the connection",
    "caller-reset": "the caller reset the connection",
    "app-close": "the application closed the connection",
    "app-reset": "the application reset the connection",
}


class _Flow:
    """One TCP connection: its two directions, and whether it is AudioSocket."""

    def __init__(self, capture: _Capture, key: tuple[Endpoint, Endpoint], ts: float) -> None:
        self.capture = capture
        self.key = key
        self.start_ts = ts
        self.last_ts = ts
        self.last_emitted = ts
        self.client: Endpoint | None = None
        self.server: Endpoint | None = None
        self.port_match = False
        self.state = "undecided"  # then "audiosocket" or "other"
        self.number: int | None = None
        self.uuid: str | None = None
        self.dirs = {key[0]: _Direction(self, key[0]), key[1]: _Direction(self, key[1])}
        self.held: list[tuple[float, _Direction, bytes]] = []
        self.held_bytes = 0
        self.first_close: str | None = None
        self.done = False
        self.warned_midstream = False
        self.first_hangup: str | None = None  # the side whose hangup message came first
        self.stats = {">": DirectionStats(), "<": DirectionStats()}
        self.cut: str | None = None  # a stream its own end cut inside a message, said how

    def label(self, direction: _Direction) -> str:
        other = self.key[1] if direction.src == self.key[0] else self.key[0]
        return f"{format_endpoint(direction.src)} > {format_endpoint(other)}"

    def is_new_connection(self, seg: Segment) -> bool:
        """A SYN that starts another connection on these ports, not a retransmitted one."""
        if seg.flags & dpkt.tcp.TH_ACK:
            return False
        direction = self.dirs[seg.src]
        return direction.isn is None or direction.isn != seg.seq or self.first_close is not None

    def packet(self, ts: float, seg: Segment) -> None:
        self.last_ts = max(self.last_ts, ts)
        flags = seg.flags
        here, there = self.dirs[seg.src], self.dirs[seg.dst]
        if flags & dpkt.tcp.TH_SYN:
            if self.client is None:
                toward_server = not flags & dpkt.tcp.TH_ACK
                self.client = seg.src if toward_server else seg.dst
                self.server = seg.dst if toward_server else seg.src
            here.set_isn(seg.seq)
            if flags & dpkt.tcp.TH_ACK:
                there.set_base(seg.ack)
        if self.state == "undecided" and self.port_match:
            self.decide(ts)
        if self.state == "other":
            if flags & (dpkt.tcp.TH_RST | dpkt.tcp.TH_FIN):
                self.capture.flow_ended(self)
            return
        data_seq = (seg.seq + 1) % SEQ_MOD if flags & dpkt.tcp.TH_SYN else seg.seq
        if seg.data:
            here.add(ts, data_seq, seg.data)
        if flags & dpkt.tcp.TH_ACK and there.base is not None:
            there.acknowledged(ts, seg.ack)
        if flags & dpkt.tcp.TH_FIN:
            here.fin(ts, (data_seq + seg.length) % SEQ_MOD)
            if self.first_close is None:
                self.first_close = self.side(here)
        if self.state == "undecided":
            self.try_decide(ts)
            if self.state == "other":
                if flags & (dpkt.tcp.TH_RST | dpkt.tcp.TH_FIN):
                    self.capture.flow_ended(self)
                return
        if flags & dpkt.tcp.TH_RST:
            self.finish_reset(ts, here)
            return
        for direction in (here, there):
            direction.check_hole(ts)
        self.maybe_end(ts)

    def maybe_end(self, ts: float) -> None:
        if not self.done and all(d.ended for d in self.dirs.values()):
            self.end(ts, f"{self.first_close or 'client'}-close")

    def side(self, direction: _Direction) -> str:
        return "client" if direction.src == self.client else "server"

    # Recognising AudioSocket.

    def hold(self, ts: float, direction: _Direction, data: bytes) -> None:
        """In-order bytes of a connection not yet recognised, kept until it is."""
        self.held.append((ts, direction, data))
        self.held_bytes += len(data)

    def try_decide(self, ts: float) -> None:
        if self.client is not None:
            candidates = [self.dirs[self.client]]
        else:
            candidates = list(self.dirs.values())  # no SYN seen: either may be the client
        verdicts = [d.head_verdict() for d in candidates]
        if True in verdicts:
            client = candidates[verdicts.index(True)].src
            self.client = client
            self.server = self.key[1] if client == self.key[0] else self.key[0]
            self.decide(ts)
        elif (
            all(v is False for v in verdicts)
            or self.held_bytes > UNDECIDED_LIMIT
            # closed before saying anything like AudioSocket
            or (any(d.ended for d in candidates) and None in verdicts)
        ):
            self.not_audiosocket()

    def not_audiosocket(self) -> None:
        """Not ours: keep nothing of it but its key, until it ends."""
        self.state = "other"
        self.held = []
        for direction in self.dirs.values():
            direction.pending.clear()
            direction.pending_bytes = 0
            self.capture.holed.discard(direction)

    def decide(self, ts: float) -> None:
        self.state = "audiosocket"
        self.capture.found += 1
        client, server = self.client, self.server
        assert client is not None and server is not None
        self.dirs[client].arrow = ">"
        self.dirs[server].arrow = "<"
        self.capture.emit(
            self,
            self.start_ts,
            event="call-start",
            text=f"client={format_endpoint(client)} server={format_endpoint(server)}",
            fields={"peer": format_endpoint(client), "server": format_endpoint(server)},
        )
        for direction in self.dirs.values():
            if direction.midstream:
                direction.start_midstream()
        held, self.held = self.held, []
        for when, direction, data in held:
            direction.consume(when, data)
        for direction in self.dirs.values():
            if direction.ended:
                direction.end_stream(ts)

    def midstream(self) -> None:
        if not self.warned_midstream:
            self.warned_midstream = True
            self.warn(
                self.start_ts,
                "capture began after the connection opened (no SYN seen): times count "
                "from the first packet, decoding starts at the first message boundary found",
                midstream=True,
            )

    # Output.

    def message(self, ts: float, direction: _Direction, message: Message) -> None:
        self.capture.emit(self, ts, direction, dir=direction.arrow, message=message)
        # Counted here, so that the call-end says what went each way as every command's does.
        self.stats[direction.arrow].add(direction.last_emitted - self.start_ts, message)
        if message[0] == Kind.HANGUP and self.first_hangup is None:
            self.first_hangup = self.side(direction)
        if self.uuid is None and direction.arrow == ">" and message.uuid is not None:
            self.uuid = str(message.uuid)

    def warn(
        self, ts: float, text: str, direction: _Direction | None = None, **fields: Any
    ) -> None:
        if direction is not None:
            fields["direction"] = direction.arrow
        self.capture.emit(self, ts, direction, event="warning", text=text, fields=fields)

    # Ending.

    def finish_reset(self, ts: float, by: _Direction) -> None:
        for direction in self.dirs.values():
            direction.flush(ts, "the connection was reset")
        self.end(ts, f"{self.side(by)}-reset")

    def finish(self, reason: str) -> None:
        """The capture ends (or the ports are reused) with this connection open."""
        ts = self.last_ts
        if self.state == "audiosocket":
            for direction in self.dirs.values():
                direction.flush(ts, reason)
        ended = f"{self.first_close}-close" if self.first_close else "capture-end"
        both_closed = all(d.fin_at is not None for d in self.dirs.values())
        self.end(ts, ended, note="" if both_closed else reason)

    def end(self, ts: float, ended: str, note: str = "") -> None:
        if self.done:
            return
        self.done = True
        if self.state == "audiosocket":
            if self.cut is not None:
                ended, note = "truncated", self.cut
            elif self.first_hangup is not None and ended != "capture-end":
                # A hangup message came first: the close (or reset) that followed is
                # its answer, as every command reports it.
                ended = f"{self.first_hangup}-hangup"
            # In the words of every command (events.ENDINGS): the client is the caller.
            ended = _ENDINGS.get(ended, ended)
            detail = note or _DETAILS.get(ended, "")
            text = f"{ended} ({detail})" if detail else ended
            fields: dict[str, Any] = {"ended": ended, "detail": detail}
            fields.update({d: stats.as_dict() for d, stats in self.stats.items()})
            self.capture.emit(self, ts, event="call-end", text=text, fields=fields)
        self.capture.flow_ended(self)
