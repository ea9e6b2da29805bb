"""What became of a connection after we closed it, from the kernel's own table.

Asterisk ends a call with close(): from then on its socket cannot read, and
the only trace of the application's answer is the kernel's state for the
connection. Ours stays FIN_WAIT2 while the application has not closed its
side (its socket sits in CLOSE-WAIT: the leak real applications have), turns
TIME_WAIT when it closes, and is gone after a reset (the application wrote
after our close). Linux answers through netlink's sock_diag, which filters by state in the kernel: a
look costs the same however many thousands of connections (TIME_WAIT ones from
ended calls, say) the host holds. /proc/net/tcp and tcp6 are the fallback,
read whole. Where neither can be read, the answer is None ("cannot tell") and
nothing is judged.
"""

from __future__ import annotations

import socket
import struct

STATES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
}
WAITING = frozenset({"FIN_WAIT1", "FIN_WAIT2"})  # our FIN sent, the peer's not yet come
WAITING_MASK = (1 << 4) | (1 << 5)  # TCP_FIN_WAIT1, TCP_FIN_WAIT2: sock_diag's state bits
TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


def connection_states(remote_port: int) -> dict[int, str] | None:
    """Local port -> state of each TCP connection on this host whose remote port is
    `remote_port`; None where the kernel's table cannot be read."""
    found: dict[int, str] = {}
    read_any = False
    for table in TABLES:
        try:
            with open(table, encoding="ascii") as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        read_any = True
        suffix = f":{remote_port:04X}"
        for line in lines:
            fields = line.split(None, 4)
            if len(fields) < 4 or not fields[2].endswith(suffix):
                continue
            local = int(fields[1].rsplit(":", 1)[1], 16)
            found[local] = STATES.get(int(fields[3], 16), fields[3])
    return found if read_any else None


def waiting_ports(remote_port: int) -> set[int] | None:
    """The local ports of our connections to `remote_port` that still wait for the
    peer's FIN after our close (FIN_WAIT1/2); None if we cannot tell."""
    found = _sock_diag_waiting(remote_port)
    if found is not None:
        return found
    states = connection_states(remote_port)
    if states is None:
        return None
    return {port for port, state in states.items() if state in WAITING}


def left_open(local_port: int, remote_port: int) -> bool | None:
    """After our close: True while the peer has not closed its side (our end still
    waits for its FIN), False once it has (or reset), None if we cannot tell."""
    waiting = waiting_ports(remote_port)
    if waiting is None:
        return None
    return local_port in waiting


# netlink sock_diag (linux/inet_diag.h): a dump of the TCP sockets in the states asked for.
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
DIAG_REQUEST = struct.Struct("=BBBBI48x")  # family, protocol, ext, pad, states; the sockid
DIAG_PORTS = struct.Struct("!HH")  # a reply's inet_diag_msg: 4 bytes, then sport, dport


def _sock_diag_waiting(remote_port: int) -> set[int] | None:
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
    except (OSError, AttributeError):
        return None
    found: set[int] = set()
    try:
        with sock:
            sock.settimeout(1.0)
            for family in (socket.AF_INET, socket.AF_INET6):
                body = DIAG_REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, WAITING_MASK)
                header = NLMSG_HEADER.pack(
                    NLMSG_HEADER.size + len(body),
                    SOCK_DIAG_BY_FAMILY,
                    NLM_F_REQUEST | NLM_F_DUMP,
                    family,
                    0,
                )
                sock.send(header + body)
                if not _read_dump(sock, remote_port, found):
                    return None
    except OSError:
        return None
    return found


def _read_dump(sock: socket.socket, remote_port: int, found: set[int]) -> bool:
    """Reads one dump's replies into `found`; False on an error reply."""
    while True:
        data = sock.recv(65536)
        offset = 0
        while offset + NLMSG_HEADER.size <= len(data):
            length, kind, _, _, _ = NLMSG_HEADER.unpack_from(data, offset)
            if length < NLMSG_HEADER.size:
                return False
            if kind == NLMSG_DONE:
                return True
            if kind == NLMSG_ERROR:
                return False
            sport, dport = DIAG_PORTS.unpack_from(data, offset + NLMSG_HEADER.size + 4)
            if dport == remote_port:
                found.add(sport)
            offset += (length + 3) & ~3
