"""A capture's TCP connections, and its records out: read_pcap, which runs the
packets through the connections; each connection's records queued by capture time
and released once nothing still pending could come before them."""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import dpkt

from audiosocket_cli.files.pcap.direction import _Direction
from audiosocket_cli.files.pcap.flow import _Flow
from audiosocket_cli.files.pcap.packets import (
    Endpoint,
    Segment,
    _link_decoder,
    _open,
    _packets,
    _Source,
)
from audiosocket_cli.files.records import Record, TraceFormatError
from audiosocket_cli.protocol.wire import Message

HOLD_LIMIT = 2.0  # s of capture time output waits on a connection not yet recognised
CLOSED_MEMORY = 120.0  # s of capture time a closed connection's stray packets are ignored


def read_pcap(stream: BinaryIO, name: str, port: int | None = None) -> Iterator[Record]:
    """The AudioSocket calls in a pcap or pcapng capture, as Records."""
    source = _Source(stream)
    reader, linktype = _open(source, name)
    decode = _link_decoder(linktype, name)
    capture = _Capture(name, port)
    for ts, buf in _packets(reader, capture):
        segment = decode(buf)
        if segment is not None:
            capture.packet(ts, segment)
        yield from capture.release()
    capture.cut_short = capture.cut_short or source.short
    capture.finish()
    yield from capture.release(everything=True)
    if not capture.found:
        hint = "" if port else " (if the first message is not a UUID, give the port with --port)"
        raise TraceFormatError(
            f"{name}: no AudioSocket connection among {capture.tcp_connections} TCP "
            f"connection(s){hint}"
        )


@dataclass(order=True)
class _Out:
    """A record waiting in the output queue, ordered by capture time."""

    ts: float
    seq: int
    flow: Any = None
    t: float = 0.0
    dir: str = "-"
    message: Message | None = None
    event: str | None = None
    text: str = ""
    fields: Any = None
    uuid: str | None = None


class _Capture:
    """Every TCP connection of a capture, and the output queue."""

    def __init__(self, name: str, port: int | None) -> None:
        self.name = name
        self.port = port
        self.flows: dict[tuple[Endpoint, Endpoint], _Flow] = {}
        self.closed: dict[tuple[Endpoint, Endpoint], float] = {}
        self.undecided: dict[tuple[Endpoint, Endpoint], _Flow] = {}
        self.queue: list[_Out] = []
        self.sequence = 0
        self.numbers = 0
        self.tcp_connections = 0
        self.found = 0
        self.now = 0.0
        self.packets = 0
        self.cut_short = False
        self.holed: set[_Direction] = set()  # directions waiting on missing bytes

    # Packets in.

    def packet(self, ts: float, seg: Segment) -> None:
        self.now = max(self.now, ts)
        self.packets += 1
        if self.packets % 4096 == 0:
            self._forget_closed()
        key = (seg.src, seg.dst) if seg.src < seg.dst else (seg.dst, seg.src)
        syn = seg.flags & dpkt.tcp.TH_SYN
        flow = self.flows.get(key)
        if flow is not None and syn and flow.is_new_connection(seg):
            flow.finish("replaced by a new connection on the same ports")
            flow = None
        if flow is None:
            if self.port is not None and self.port not in (seg.src[1], seg.dst[1]):
                # --port names the AudioSocket port: a connection on other ports is not
                # one, whatever its first bytes look like.
                if key not in self.closed:
                    self.tcp_connections += 1
                self.closed[key] = ts
                return
            if not syn and (key in self.closed or not seg.data):
                return  # stray packets of a connection that has ended, or began before
            self.closed.pop(key, None)
            flow = self.flows[key] = _Flow(self, key, ts)
            self.tcp_connections += 1
            if self.port is not None and self.port in (seg.src[1], seg.dst[1]):
                server = seg.dst if seg.dst[1] == self.port else seg.src
                client = seg.src if server == seg.dst else seg.dst
                flow.client, flow.server = client, server
                flow.port_match = True
            else:
                self.undecided[key] = flow
        flow.packet(ts, seg)
        # Holes of connections that have gone quiet are given up on by the capture's clock.
        for direction in [d for d in self.holed if d.flow is not flow]:
            direction.check_hole(ts)
            direction.flow.maybe_end(ts)

    def _forget_closed(self) -> None:
        for key, when in list(self.closed.items()):
            if self.now - when > CLOSED_MEMORY:
                del self.closed[key]

    def flow_ended(self, flow: _Flow) -> None:
        self.flows.pop(flow.key, None)
        self.undecided.pop(flow.key, None)
        self.closed[flow.key] = self.now
        for direction in flow.dirs.values():
            self.holed.discard(direction)

    def finish(self) -> None:
        reason = "the capture file was cut short" if self.cut_short else "the capture ended"
        for flow in sorted(self.flows.values(), key=lambda f: f.start_ts):
            flow.finish(reason)

    # Records out.

    def emit(
        self, flow: _Flow, ts: float, direction: _Direction | None = None, **fields: Any
    ) -> None:
        # Never out of order within a direction (or after a connection's last record),
        # whatever the capture's clock did.
        if direction is not None:
            ts = max(ts, direction.last_emitted)
            direction.last_emitted = ts
        else:
            ts = max(ts, flow.last_emitted)
        flow.last_emitted = max(flow.last_emitted, ts)
        self.sequence += 1
        heapq.heappush(
            self.queue,
            _Out(ts, self.sequence, flow, t=ts - flow.start_ts, uuid=flow.uuid, **fields),
        )

    def release(self, everything: bool = False) -> Iterator[Record]:
        """Queued records that nothing still pending could precede.

        A connection not yet recognised may start a call earlier than what is
        queued, and bytes behind a hole keep the time they arrived.
        """
        limit = float("inf")
        if not everything:
            for key, flow in list(self.undecided.items()):
                if flow.state != "undecided" or self.now - flow.start_ts > HOLD_LIMIT:
                    del self.undecided[key]
                else:
                    limit = min(limit, flow.start_ts)
            for direction in self.holed:
                if direction.hole_since is not None and direction.flow.state == "audiosocket":
                    limit = min(limit, direction.hole_since)
        queue = self.queue
        while queue and queue[0].ts < limit:
            out = heapq.heappop(queue)
            flow = out.flow
            if flow.number is None:
                self.numbers += 1
                flow.number = self.numbers
            yield Record(
                t=out.t,
                conn=flow.number,
                call=out.uuid or f"#{flow.number}",
                dir=out.dir,
                message=out.message,
                event=out.event,
                text=out.text,
                ts=out.ts,
                fields=out.fields or {},
            )
