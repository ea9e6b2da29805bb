"""Exit statuses: the contract scripts and CI rely on (docs/output.md, "Exit status")."""

from __future__ import annotations

import enum
import signal


class ExitStatus(enum.IntEnum):
    OK = 0
    FAILED = 1  # could not do the job: bind, connect, unreadable file
    USAGE = 2
    PROTOCOL = 3  # a peer broke the protocol
    INTERRUPTED = 130  # Ctrl-C
    TERMINATED = 143  # SIGTERM


class Terminated(BaseException):
    """SIGTERM arrived; raised in the main thread like KeyboardInterrupt."""


def raise_on_sigterm() -> None:
    """Make SIGTERM unwind the stack, so recordings are closed as on Ctrl-C."""

    def handler(signum: int, frame: object) -> None:
        raise Terminated()

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (some test runners)
        pass
