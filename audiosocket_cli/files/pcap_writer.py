"""Write what a command sent and received as a pcap file Wireshark opens cleanly.

Each stream is its own TCP connection with the call's real addresses and
ports (IPv4 or IPv6): a three-way handshake, one packet per data() call (split
only above the maximum segment size), sequence and acknowledgement numbers
that add up, and a FIN or RST at the end. The link type is raw IP, so IPv4 and
IPv6 connections share one file.

Several threads may write to one file: every packet is built and written under
one lock, so a stream's sequence numbers follow the order of the file. Each
packet goes to the file in one unbuffered write, so a killed process leaves a
valid file up to its last packet. A write error after opening never reaches
the caller: it is kept in :attr:`PcapWriter.error`, a partly written packet is
cut off again, and writing stops.
"""

from __future__ import annotations

import ipaddress
import os
import random
import struct
import threading
import time
from typing import BinaryIO

import dpkt

LINKTYPE_RAW = 101  # raw IPv4 or IPv6, told apart by the version nibble
SNAPLEN = 262144  # tcpdump's default: no packet is ever cut
MSS = 65495  # loopback's: the largest TCP payload of a 65535-byte IPv4 packet
WINDOW_SCALE = 7  # 65535 << 7 = 8 MiB of window, so unacknowledged data never fills it
ACK_AFTER = 65536  # unacknowledged bytes after which the receiver writes a bare ACK
PCAP_HEADER = struct.Struct("<IHHiIII")
RECORD_HEADER = struct.Struct("<IIII")
PCAP_MAGIC = 0xA1B2C3D4
SEQ_MOD = 1 << 32

# MSS and window scale, as a real stack puts them in SYN and SYN-ACK (NOP pads to 4 bytes).
SYN_OPTIONS = struct.pack(">BBH", 2, 4, MSS) + bytes([1, 3, 3, WINDOW_SCALE])

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class PcapWriter:
    """One pcap file; :meth:`stream` starts a TCP connection in it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.error: str | None = None
        self._lock = threading.Lock()
        self._last_ts = 0.0
        self._ip_id = random.getrandbits(16)
        # Unbuffered: each packet is one write() system call, so the file is whole
        # after every packet without a flush, and a short write can be undone.
        self._file: BinaryIO | None = open(self.path, "wb", buffering=0)  # noqa: SIM115
        self._size = 0  # bytes of whole records in the file
        try:
            self._write_all(PCAP_HEADER.pack(PCAP_MAGIC, 2, 4, 0, 0, SNAPLEN, LINKTYPE_RAW))
        except OSError:
            self._file.close()
            raise

    def stream(
        self, client: tuple[str, int], server: tuple[str, int], ts: float | None = None
    ) -> PcapStream:
        """A new connection from client to server: SYN, SYN-ACK and ACK, written at ts.

        Addresses are numeric (socket addresses; an IPv6 4-tuple or `[::1]` is
        fine). ValueError if one is not an IP address.
        """
        return PcapStream(self, client, server, ts)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                try:
                    self._file.close()
                except OSError as exc:
                    self._fail(exc)
                self._file = None

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Under self._lock.

    def _write(self, packet: bytes, ts: float | None) -> None:
        if self._file is None:
            return
        # The file's clock never runs backwards, even when two threads' packets cross.
        ts = max(time.time() if ts is None else ts, self._last_ts)
        self._last_ts = ts
        seconds, micros = divmod(round(ts * 1_000_000), 1_000_000)
        record = RECORD_HEADER.pack(seconds, micros, len(packet), len(packet))
        try:
            self._write_all(record + packet)
        except (OSError, ValueError) as exc:
            self._fail(exc)

    def _write_all(self, data: bytes) -> None:
        """One record, whole or not at all: a short write is cut off again."""
        assert self._file is not None
        written = self._file.write(data) or 0
        if written != len(data):
            try:
                os.ftruncate(self._file.fileno(), self._size)
            except OSError:
                pass
            raise OSError(f"short write ({written} of {len(data)} bytes)")
        self._size += written

    def _fail(self, exc: Exception) -> None:
        """Keep the first error, stop writing; the caller's call goes on."""
        if self.error is None:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.error = f"{self.path}: cannot write: {detail}"
        if self._file is not None:
            try:
                self._file.close()
            except (OSError, ValueError):
                pass
            self._file = None

    def _next_ip_id(self) -> int:
        self._ip_id = (self._ip_id + 1) & 0xFFFF
        return self._ip_id


class _Side:
    """One end of a connection: its address, and the next sequence number it sends."""

    def __init__(self, address: tuple[str, int], ip: IPAddress) -> None:
        self.ip = ip
        self.port = int(address[1])
        self.next_seq = random.getrandbits(32)
        self.unacked = 0  # bytes sent that the peer's packets have not acknowledged yet


class PcapStream:
    """One TCP connection in a :class:`PcapWriter`'s file."""

    def __init__(
        self,
        writer: PcapWriter,
        client: tuple[str, int],
        server: tuple[str, int],
        ts: float | None = None,
    ) -> None:
        self.writer = writer
        client_ip, server_ip = _ip(client[0]), _ip(server[0])
        if client_ip.version != server_ip.version:
            # One of them reached the other through an IPv4-mapped IPv6 address.
            client_ip, server_ip = _as_ipv6(client_ip), _as_ipv6(server_ip)
        self.sides = {">": _Side(client, client_ip), "<": _Side(server, server_ip)}
        self.ended = False
        with writer._lock:
            c, s = self.sides[">"], self.sides["<"]
            self._packet(c, s, dpkt.tcp.TH_SYN, b"", ts, ack=0, options=SYN_OPTIONS)
            c.next_seq = (c.next_seq + 1) % SEQ_MOD
            self._packet(s, c, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK, b"", ts, options=SYN_OPTIONS)
            s.next_seq = (s.next_seq + 1) % SEQ_MOD
            self._packet(c, s, dpkt.tcp.TH_ACK, b"", ts)

    def data(self, direction: str, payload: bytes, ts: float | None = None) -> None:
        """Bytes sent one way ('>' client to server, '<' back), as one packet."""
        sender, receiver = self._sides(direction)
        if not payload:
            return
        with self.writer._lock:
            if self.ended:
                return
            view = memoryview(payload)
            for start in range(0, len(view), MSS):
                chunk = bytes(view[start : start + MSS])
                self._packet(sender, receiver, dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK, chunk, ts)
                sender.next_seq = (sender.next_seq + len(chunk)) % SEQ_MOD
                sender.unacked += len(chunk)
            if sender.unacked >= ACK_AFTER:
                # A receiver that sends nothing still acknowledges, as a real one does.
                self._packet(receiver, sender, dpkt.tcp.TH_ACK, b"", ts)

    def end(self, how: str = "fin", by: str = ">", ts: float | None = None) -> None:
        """Close the connection: "fin" (both FINs, then the last ACK) or "rst", from `by`."""
        if how not in ("fin", "rst"):
            raise ValueError(f"how must be 'fin' or 'rst', not {how!r}")
        closer, other = self._sides(by)
        with self.writer._lock:
            if self.ended:
                return
            self.ended = True
            if how == "rst":
                self._packet(closer, other, dpkt.tcp.TH_RST | dpkt.tcp.TH_ACK, b"", ts)
                return
            fin_ack = dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK
            self._packet(closer, other, fin_ack, b"", ts)
            closer.next_seq = (closer.next_seq + 1) % SEQ_MOD
            self._packet(other, closer, fin_ack, b"", ts)
            other.next_seq = (other.next_seq + 1) % SEQ_MOD
            self._packet(closer, other, dpkt.tcp.TH_ACK, b"", ts)

    def _sides(self, direction: str) -> tuple[_Side, _Side]:
        if direction == ">":
            return self.sides[">"], self.sides["<"]
        if direction == "<":
            return self.sides["<"], self.sides[">"]
        raise ValueError(f"direction must be '>' or '<', not {direction!r}")

    def _packet(
        self,
        sender: _Side,
        receiver: _Side,
        flags: int,
        payload: bytes,
        ts: float | None,
        ack: int | None = None,
        options: bytes = b"",
    ) -> None:
        """Build one IP packet from sender to receiver and write it (under the lock)."""
        if flags & dpkt.tcp.TH_ACK:
            receiver.unacked = 0  # every packet with ACK acknowledges all the peer sent
        tcp = dpkt.tcp.TCP(
            sport=sender.port,
            dport=receiver.port,
            seq=sender.next_seq,
            ack=receiver.next_seq if ack is None else ack,
            flags=flags,
            # The SYN's window is never scaled; after it, 0xFFFF << WINDOW_SCALE.
            win=0xFFFF,
            opts=options,
            off=5 + len(options) // 4,
            data=payload,
        )
        if sender.ip.version == 4:
            ip: dpkt.Packet = dpkt.ip.IP(
                src=sender.ip.packed,
                dst=receiver.ip.packed,
                p=dpkt.ip.IP_PROTO_TCP,
                ttl=64,
                id=self.writer._next_ip_id(),
                df=1,
                data=tcp,
            )
            ip.len = 20 + len(tcp)
        else:
            ip = dpkt.ip6.IP6(
                src=sender.ip.packed,
                dst=receiver.ip.packed,
                nxt=dpkt.ip.IP_PROTO_TCP,
                hlim=64,
                plen=len(tcp),
                data=tcp,
            )
        self.writer._write(bytes(ip), ts)


def _ip(host: str) -> IPAddress:
    """A socket address's host as an IP address: `::1`, `[::1]`, `fe80::1%lo` all do."""
    text = str(host).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"not an IP address: {host!r}") from None


def _as_ipv6(ip: IPAddress) -> ipaddress.IPv6Address:
    if isinstance(ip, ipaddress.IPv6Address):
        return ip
    return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
