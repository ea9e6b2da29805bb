"""One thread, many connections: a selector loop with timers.

`listen` and `capture` serve a thousand calls at once; a thread per call
cannot keep echo latency low under the GIL, so every socket and every paced
send runs here. Timers fire at absolute monotonic times, which is what keeps
paced audio free of drift.

Ctrl-C and SIGTERM stop the loop between two callbacks and are raised from
run() (as KeyboardInterrupt and status.Terminated), never in the middle of a
callback: a WAV being written when the signal comes is never left half done.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import itertools
import math
import select
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from audiosocket_cli.status import Terminated


class Pollable(Protocol):
    """A socket, or a pipe: anything with a file descriptor to wait on."""

    def fileno(self) -> int: ...


Callback = Callable[[], None]


class Timer:
    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callback) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


if hasattr(select, "epoll"):
    _IN, _OUT = select.EPOLLIN, select.EPOLLOUT
else:  # the selectors fallback (not Linux) reports in the same bits
    _IN, _OUT = 1, 4


# s between a busy server's polls (listen, capture): under hundreds of calls each poll
# takes tens of sockets instead of a wake-up per message; an idle call's message is
# still taken at once, a busy one's at most this much later.
COALESCE = 0.001
BUSY_WINDOW = 0.1  # s at least, 100 coalesces at least, over which a loop's busy polls
# are counted to decide whether it coalesces


class Reactor:
    def __init__(self, coalesce: float = 0.0) -> None:
        # epoll itself where there is one: selectors' wrapping costs a share of
        # each message's time at hundreds of calls.
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        self._selector = selectors.DefaultSelector() if self._epoll is None else None
        self._masks: dict[int, int] = {}  # fd: the events it is watched for
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._readers: dict[int, Callback] = {}
        self._writers: dict[int, Callback] = {}
        self.stopped = False
        self._signal: int | None = None
        # Called after each pass over the ready sockets: output batched in a pass
        # goes out together (one write for many lines). It returns how soon it wants
        # to be called again (seconds), or None when it waits for nothing.
        self.after_turn: Callable[[], float | None] | None = None
        # A busy loop's polls at most this often (s). Once the loop has found sockets
        # ready more often than that over a window (BUSY_WINDOW), the next poll after
        # a pass that found some waits until `coalesce` after the last, never past
        # a timer: under hundreds of calls each poll then takes many sockets at
        # once, instead of waking for each message. A loop polled less often than
        # `coalesce` would gain nothing, and answers at once (a single call's reply
        # is not held).
        self.coalesce = coalesce
        self.coalescing = False  # whether it does, as last decided

    # Timers

    def call_at(self, when: float, callback: Callback) -> Timer:
        timer = Timer(when, callback)
        heapq.heappush(self._timers, (when, next(self._seq), timer))
        return timer

    def call_later(self, delay: float, callback: Callback) -> Timer:
        return self.call_at(time.monotonic() + delay, callback)

    # Sockets

    def _update(self, sock: Pollable) -> None:
        fd = sock.fileno()
        events = (_IN if fd in self._readers else 0) | (_OUT if fd in self._writers else 0)
        before = self._masks.get(fd, 0)
        if events == before:
            return
        if events:
            self._masks[fd] = events
        else:
            del self._masks[fd]
        if self._epoll is not None:
            if not before:
                self._epoll.register(fd, events)
            elif not events:
                self._epoll.unregister(fd)
            else:
                self._epoll.modify(fd, events)
            return
        assert self._selector is not None
        wanted = (selectors.EVENT_READ if events & _IN else 0) | (
            selectors.EVENT_WRITE if events & _OUT else 0
        )
        if not before:
            self._selector.register(fd, wanted)
        elif not events:
            self._selector.unregister(fd)
        else:
            self._selector.modify(fd, wanted)

    def _poll(self, timeout: float | None) -> list[tuple[int, int]]:
        """(fd, events) of the ready sockets, waiting at most `timeout` seconds."""
        if timeout is None:
            timeout = -1
        elif timeout > 0:
            # Whole milliseconds, rounded up: epoll would wake early, and spin, on less.
            timeout = math.ceil(timeout * 1e3) * 1e-3
        else:
            timeout = 0
        if self._epoll is not None:
            try:
                return self._epoll.poll(timeout)
            except InterruptedError:
                return []
        assert self._selector is not None
        return [
            (
                key.fd,
                (_IN if e & selectors.EVENT_READ else 0)
                | (_OUT if e & selectors.EVENT_WRITE else 0),
            )
            for key, e in self._selector.select(None if timeout < 0 else timeout)
        ]

    def add_reader(self, sock: Pollable, callback: Callback) -> None:
        self._readers[sock.fileno()] = callback
        self._update(sock)

    def remove_reader(self, sock: Pollable) -> None:
        if sock.fileno() >= 0 and self._readers.pop(sock.fileno(), None) is not None:
            self._update(sock)

    def add_writer(self, sock: Pollable, callback: Callback) -> None:
        self._writers[sock.fileno()] = callback
        self._update(sock)

    def remove_writer(self, sock: Pollable) -> None:
        if sock.fileno() >= 0 and self._writers.pop(sock.fileno(), None) is not None:
            self._update(sock)

    def forget(self, sock: Pollable) -> None:
        """Drop a socket before it is closed."""
        fd = sock.fileno()
        if fd < 0:
            return
        self._readers.pop(fd, None)
        self._writers.pop(fd, None)
        if self._masks.pop(fd, 0):
            try:
                if self._epoll is not None:
                    self._epoll.unregister(fd)
                elif self._selector is not None:
                    self._selector.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass

    # The loop

    def stop(self) -> None:
        self.stopped = True

    def run(self) -> None:
        """Run until stop() is called, or raise the Ctrl-C or SIGTERM that stopped it."""
        with self._signals_stop_the_loop():
            self._run()
        if self._signal == signal.SIGINT:
            raise KeyboardInterrupt
        if self._signal == signal.SIGTERM:
            raise Terminated

    @contextlib.contextmanager
    def _signals_stop_the_loop(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        # The wakeup socket makes select() return at once when a signal comes.
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)

        def on_signal(signum: int, frame: object) -> None:
            self._signal = signum
            self.stopped = True

        def drain() -> None:
            try:
                while wake_r.recv(512):
                    pass
            except OSError:
                pass

        old_fd = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        old_handlers = {
            signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)
        }
        self.add_reader(wake_r, drain)
        try:
            yield
        finally:
            for signum, handler in old_handlers.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(old_fd)
            self.forget(wake_r)
            wake_r.close()
            wake_w.close()

    def _run(self) -> None:
        timers = self._timers
        readers, writers = self._readers, self._writers
        again: float | None = None  # when after_turn wants to run again
        coalesce, busy, polled = self.coalesce, False, 0.0
        window = max(BUSY_WINDOW, 100 * coalesce)
        coalescing, busy_polls, window_end = False, 0, time.monotonic() + window
        while not self.stopped:
            now = time.monotonic()
            while timers and timers[0][0] <= now:
                timer = heapq.heappop(timers)[2]
                if not timer.cancelled:
                    timer.callback()
                if self.stopped:
                    return
            if timers:
                timeout: float | None = max(0.0, timers[0][0] - time.monotonic())
            else:
                timeout = None if self._readers or self._writers else 0.05
            if again is not None and (timeout is None or again < timeout):
                timeout = again
            if not self._masks:
                # Nothing to watch: sleep instead.
                time.sleep(timeout if timeout is not None else 0.05)
                continue
            if coalesce:
                now = time.monotonic()
                if busy and coalescing:
                    rest = polled + coalesce - now
                    if timeout is not None and rest > timeout:
                        rest = timeout
                    if rest > 0:
                        time.sleep(rest)
                        if timeout is not None:
                            timeout = max(0.0, timeout - rest)
                        now = time.monotonic()
                if now >= window_end:
                    # On: more busy polls in the window than coalescing allows. Off:
                    # under half as many, while coalescing (a steady load stays on).
                    length = now - window_end + window
                    share = 0.5 if coalescing else 1.0
                    coalescing = self.coalescing = busy_polls * coalesce > share * length
                    busy_polls, window_end = 0, now + window
                polled = now
            ready = self._poll(timeout)
            if ready:
                busy = True
                busy_polls += 1
            else:
                busy = False
            for fd, events in ready:
                # As selectors reads them: an error or hang-up wakes both sides.
                if events & ~_IN and fd in writers:
                    writers[fd]()
                if events & ~_OUT and fd in readers:
                    readers[fd]()
                if self.stopped:
                    return
            if self.after_turn is not None:
                again = self.after_turn()

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
        if self._selector is not None:
            self._selector.close()


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """For a loop that serves many calls (listen, capture, a load worker): what exists
    when it starts (modules, numpy, the configuration) lives as long as it does, so the
    collector leaves it out of its scans; a full collection, which pauses every call,
    then takes half as long. Undone at the end, for a loop inside a longer process."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
