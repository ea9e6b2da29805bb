"""Packet captures (pcap, pcapng) read as AudioSocket calls.

dpkt reads the file formats and the packet headers (Ethernet, Linux cooked
SLL and SLL2, BSD loopback/null, raw IP; IPv4 and IPv6; TCP). This module
finds the TCP connections that carry AudioSocket, puts each direction's
bytes back in order by sequence number, and decodes them into the same
:class:`~audiosocket_cli.files.trace.Record` s a trace file gives.

- A connection is AudioSocket when its client's first bytes are a UUID
  message header (0x01 0x00 0x10), or when one end's port is `port`.
- `>` is client to server (Asterisk to the application), `<` the other way.
- Out-of-order segments wait for the bytes before them; retransmitted and
  overlapping bytes are taken once. A message is timed by the packet that
  completed it in order, which is when the receiver could read it.
- Bytes that never arrive (the capture missed them) are a gap: reported as a
  warning naming the connection and the count of bytes, then decoding starts
  again, with a fresh decoder, at the next place where well-formed messages
  follow one another (four, their audio all of one kind and length, as frames
  are; after 64 KiB without such a run, eight of any plausible length); bytes
  skipped to get there are reported too. A hole is declared a gap once the peer has
  acknowledged past it (after a short grace), after a few seconds of capture
  time without it filling, when too much waits behind it, or when the
  connection or the capture ends.
- Records of interleaved calls come out in capture-time order; connections
  are numbered in the order they started.

Memory stays bounded: per direction at most PENDING_LIMIT bytes out of order
and one incomplete message; closed connections are forgotten after a while.
A pcapng file is read with its first interface's link type (dpkt's reader
keeps only that one), which is what tcpdump and single-interface Wireshark
captures have.
"""

from __future__ import annotations

import heapq
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import dpkt

from audiosocket_cli.analysis.stats import DirectionStats
from audiosocket_cli.files.records import Record, TraceFormatError
from audiosocket_cli.net.address import Address
from audiosocket_cli.protocol.wire import (
    AUDIO_RATES,
    DTMF_DIGITS,
    Decoder,
    Kind,
    Message,
    TruncatedMessage,
)

# Link-layer header types as pcap files number them (tcpdump.org/linktypes.html).
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
RAW_ALIASES = (12, 14)  # DLT_RAW as some systems wrote it into old files
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"

UUID_HEADER = b"\x01\x00\x10"
SEQ_MOD = 1 << 32
HOLD_LIMIT = 2.0  # s of capture time output waits on a connection not yet recognised
GAP_GRACE = 0.05  # s a hole the peer has acknowledged past may still fill (capture order)
GAP_TIMEOUT = 3.0  # s a hole may stay open when nothing says the bytes are lost
PENDING_LIMIT = 1 << 20  # bytes per direction held behind a hole
UNDECIDED_LIMIT = 1 << 16  # bytes a connection may carry before it looks like AudioSocket
CLOSED_MEMORY = 120.0  # s of capture time a closed connection's stray packets are ignored
RESYNC_CHAIN = 4  # well-formed messages in a row, audio all one length, make a boundary
LOOSE_CHAIN = 8  # or this many of any plausible lengths, once LOOSE_AFTER bytes found none
LOOSE_AFTER = 1 << 16
RESYNC_MAX_AUDIO = 16384  # largest audio payload believed when looking for a boundary

Endpoint = tuple[bytes, int]
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


@dataclass
class Segment:
    """The TCP part of one captured packet."""

    src: Endpoint
    dst: Endpoint
    seq: int
    ack: int
    flags: int
    data: bytes
    length: int  # payload length on the wire (more than len(data) if the capture cut it)


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


class _Source:
    """The capture file, noticing a read cut short (a file that ends inside a packet)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.name = getattr(stream, "name", "<capture>")
        self.short = False

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        if 0 <= len(data) < size and data:
            self.short = True
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _open(stream: Any, name: str) -> tuple[Any, int]:
    if hasattr(stream, "peek"):
        head = stream.peek(4)[:4]
    else:
        start = stream.tell()
        head = stream.read(4)
        stream.seek(start)
    try:
        kind = dpkt.pcapng if head == PCAPNG_MAGIC else dpkt.pcap
        reader = kind.Reader(stream)
        return reader, int(reader.datalink())
    except (ValueError, dpkt.UnpackError, struct.error) as exc:
        raise TraceFormatError(f"{name}: not a packet capture dpkt can read: {exc}") from None


def _packets(reader: Any, capture: _Capture) -> Iterator[tuple[float, bytes]]:
    """(timestamp, link-layer bytes); a file cut short ends the capture there."""
    iterator = iter(reader)
    while True:
        try:
            ts, buf = next(iterator)
        except StopIteration:
            return
        except (ValueError, dpkt.UnpackError, struct.error):
            capture.cut_short = True  # tcpdump killed mid-write: the rest is whole
            return
        yield float(ts), bytes(buf)


def _link_decoder(linktype: int, name: str) -> Any:
    if linktype == LINKTYPE_ETHERNET:
        link = dpkt.ethernet.Ethernet
    elif linktype == LINKTYPE_LINUX_SLL:
        link = dpkt.sll.SLL
    elif linktype == LINKTYPE_LINUX_SLL2:
        link = dpkt.sll2.SLL2
    elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        link = dpkt.loopback.Loopback
    elif linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6, *RAW_ALIASES):
        link = None
    else:
        raise TraceFormatError(
            f"{name}: link type {linktype} is not supported "
            "(Ethernet, Linux cooked SLL/SLL2, loopback and raw IP are)"
        )

    def decode(buf: bytes) -> Segment | None:
        try:
            if link is None:
                version = buf[0] >> 4 if buf else 0
                net = dpkt.ip.IP(buf) if version == 4 else dpkt.ip6.IP6(buf)
            else:
                net = link(buf).data
            return _tcp_segment(net)
        # dpkt's parsers raise more than UnpackError on malformed headers (AttributeError:
        # an IPv6 extension header chain it misreads as a fragment header).
        except (dpkt.UnpackError, struct.error, IndexError, ValueError, KeyError, AttributeError):
            return None  # not a packet we can read: not ours

    return decode


def _tcp_segment(net: Any) -> Segment | None:
    if isinstance(net, dpkt.ip.IP):
        if net.mf or net.offset:
            return None  # IP fragments: TCP over them is too rare to reassemble
        tcp = net.data
        if not isinstance(tcp, dpkt.tcp.TCP):
            return None
        # A length of 0 comes from segmentation offload: the payload is what is there.
        length = net.len - net.hl * 4 - tcp.off * 4 if net.len else len(tcp.data)
        family = socket.AF_INET
    elif isinstance(net, dpkt.ip6.IP6):
        tcp = net.data
        if not isinstance(tcp, dpkt.tcp.TCP):
            return None
        extensions = sum(ext.length for ext in getattr(net, "all_extension_headers", ()))
        length = net.plen - extensions - tcp.off * 4 if net.plen else len(tcp.data)
        family = socket.AF_INET6
    else:
        return None
    data = bytes(tcp.data)
    return Segment(
        src=(_pack(family, net.src), tcp.sport),
        dst=(_pack(family, net.dst), tcp.dport),
        seq=tcp.seq,
        ack=tcp.ack,
        flags=tcp.flags,
        data=data,
        length=max(length, len(data)),
    )


def _pack(family: int, raw: bytes) -> bytes:
    # The family travels with the address so that formatting knows it.
    return bytes([family]) + raw


def format_endpoint(endpoint: Endpoint) -> str:
    raw, port = endpoint
    family = socket.AF_INET if raw[0] == socket.AF_INET else socket.AF_INET6
    return str(Address(socket.inet_ntop(family, raw[1:]), port))


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


class _Direction:
    """One direction of a connection: reassembly by sequence number, then decoding."""

    def __init__(self, flow: _Flow, src: Endpoint) -> None:
        self.flow = flow
        self.src = src
        self.arrow = "?"
        self.isn: int | None = None
        self.base: int | None = None  # sequence number of the stream's first byte
        self.midstream = False
        self.delivered = 0  # stream offset of the next byte due in order
        self.pending: dict[int, tuple[bytes, float]] = {}  # offset -> early bytes, arrival
        self.pending_bytes = 0
        self.acked = 0  # stream offset the peer has acknowledged up to
        self.fin_at: int | None = None
        self.hole_since: float | None = None
        self.ended = False
        self.closed_out = False
        self.head = b""
        self.decoder = Decoder()
        self.resync: bytearray | None = None  # bytes being searched for a message boundary
        self.resync_times: list[tuple[int, float]] = []  # where each chunk starts, its time
        self.resync_loose = False
        self.skipped = 0
        self.last_emitted = flow.start_ts
        self.audio_kinds: set[int] = set()  # what this side sent, to know a boundary again
        self.largest_audio = 0

    # Sequence numbers to stream offsets.

    def set_isn(self, isn: int) -> None:
        self.isn = isn
        self.set_base((isn + 1) % SEQ_MOD)

    def set_base(self, base: int) -> None:
        if self.base is None:
            self.base = base

    def offset(self, seq: int) -> int:
        """The stream offset of a sequence number, unwrapped near what was delivered."""
        assert self.base is not None
        diff = (seq - self.base - self.delivered) % SEQ_MOD
        if diff >= SEQ_MOD // 2:
            diff -= SEQ_MOD
        return self.delivered + diff

    # Reassembly.

    def add(self, ts: float, seq: int, data: bytes) -> None:
        if self.ended:
            return
        if self.base is None:
            self.base = seq  # no SYN seen: the stream starts where the capture does
            self.midstream = True
            if self.flow.state == "audiosocket":
                self.start_midstream()
        start = self.offset(seq)
        end = start + len(data)
        if end <= self.delivered:
            return  # a retransmission of bytes already taken
        if start < self.delivered:
            data = data[self.delivered - start :]  # overlaps what was taken: the rest only
            start = self.delivered
        if start == self.delivered:
            self.deliver(ts, data)
            self.drain(ts)
        else:
            known = self.pending.get(start)
            if known is None or len(known[0]) < len(data):
                self.pending_bytes += len(data) - (len(known[0]) if known else 0)
                self.pending[start] = (data, known[1] if known else ts)
            self.open_hole(ts)

    def drain(self, ts: float, late: bool = False) -> None:
        """Take the early bytes that are now due: at `ts`, or (late) when they came."""
        if self.pending:
            for start in sorted(self.pending):
                if start > self.delivered:
                    break
                data, arrived = self.pending.pop(start)
                self.pending_bytes -= len(data)
                if start + len(data) > self.delivered:
                    self.deliver(
                        max(arrived, ts) if not late else arrived, data[self.delivered - start :]
                    )
        if self.pending or self.acked > self.delivered or self._fin_beyond():
            # A hole stays open since the earliest bytes waiting behind it came.
            waiting = [arrived for _, arrived in self.pending.values()]
            self.open_hole(min([ts, *waiting]))
        else:
            self.hole_since = None
            self.flow.capture.holed.discard(self)

    def open_hole(self, ts: float) -> None:
        if self.hole_since is None:
            self.hole_since = ts
            self.flow.capture.holed.add(self)

    def _fin_beyond(self) -> bool:
        return self.fin_at is not None and self.fin_at > self.delivered

    def deliver(self, ts: float, data: bytes) -> None:
        self.delivered += len(data)
        if len(self.head) < len(UUID_HEADER):
            self.head += data[: len(UUID_HEADER) - len(self.head)]
        if self.flow.state == "undecided":
            self.flow.hold(ts, self, data)
        else:
            self.consume(ts, data)

    def acknowledged(self, ts: float, ack: int) -> None:
        offset = self.offset(ack)
        if self.fin_at is not None:
            offset = min(offset, self.fin_at)  # the FIN takes a sequence number, not a byte
        if offset > self.acked:
            self.acked = offset
            if offset > self.delivered:
                self.open_hole(ts)

    def fin(self, ts: float, seq: int) -> None:
        if self.base is None:
            return
        self.fin_at = self.offset(seq)
        self.acked = min(self.acked, self.fin_at)
        if self.fin_at > self.delivered:
            self.open_hole(ts)
        else:
            self.end_stream(ts)

    def check_hole(self, ts: float) -> None:
        """Declare a gap where the capture must have missed bytes; end at the FIN."""
        if self.ended:
            return
        if self.hole_since is not None:
            confirmed = self.acked > self.delivered or self._fin_beyond()
            waited = ts - self.hole_since
            if (
                (confirmed and waited >= GAP_GRACE)
                or waited >= GAP_TIMEOUT
                or self.pending_bytes > PENDING_LIMIT
            ):
                self.skip_hole(ts)
        if self.fin_at is not None and self.delivered >= self.fin_at:
            self.end_stream(ts)

    def skip_hole(self, ts: float) -> None:
        # Resume at the first bytes we have, else where the peer says the stream got to.
        target = min(self.pending) if self.pending else max(self.acked, self.fin_at or 0)
        when = min(ts, self.hole_since) if self.hole_since is not None else ts
        if not self.pending and self.fin_at is None and target == self.delivered + 1:
            # One sequence number acknowledged beyond the data: a FIN the capture missed.
            self.fin_at = self.acked = self.delivered
            self.hole_since = None
            self.flow.capture.holed.discard(self)
            return
        if target > self.delivered:
            missing = target - self.delivered
            if self.flow.state == "audiosocket":
                cut = self._cut_message()
                self.flow.warn(
                    when,
                    f"gap in the capture: {missing} bytes missing in {self.flow.label(self)} "
                    f"at stream byte {self.delivered}{cut}; decoding resumes at the next "
                    "message boundary",
                    missing=missing,
                    offset=self.delivered,
                    direction=self,
                )
                self.decoder = Decoder()
                self.resync, self.resync_times, self.skipped = bytearray(), [], 0
                self.resync_loose = False
            self.delivered = target
        self.hole_since = None
        self.drain(ts, late=True)

    def _cut_message(self) -> str:
        if self.resync is not None:
            lost = len(self.resync) + self.skipped
            return f" (the {lost} bytes before it had no message boundary)" if lost else ""
        have = self.decoder.buffered
        return f" (a message {have} bytes in is lost with it)" if have else ""

    def flush(self, ts: float, reason: str) -> None:
        """The connection ends: whatever waits behind holes is taken, the rest ends."""
        if self.ended:
            return
        while self.pending or self.acked > self.delivered or self._fin_beyond():
            before = self.delivered
            self.skip_hole(ts)
            if self.delivered == before:
                break
        self.end_stream(ts, reason)

    # Decoding.

    def start_midstream(self) -> None:
        """Bytes from the middle of a stream: find where a message begins."""
        self.resync, self.resync_times, self.skipped = bytearray(), [], 0
        self.resync_loose = False
        self.flow.midstream()

    def consume(self, ts: float, data: bytes) -> None:
        if self.resync is not None:
            # Each chunk keeps its time, to be decoded with it once a boundary is found.
            self.resync_times.append((len(self.resync), ts))
            self.resync += data
            self._search(ts, final=False)
            return
        decoder = self.decoder
        decoder.feed(data)
        for message in decoder.messages():
            kind = message.kind
            if kind in AUDIO_RATES:
                self.audio_kinds.add(kind)
                if len(message.payload) > self.largest_audio:
                    self.largest_audio = len(message.payload)
            self.flow.message(ts, self, message)

    def _search(self, ts: float, final: bool) -> None:
        """Find the next message boundary in self.resync and decode from there."""
        buf = self.resync
        assert buf is not None
        found, i = self._scan(buf, final, strict=not self.resync_loose)
        if found is None and not self.resync_loose:
            if final:
                found, i = self._scan(buf, final, strict=False)
            elif self.skipped + i > LOOSE_AFTER:
                # No run of equal frames for a long stretch: this side's messages
                # vary in length, so accept a longer run of any plausible ones.
                self.resync_loose = True
        if found is None:
            self.skipped += i
            self._drop(i)
            if final:
                self.skipped += len(buf)
                buf.clear()
                if self.skipped:
                    self.flow.warn(
                        ts,
                        f"no message boundary found in {self.flow.label(self)}: "
                        f"the last {self.skipped} bytes were skipped",
                        skipped=self.skipped,
                        direction=self,
                    )
            return
        self._drop(found)
        chunks = _split(buf, self.resync_times)
        skipped = self.skipped + found
        self.resync, self.resync_times, self.skipped = None, [], 0
        if skipped:
            self.flow.warn(
                chunks[0][0],
                f"skipped {skipped} bytes in {self.flow.label(self)} to the next message boundary",
                skipped=skipped,
                direction=self,
            )
        self.decoder = Decoder()
        for when, data in chunks:
            self.consume(when, data)

    def _scan(self, buf: bytearray, final: bool, strict: bool) -> tuple[int | None, int]:
        """(where a boundary is, or None; how far the search could rule bytes out)."""
        if strict:
            # What this side sent before the gap is what it sends after: the same
            # audio kinds, frames no larger. That keeps audio from passing for headers.
            kinds: Any = self.audio_kinds or AUDIO_RATES.keys()
            largest = self.largest_audio or RESYNC_MAX_AUDIO
        else:
            kinds, largest = AUDIO_RATES.keys(), RESYNC_MAX_AUDIO
        i = 0
        while i < len(buf):
            verdict = _chain(buf, i, final, kinds, largest, strict)
            if verdict is None:
                return None, i  # cannot tell yet: wait for more bytes
            if verdict:
                return i, i
            i += 1
        return None, i

    def _drop(self, n: int) -> None:
        """Forget the first n bytes being searched (and the times of chunks gone with them)."""
        assert self.resync is not None
        del self.resync[:n]
        times = [(start - n, when) for start, when in self.resync_times]
        while len(times) > 1 and times[1][0] <= 0:
            times.pop(0)
        if times:
            times[0] = (0, times[0][1])
        self.resync_times = times

    def head_verdict(self) -> bool | None:
        """Does this direction begin with a UUID message? None: not enough bytes yet."""
        if len(self.head) < len(UUID_HEADER):
            return None
        return self.head == UUID_HEADER

    def end_stream(self, ts: float, reason: str = "") -> None:
        """No more bytes come this way: decode what is left, say what was cut."""
        self.ended = True
        self.flow.capture.holed.discard(self)
        if self.flow.state != "audiosocket" or self.closed_out:
            return
        self.closed_out = True
        if self.resync is not None:
            self._search(ts, final=True)
            if self.resync is not None:
                return
        try:
            self.decoder.end_of_stream()
        except TruncatedMessage as exc:
            for message in self.decoder.messages():
                self.flow.message(ts, self, message)
            text = (
                f"{reason or 'the stream ended'} inside a message in {self.flow.label(self)}: {exc}"
            )
            # Cut by its own end (a FIN or a reset) it broke the protocol; cut by the
            # capture stopping, it did not.
            by_peer = reason in ("", "the connection was reset")
            if by_peer and self.flow.cut is None:
                self.flow.cut = text
            self.flow.warn(ts, text, missing=exc.missing, direction=self, violation=by_peer)


def _split(buf: bytearray, times: list[tuple[int, float]]) -> list[tuple[float, bytes]]:
    """The searched bytes back as (time, chunk), as they came."""
    chunks = []
    for n, (start, when) in enumerate(times):
        stop = times[n + 1][0] if n + 1 < len(times) else len(buf)
        if stop > start:
            chunks.append((when, bytes(buf[start:stop])))
    return chunks or [(0.0, bytes(buf))]


def _chain(
    buf: bytearray, i: int, final: bool, kinds: Any, largest: int, strict: bool
) -> bool | None:
    """Do well-formed messages follow one another from buf[i]? None: cannot tell yet.

    Strict: RESYNC_CHAIN messages whose audio all has one kind and one length,
    as frames do (a shorter last one may end the stream). Loose: LOOSE_CHAIN messages of
    any plausible lengths. Zeros (silence) would read as endless hangups, so a
    hangup or error counts only as the very last message of a stream.
    """
    end = len(buf)
    pos = i
    count = 0
    frame = (0, 0)  # the kind and length every audio message of a strict run has
    need = RESYNC_CHAIN if strict else LOOSE_CHAIN
    while count < need:
        if pos == end:
            # The stream's exact end: a shorter run will do (one message alone is no proof).
            return (count > 1 or (count == 1 and not strict)) if final else None
        if end - pos < 3:
            return False if final else None
        kind = buf[pos]
        length = (buf[pos + 1] << 8) | buf[pos + 2]
        stop = pos + 3 + length
        if kind in kinds:
            ok = 0 < length <= largest and length % 2 == 0
            if ok and strict:
                if not frame[0]:
                    frame = (kind, length)
                elif (kind, length) != frame:
                    ok = kind == frame[0] and length < frame[1] and stop == end and final
        elif kind == Kind.DTMF:
            ok = length == 1 and (stop > end or buf[pos + 3] in DTMF_DIGITS)
        elif kind == Kind.UUID:
            ok = length == 16
        elif kind in (Kind.HANGUP, Kind.ERROR):
            if length > 1 or stop < end:
                return False
            if stop > end:
                return False if final else None
            return True if final else None
        else:
            ok = False
        if not ok:
            return False
        if stop > end:
            return False if final else None
        pos = stop
        count += 1
    return True
