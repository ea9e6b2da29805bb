"""net.reactor.Reactor: sockets, timers and signals on one loop, on epoll and on the
selectors fallback (what the loop uses where there is no epoll)."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from audiosocket_cli.net.reactor import Reactor
from audiosocket_cli.status import Terminated


@pytest.fixture(params=["epoll", "selectors"])
def reactor(request: pytest.FixtureRequest) -> Iterator[Reactor]:
    made = Reactor()
    if request.param == "selectors":
        if made._epoll is not None:
            made._epoll.close()
        made._epoll = None
        made._selector = selectors.DefaultSelector()
    elif made._epoll is None:
        pytest.skip("no epoll here")
    yield made
    made.close()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    yield ours, theirs
    for sock in (ours, theirs):
        sock.close()


def test_a_reader_is_called_when_bytes_come(
    reactor: Reactor, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, theirs = pair
    got: list[bytes] = []

    def readable() -> None:
        got.append(ours.recv(100))
        if len(got) == 2:
            reactor.stop()
        else:
            theirs.sendall(b"two")

    reactor.add_reader(ours, readable)
    theirs.sendall(b"one")
    reactor.call_later(5.0, reactor.stop)  # a bound, should it hang
    reactor.run()
    assert got == [b"one", b"two"]


def test_a_removed_reader_is_not_called(
    reactor: Reactor, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, theirs = pair
    called: list[str] = []
    reactor.add_reader(ours, lambda: called.append("read"))
    reactor.remove_reader(ours)
    theirs.sendall(b"x")
    reactor.call_later(0.05, reactor.stop)
    reactor.run()
    assert called == []
    assert reactor._masks == {}


def test_a_writer_is_called_when_the_socket_takes_bytes(
    reactor: Reactor, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, theirs = pair
    order: list[str] = []

    def writable() -> None:
        order.append("write")
        reactor.remove_writer(ours)
        ours.send(b"ping")

    def readable() -> None:
        order.append(ours.recv(100).decode())
        reactor.stop()

    reactor.add_reader(ours, readable)
    reactor.add_writer(ours, writable)  # both on one socket: one registration
    assert len(reactor._masks) == 1
    reactor.call_later(0.01, lambda: theirs.sendall(theirs.recv(100)))  # echo it back
    reactor.call_later(5.0, reactor.stop)
    reactor.run()
    assert order == ["write", "ping"]


def test_a_peer_that_closes_wakes_the_reader(
    reactor: Reactor, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, theirs = pair
    got: list[bytes] = []

    def readable() -> None:
        got.append(ours.recv(100))
        reactor.forget(ours)
        reactor.stop()

    reactor.add_reader(ours, readable)
    theirs.close()
    reactor.call_later(5.0, reactor.stop)
    reactor.run()
    assert got == [b""]


def test_timers_fire_in_order_not_before_their_time(reactor: Reactor) -> None:
    start = time.monotonic()
    fired: list[tuple[str, float]] = []

    def mark(name: str) -> None:
        fired.append((name, time.monotonic()))

    reactor.call_at(start + 0.03, lambda: mark("c"))
    reactor.call_at(start + 0.01, lambda: mark("a"))
    cancelled = reactor.call_at(start + 0.02, lambda: mark("never"))
    reactor.call_at(start + 0.02, lambda: mark("b"))
    cancelled.cancel()
    reactor.call_at(start + 0.04, reactor.stop)
    reactor.run()
    assert [name for name, _ in fired] == ["a", "b", "c"]
    for (name, at), due in zip(fired, (0.01, 0.02, 0.03), strict=True):
        assert at >= start + due, name


def test_after_turn_says_when_to_come_back(
    reactor: Reactor, pair: tuple[socket.socket, socket.socket]
) -> None:
    """after_turn runs after each pass over the ready sockets; with sockets watched
    and no timer, only its answer wakes the loop again."""
    ours, theirs = pair

    def readable() -> None:
        ours.recv(100)

    reactor.add_reader(ours, readable)
    theirs.sendall(b"x")  # the first pass
    turns: list[float] = []

    def after_turn() -> float | None:
        turns.append(time.monotonic())
        if len(turns) == 3:
            reactor.stop()
        return 0.01

    reactor.after_turn = after_turn
    reactor.run()
    assert len(turns) == 3
    assert turns[2] - turns[0] >= 0.02


def test_a_socket_forgotten_and_closed_leaves_its_number_free(reactor: Reactor) -> None:
    """The kernel gives a closed socket's number to the next one: it must be watched
    anew, not taken for the old one."""
    first, peer = socket.socketpair()
    reactor.add_reader(first, lambda: None)
    number = first.fileno()
    reactor.forget(first)
    first.close()
    peer.close()
    a, b = socket.socketpair()
    try:
        # The kernel gives out the lowest free number: one of the two has the old one.
        second, peer = (a, b) if a.fileno() == number else (b, a)
        assert second.fileno() == number
        second.setblocking(False)
        got: list[bytes] = []

        def readable() -> None:
            got.append(second.recv(100))
            reactor.stop()

        reactor.add_reader(second, readable)
        peer.sendall(b"new")
        reactor.call_later(5.0, reactor.stop)
        reactor.run()
        assert got == [b"new"]
    finally:
        a.close()
        b.close()


def test_sigterm_stops_the_loop_between_callbacks(reactor: Reactor) -> None:
    """SIGTERM ends run() with Terminated, after the callback it came in, and the
    handler the process had is back."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers are only set from the main thread")  # or SIGTERM kills us
    before = signal.getsignal(signal.SIGTERM)
    ran: list[str] = []

    def kill_then_finish() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        ran.append("finished")  # the callback is not cut short

    reactor.call_later(0.01, kill_then_finish)
    reactor.call_later(5.0, lambda: ran.append("too late"))
    with pytest.raises(Terminated):
        reactor.run()
    assert ran == ["finished"]
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_busy_loop_polls_at_most_every_coalesce_and_keeps_its_timers(
    reactor: Reactor, pair: tuple[socket.socket, socket.socket]
) -> None:
    """With `coalesce`, a loop that found sockets ready more often than that over a
    window polls at most that often (each poll takes what came meanwhile); before, it
    answers at once; a timer due in between is not held."""
    ours, theirs = pair
    reactor.coalesce = 0.02  # counted over 2 s windows
    polls: list[float] = []
    poll = reactor._poll

    def counted(timeout: float | None) -> list[tuple[int, int]]:
        polls.append(time.monotonic())
        return poll(timeout)

    reactor._poll = counted  # type: ignore[method-assign]
    fired: list[float] = []

    def readable() -> None:
        ours.recv(100)
        # Held polls counted after the timer fired: before, a busy machine's stalls of
        # the loop would count too, and stop it before the timer was due.
        after = [t for t in polls if fired and t >= fired[0]]
        held = sum(1 for a, b in zip(after, after[1:], strict=False) if b - a >= 0.0195)
        if held >= 20:
            reactor.stop()
        else:
            theirs.sendall(b"more")  # always busy: the next poll finds it ready at once

    start = time.monotonic()
    due = start + 2.31  # once coalescing, between two polls
    reactor.call_at(due, lambda: fired.append(time.monotonic()))
    reactor.add_reader(ours, readable)
    theirs.sendall(b"first")
    reactor.call_later(10.0, reactor.stop)  # a bound, should it hang
    reactor.run()
    # At first nothing was held: in the first window, far more polls than the 95 or so
    # that coalescing allows (counted over the window: a busy machine may stall the
    # loop for a while, but it polls thousands of times a second when it runs).
    assert sum(1 for t in polls if t - start < 1.9) >= 300
    assert reactor.coalescing
    gaps = [b - a for a, b in zip(polls, polls[1:], strict=False)]
    assert sum(1 for g in gaps if g >= 0.0195) >= 20, gaps
    assert fired and fired[0] >= due  # it fired, its wait capping the coalesce's sleep


def test_a_loop_polled_seldom_never_coalesces(
    reactor: Reactor, pair: tuple[socket.socket, socket.socket]
) -> None:
    """Fewer busy polls than `coalesce` allows (a few calls: a message and its answer now
    and then) never turn coalescing on: each message is taken as it comes."""
    ours, theirs = pair
    reactor.coalesce = 0.01  # decided over 1 s windows: on past 100 busy polls a second
    reads: list[float] = []

    def readable() -> None:
        ours.recv(100)
        reads.append(time.monotonic())
        if reads[-1] - reads[0] > 2.3:  # two whole windows and more
            reactor.stop()

    def send() -> None:
        theirs.sendall(b"x")  # 20 messages a second
        reactor.call_later(0.05, send)

    reactor.add_reader(ours, readable)
    reactor.call_later(0.0, send)
    reactor.call_later(20.0, reactor.stop)
    reactor.run()
    assert reads[-1] - reads[0] > 2.3
    assert not reactor.coalescing


def test_a_serving_loop_leaves_what_existed_out_of_the_collector_s_scans() -> None:
    """frozen_heap(): the objects that exist when a serving loop starts are frozen (a full
    collection, which pauses every call, scans only what the calls made), and thawed when
    it ends, so that a loop run inside a longer process (a test, an API user) leaves the
    collector as it found it."""
    import gc

    from audiosocket_cli.net.reactor import frozen_heap

    assert gc.get_freeze_count() == 0
    kept = [[] for _ in range(1000)]  # tracked by the collector, as lists are
    with frozen_heap():
        frozen = gc.get_freeze_count()
        assert frozen >= 1000
        made = [[] for _ in range(1000)]  # made while serving: scanned as usual
        assert gc.get_freeze_count() == frozen
    assert gc.get_freeze_count() == 0
    assert len(kept) == len(made) == 1000
