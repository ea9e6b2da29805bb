"""Exit statuses: the contract scripts and CI rely on (docs/output.md, "Exit status"),
and how a process ends on a signal or with its parent."""

from __future__ import annotations

import enum
import os
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


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int) -> None:
    """Ask for SIGTERM the moment the process `parent` dies (Linux's PR_SET_PDEATHSIG):
    a worker then ends its calls as a stopped run does. Where the system cannot, the
    worker's end of file on its pipe from the parent tells it all the same. If the
    parent died before we asked, exit now: there is nothing to end yet."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(ExitStatus.TERMINATED)
