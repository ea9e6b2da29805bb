"""A thin synchronous transport: sockets for ADDRESS, messages over TCP.

Each message goes out in one `sendall` (header and payload together, so
Asterisk's 5 ms payload window is never an issue), TCP_NODELAY is on, and
the receive side yields whole messages with the time each completed.
"""

from __future__ import annotations

import errno
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from audiosocket_cli.net.address import Address
from audiosocket_cli.protocol.session import Session
from audiosocket_cli.protocol.wire import Decoder, Message, RemoteProtocolError, encode

CONNECT_TIMEOUT = 2.0  # what Asterisk allows per address
# One read takes what a connection has queued. Not more: recv(n) allocates n bytes
# first, and past 128 KiB malloc maps and unmaps them on every call.
RECV_SIZE = 65536


class ConnectError(OSError):
    """Could not reach the peer: refused, unreachable or timed out."""


class PeerReset(RemoteProtocolError):
    """The peer reset the connection."""


def raise_fd_limit() -> None:
    """A thousand calls need more descriptors than the usual soft limit of 1024."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


def set_nodelay(sock: socket.socket) -> None:
    """Each message leaves at once, as Asterisk's own sockets do (TCP_NODELAY)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


def connect(address: Address, timeout: float = CONNECT_TIMEOUT) -> socket.socket:
    """Connect as Asterisk does: each address tried for `timeout` seconds."""
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConnectError(f"cannot resolve {address.host}: {exc.strerror}") from None
    last = "no address"
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        sock.settimeout(timeout)
        try:
            sock.connect(sockaddr)
        except TimeoutError:
            last = f"timed out after {timeout:g} s"
        except OSError as exc:
            last = exc.strerror or str(exc)
        else:
            sock.settimeout(None)
            set_nodelay(sock)
            return sock
        sock.close()
    raise ConnectError(f"cannot connect to {address}: {last}")


def listen(address: Address, backlog: int = 1024) -> socket.socket:
    """A listening socket; port 0 picks a free one (see getsockname())."""
    return _listen(address, backlog, reuseport=False)


def reuseport_available() -> bool:
    """Whether this system lets several listening sockets share a port (SO_REUSEPORT)."""
    option = getattr(socket, "SO_REUSEPORT", None)
    if option is None:
        return False
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, option, 1)
    except OSError:
        return False
    return True


def listen_reuseport(address: Address, backlog: int = 1024, join: bool = False) -> socket.socket:
    """listen() with SO_REUSEPORT: other processes of this user may listen on the same
    port, and the kernel spreads new connections over them.

    The first socket of such a group (`join` false) wants a free port: it is tried
    without SO_REUSEPORT first, so that a port another program listens on, even one
    sharing it the same way, is refused rather than shared. Port 0 picks a free port;
    the other sockets then join the group on the port number it got (`join` true).
    """
    if not join:
        probe = _listen(address, backlog, reuseport=False, listening=False)
        port = probe.getsockname()[1]
        probe.close()
        try:
            return _listen(Address(address.host, port), backlog, reuseport=True)
        except ConnectError:
            raise ConnectError(
                f"cannot listen on {address}: the port was taken meanwhile"
            ) from None
    return _listen(address, backlog, reuseport=True)


def _listen(
    address: Address, backlog: int, reuseport: bool, listening: bool = True
) -> socket.socket:
    try:
        infos = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConnectError(f"cannot resolve {address.host}: {exc.strerror}") from None
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
        if listening:
            sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ConnectError(f"cannot listen on {address}: {exc.strerror or exc}") from None
    return sock


def bound_address(sock: socket.socket) -> Address:
    host, port = sock.getsockname()[:2]
    return Address(host, port)


def accept(server: socket.socket) -> tuple[socket.socket, Address]:
    sock, peer = server.accept()
    set_nodelay(sock)
    return sock, Address(peer[0], peer[1])


# read_for_session: a socket read for a protocol session in a thread of its own.
STALL_FLOOR = 0.001  # a payload is given at least this long once we look (our own delays)
POLL_INTERVAL = 0.1  # how often a reader checks that it should stop
SessionEvents = Callable[[list[Any], float, "str | None"], bool]


_TCP_CLOSE = 7  # linux/tcp_states.h: TCP_CLOSE; a peer's close leaves TCP_CLOSE_WAIT (8)


def ended_by_reset(sock: socket.socket) -> bool:
    """At the end of the peer's stream (a read gave b""): whether a reset, not a close,
    ended it. A reset's error goes to whichever call meets it first: if a send took it,
    a read then finds only the end of the stream. TCP's state still tells: a close
    leaves the socket in CLOSE-WAIT, a reset in CLOSE. False where the kernel does not
    say (no TCP_INFO: not Linux)."""
    option = getattr(socket, "TCP_INFO", None)
    if option is None:
        return False
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, option, 8)
    except OSError:
        return False
    return bool(info) and info[0] == _TCP_CLOSE


def read_for_session(
    sock: socket.socket,
    session: Session,
    lock: threading.Lock,
    stopping: threading.Event,
    on_events: SessionEvents,
    on_data: Callable[[bytes | None], None] | None = None,
) -> None:
    """Read `sock` into `session` until the peer's stream ends or `stopping` is set.

    Polls no longer than the session's deadline, and ticks it only when the
    kernel had nothing for us (protocol.session: bytes that arrived in time
    are not a stall). Each batch of the session's events goes to
    `on_events(events, now, ended_stream)` (ended_stream: "close" or "reset"
    when the peer's stream ended, else None), which returns True to stop.
    `on_data` sees every read (None for a reset) before the session does.
    The session is used under `lock`, which the sending thread shares.
    """
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while not stopping.is_set():
        with lock:
            deadline = session.deadline
        wait = POLL_INTERVAL
        if deadline is not None:
            wait = min(max(deadline - time.monotonic(), STALL_FLOOR), POLL_INTERVAL)
        if not poller.poll(wait * 1000):
            now = time.monotonic()
            with lock:
                events = session.tick(now)
            if on_events(events, now, None):
                return
            continue
        data: bytes | None
        try:
            data = sock.recv(RECV_SIZE)
        except ConnectionResetError:
            data = None
        except OSError as exc:
            if stopping.is_set() or exc.errno in (errno.EBADF, errno.ENOTCONN):
                return
            raise
        now = time.monotonic()
        if not data and stopping.is_set():
            return  # our own shutdown, not the peer's doing
        if data == b"" and ended_by_reset(sock):
            data = None  # our send took the reset's error first
        if on_data is not None:
            on_data(data)
        with lock:
            events = session.reset(now) if data is None else session.receive(data, now)
        ended = None if data else ("reset" if data is None else "close")
        if on_events(events, now, ended) or ended is not None:
            return


class Connection:
    """Messages over one connected socket, synchronously."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = Decoder()
        self.closed = False

    def send(self, message: Message) -> None:
        self.sock.sendall(encode(message))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self, timeout: float | None = None) -> Iterator[tuple[float, Message]]:
        """Yield (monotonic time completed, message) until the peer closes.

        Raises TimeoutError when nothing arrives for `timeout` seconds,
        PeerReset on a reset, TruncatedMessage when the stream ends inside
        a message.
        """
        if self.closed:
            return
        self.sock.settimeout(timeout)
        decoder = self.decoder
        while True:
            try:
                data = self.sock.recv(RECV_SIZE)
            except TimeoutError:
                raise TimeoutError(f"nothing received for {timeout:g} s") from None
            except ConnectionResetError:
                raise PeerReset("connection reset by peer") from None
            except OSError as exc:
                if exc.errno in (errno.EBADF, errno.ENOTCONN) and self.closed:
                    return
                raise
            now = time.monotonic()
            if not data:
                if not self.closed:  # our own close() is not the peer's doing
                    decoder.end_of_stream()
                return
            decoder.feed(data)
            for message in decoder.messages():
                yield now, message

    def shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        """Close; a receive() blocked in another thread then ends quietly."""
        self.closed = True
        shut_and_close(self.sock)


def shut_and_close(sock: socket.socket) -> None:
    """Close a socket that another thread may be blocked reading: close() alone does
    not wake a recv() in another thread; shutdown does."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
