"""Packet captures (pcap, pcapng) read as AudioSocket calls.

dpkt reads the file formats and the packet headers (Ethernet, Linux cooked
SLL and SLL2, BSD loopback/null, raw IP; IPv4 and IPv6; TCP). This package
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

Modules: packets (the capture file, down to TCP segments), capture (read_pcap: the
connections, the records out in capture-time order), flow (one connection: is it
AudioSocket, its call's start and end), direction (one direction: reassembly, gaps,
decoding), boundary (a message boundary found again mid-stream).
"""

from audiosocket_cli.files.pcap.boundary import (
    LOOSE_AFTER,
    LOOSE_CHAIN,
    RESYNC_CHAIN,
    RESYNC_MAX_AUDIO,
)
from audiosocket_cli.files.pcap.capture import CLOSED_MEMORY, HOLD_LIMIT, read_pcap
from audiosocket_cli.files.pcap.direction import (
    GAP_GRACE,
    GAP_TIMEOUT,
    PENDING_LIMIT,
    SEQ_MOD,
    UUID_HEADER,
)
from audiosocket_cli.files.pcap.flow import UNDECIDED_LIMIT
from audiosocket_cli.files.pcap.packets import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    PCAPNG_MAGIC,
    RAW_ALIASES,
    Endpoint,
    Segment,
    format_endpoint,
)

__all__ = [
    "CLOSED_MEMORY",
    "GAP_GRACE",
    "GAP_TIMEOUT",
    "HOLD_LIMIT",
    "LINKTYPE_ETHERNET",
    "LINKTYPE_IPV4",
    "LINKTYPE_IPV6",
    "LINKTYPE_LINUX_SLL",
    "LINKTYPE_LINUX_SLL2",
    "LINKTYPE_LOOP",
    "LINKTYPE_NULL",
    "LINKTYPE_RAW",
    "LOOSE_AFTER",
    "LOOSE_CHAIN",
    "PCAPNG_MAGIC",
    "PENDING_LIMIT",
    "RAW_ALIASES",
    "RESYNC_CHAIN",
    "RESYNC_MAX_AUDIO",
    "SEQ_MOD",
    "UNDECIDED_LIMIT",
    "UUID_HEADER",
    "Endpoint",
    "Segment",
    "format_endpoint",
    "read_pcap",
]
