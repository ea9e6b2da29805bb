"""The synchronous transport over real sockets on 127.0.0.1 (and ::1 where there is one)."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from audiosocket_cli.net.address import Address
from audiosocket_cli.net.transport import (
    ConnectError,
    Connection,
    PeerReset,
    accept,
    bound_address,
    connect,
    ended_by_reset,
    listen,
    read_for_session,
)
from audiosocket_cli.protocol.wire import Message, TruncatedMessage

UUID = "40325ec2-5bd7-4a4e-9a2c-6a4f6d3b1c01"
FRAME = bytes(range(256)) + bytes(range(64))


@pytest.fixture
def server() -> Iterator[socket.socket]:
    sock = listen(Address("127.0.0.1", 0))
    sock.settimeout(5)
    yield sock
    sock.close()


@pytest.fixture
def pair(server: socket.socket) -> Iterator[tuple[socket.socket, Connection]]:
    """A client socket from connect(), and the server side as a Connection."""
    client = connect(bound_address(server))
    client.settimeout(5)
    sock, _ = accept(server)
    conn = Connection(sock)
    yield client, conn
    client.close()
    conn.close()


def nodelay(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_listen_on_port_zero_picks_a_port(server: socket.socket) -> None:
    address = bound_address(server)
    assert address.host == "127.0.0.1"
    assert 0 < address.port < 65536
    assert str(address) == f"127.0.0.1:{address.port}"


def test_connect_and_accept_set_nodelay(server: socket.socket) -> None:
    client = connect(bound_address(server))
    try:
        sock, peer = accept(server)
        try:
            assert nodelay(client) != 0
            assert nodelay(sock) != 0
            assert peer == Address("127.0.0.1", client.getsockname()[1])
            assert client.gettimeout() is None  # the connect timeout is not left behind
        finally:
            sock.close()
    finally:
        client.close()


def test_connect_refused_is_one_line() -> None:
    port = free_port()
    with pytest.raises(ConnectError) as info:
        connect(Address("127.0.0.1", port), timeout=2)
    text = str(info.value)
    assert text == f"cannot connect to 127.0.0.1:{port}: Connection refused"
    assert isinstance(info.value, OSError)


def test_connect_unresolvable_host_is_one_line() -> None:
    with pytest.raises(ConnectError) as info:
        connect(Address("no-such-host.invalid", 9092), timeout=1)
    assert str(info.value).startswith("cannot resolve no-such-host.invalid: ")
    assert "\n" not in str(info.value)


def test_listen_on_a_taken_port_fails_with_one_line(server: socket.socket) -> None:
    address = bound_address(server)
    with pytest.raises(ConnectError) as info:
        listen(address)
    assert str(info.value) == f"cannot listen on {address}: Address already in use"


def test_send_is_one_encoded_message(pair: tuple[socket.socket, Connection]) -> None:
    client, conn = pair
    conn.send(Message.for_uuid(UUID))
    conn.send(Message.audio(FRAME))
    conn.send_raw(b"\x02\x00\x01x")
    expected = (
        b"\x01\x00\x10"
        + bytes.fromhex(UUID.replace("-", ""))
        + b"\x10\x01\x40"
        + FRAME
        + b"\x02\x00\x01x"
    )
    got = b""
    while len(got) < len(expected):
        got += client.recv(65536)
    assert got == expected


def test_receive_messages_with_times(pair: tuple[socket.socket, Connection]) -> None:
    client, conn = pair
    messages = [Message.for_uuid(UUID), Message.audio(FRAME), Message.dtmf("5"), Message.hangup()]
    before = time.monotonic()
    client.sendall(b"".join(m.encode() for m in messages))
    client.shutdown(socket.SHUT_WR)
    got = list(conn.receive(timeout=5))
    after = time.monotonic()
    assert [m for _, m in got] == messages
    times = [t for t, _ in got]
    assert times == sorted(times)
    assert before <= times[0] and times[-1] <= after


def test_a_message_split_across_sends(pair: tuple[socket.socket, Connection]) -> None:
    client, conn = pair
    data = Message.audio(FRAME).encode() + Message.dtmf("#").encode()
    pieces = [data[:1], data[1:3], data[3:100], data[100:323], data[323:324], data[324:]]

    sent_at: list[float] = []

    def send_slowly() -> None:
        for piece in pieces:
            sent_at.append(time.monotonic())
            client.sendall(piece)
            time.sleep(0.01)  # separate segments, separate recv()s
        client.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send_slowly)
    sender.start()
    try:
        got = list(conn.receive(timeout=5))
    finally:
        sender.join(5)
    assert [m for _, m in got] == [Message(0x10, FRAME), Message(0x03, b"#")]
    # Each message was yielded only once its last piece had been sent (causal order,
    # whatever the machine's load): the audio after the fourth piece, the DTMF the sixth.
    assert got[0][0] >= sent_at[3]
    assert got[1][0] >= sent_at[5]


def test_eof_between_messages_ends_cleanly(pair: tuple[socket.socket, Connection]) -> None:
    client, conn = pair
    client.sendall(Message.audio(FRAME).encode())
    client.close()
    assert [m for _, m in conn.receive(timeout=5)] == [Message(0x10, FRAME)]
    assert conn.decoder.buffered == 0


def test_eof_inside_a_message_raises_truncated(pair: tuple[socket.socket, Connection]) -> None:
    client, conn = pair
    client.sendall(Message.hangup().encode() + Message.audio(FRAME).encode()[:-20])
    client.close()
    received = []
    with pytest.raises(TruncatedMessage) as info:
        for _, message in conn.receive(timeout=5):
            received.append(message)
    assert received == [Message(0, b"")]
    assert (info.value.kind, info.value.have, info.value.missing) == (0x10, 303, 20)


def test_reset_raises_peer_reset(pair: tuple[socket.socket, Connection]) -> None:
    client, conn = pair
    client.sendall(Message.dtmf("1").encode())
    messages = conn.receive(timeout=5)
    assert next(messages)[1] == Message(3, b"1")
    # SO_LINGER 0: close() sends a reset instead of a FIN.
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    with pytest.raises(PeerReset, match="reset"):
        next(messages)


def test_timeout_when_nothing_arrives(pair: tuple[socket.socket, Connection]) -> None:
    _, conn = pair
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="nothing received for 0.1 s"):
        next(conn.receive(timeout=0.1))
    waited = time.monotonic() - started
    assert waited >= 0.09  # not early (a late wake-up on a busy machine is no fault)


def test_close_from_another_thread_ends_receive(pair: tuple[socket.socket, Connection]) -> None:
    client, conn = pair
    client.sendall(b"\x10\x01\x40" + FRAME[:10])  # half a message, then nothing
    outcome: list[object] = []

    def receiver() -> None:
        try:
            outcome.extend(m for _, m in conn.receive())
            outcome.append("ended")
        except Exception as exc:  # recorded, so that the assertion shows it
            outcome.append(exc)

    thread = threading.Thread(target=receiver, daemon=True)
    thread.start()
    time.sleep(0.1)
    conn.close()
    thread.join(3)
    assert not thread.is_alive()
    assert outcome == ["ended"]
    # The peer sees the connection end.
    assert client.recv(10) == b""
    # receive() on a closed connection yields nothing.
    assert list(conn.receive(timeout=1)) == []


def test_shutdown_write_sends_eof_but_keeps_reading(
    pair: tuple[socket.socket, Connection],
) -> None:
    client, conn = pair
    conn.shutdown_write()
    assert client.recv(10) == b""
    client.sendall(Message.hangup().encode())
    client.close()
    assert [m for _, m in conn.receive(timeout=5)] == [Message(0, b"")]


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_loopback() -> None:
    server = listen(Address("::1", 0))
    try:
        address = bound_address(server)
        assert address.host == "::1"
        assert str(address) == f"[::1]:{address.port}"
        client = connect(address)
        try:
            sock, peer = accept(server)
            conn = Connection(sock)
            try:
                assert client.family == socket.AF_INET6
                assert nodelay(client) != 0 and nodelay(sock) != 0
                assert peer.host == "::1"
                client.sendall(Message.for_uuid(UUID).encode())
                client.close()
                assert [m for _, m in conn.receive(timeout=5)] == [Message.for_uuid(UUID)]
            finally:
                conn.close()
        finally:
            client.close()
    finally:
        server.close()


# A reset whose error a send took first.


def _connected_pair() -> tuple[socket.socket, socket.socket]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        ours = socket.create_connection(listener.getsockname())
        theirs, _ = listener.accept()
    return ours, theirs


def _reset(theirs: socket.socket) -> None:
    # A process that dies with our bytes unread, or SO_LINGER 0: its close is a reset.
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    theirs.close()


@pytest.mark.skipif(not hasattr(socket, "TCP_INFO"), reason="the kernel's TCP state: Linux")
def test_a_reset_a_send_met_first_is_still_told_from_a_close() -> None:
    import select

    ours, theirs = _connected_pair()
    with ours:
        _reset(theirs)
        assert select.select([ours], [], [], 5.0)[0]
        with pytest.raises(ConnectionResetError):
            ours.send(b"\x10\x00\x02\x00\x00")  # takes the reset's error
        assert ours.recv(100) == b""  # a read finds only the end of the stream
        assert ended_by_reset(ours)
    ours, theirs = _connected_pair()
    with ours:
        theirs.close()  # a clean close
        assert ours.recv(100) == b""
        assert not ended_by_reset(ours)


@pytest.mark.skipif(not hasattr(socket, "TCP_INFO"), reason="the kernel's TCP state: Linux")
def test_read_for_session_reports_a_reset_a_send_met_first() -> None:
    import select

    from audiosocket_cli.protocol.session import Ended, Role, Session

    ours, theirs = _connected_pair()
    with ours:
        theirs.sendall(Message.for_uuid("6f1c2a4e-0d5b-4f7a-9c1e-2b3d4e5f6a7b").encode())
        _reset(theirs)
        assert select.select([ours], [], [], 5.0)[0]
        session = Session(Role.APPLICATION, started=time.monotonic())
        with pytest.raises(ConnectionResetError):
            ours.send(b"\x10\x00\x02\x00\x00")
        seen: list[tuple[list[object], str | None]] = []

        def on_events(events: list[object], now: float, ended: str | None) -> bool:
            seen.append((events, ended))
            return False

        read_for_session(ours, session, threading.Lock(), threading.Event(), on_events)
        assert seen[-1][1] == "reset"
        assert session.ended is not None and session.ended.ended == "caller-reset"
        assert any(isinstance(e, Ended) for events, _ in seen for e in events)
