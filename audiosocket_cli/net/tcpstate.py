"""What became of a connection after we closed it, from the kernel's own table.

Asterisk ends a call with close(): from then on its socket cannot read, and
the only trace of the application's answer is the kernel's state for the
connection. Ours stays FIN_WAIT2 while the application has not closed its
side (its socket sits in CLOSE-WAIT: the leak real applications have), turns
TIME_WAIT when it closes, and is gone after a reset (the application wrote
after our close). Linux shows that table in /proc/net/tcp and tcp6; where it
cannot be read, the answer is None ("cannot tell") and nothing is judged.
"""

from __future__ import annotations

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


def left_open(local_port: int, remote_port: int) -> bool | None:
    """After our close: True while the peer has not closed its side (our end still
    waits for its FIN), False once it has (or reset), None if we cannot tell."""
    states = connection_states(remote_port)
    if states is None:
        return None
    return states.get(local_port) in WAITING
