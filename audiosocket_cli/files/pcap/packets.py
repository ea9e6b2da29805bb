"""A capture file's packets: pcap or pcapng read by dpkt, each packet's link layer
(Ethernet, Linux cooked SLL and SLL2, BSD loopback/null, raw IP) and IPv4 or IPv6
header taken off, down to its TCP segment; a file cut short ends there."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

import dpkt

from audiosocket_cli.files.records import TraceFormatError
from audiosocket_cli.net.address import Address

if TYPE_CHECKING:
    from audiosocket_cli.files.pcap.capture import _Capture

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

Endpoint = tuple[bytes, int]


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
