"""`--before-call CMD`: what a dialplan does before AudioSocket connects.

Many voice agents serve only a call whose UUID was registered beforehand (an
HTTP request from the dialplan, or ARI). The commands that place calls
(`dial`, `check`, `converse`, `load`) run CMD through the shell before each
call, with the call's UUID in its environment, and place the call only if it
exits 0 within BEFORE_CALL_TIMEOUT. Its output is kept for the reason when it
fails, never shown otherwise.

The environment: AUDIOSOCKET_UUID (the call's UUID), AUDIOSOCKET_CALL (the
call's number in the run, from 1), AUDIOSOCKET_ADDRESS (HOST:PORT of the
application), AUDIOSOCKET_HOST and AUDIOSOCKET_PORT.

Two ways to run it: :func:`run_before_call` blocks (one call, a case of
`check`); :class:`BeforeCall` starts it and is watched on a reactor, so that a
load generator never waits on one call's command.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
import uuid as uuid_lib

from audiosocket_cli.net.address import Address

BEFORE_CALL_TIMEOUT = 10.0  # s the command may take
KEPT_OUTPUT = 400  # bytes of its output kept for the reason


class BeforeCallFailed(Exception):
    """The command failed or timed out: the call is not placed. The text says why."""


def check_uuid_pattern(pattern: str) -> str | None:
    """Why `pattern` does not make a UUID for every call number, or None."""
    for n in (0, 1, 999_999):
        try:
            text = pattern.format(n=n)
        except (KeyError, IndexError, ValueError) as exc:
            return f"{pattern!r}: {exc!r} (the one field is {{n}}, e.g. {{n:012d}})"
        try:
            uuid_lib.UUID(text)
        except ValueError:
            return f"{pattern!r} gives {text!r} for call {n}, which is not a UUID"
    return None


class CallUUIDs:
    """The UUID of each call of a run: one given (--uuid), a pattern of the call's
    number (--uuid-pattern), or a random one."""

    def __init__(self, uuid: str | None = None, pattern: str | None = None) -> None:
        self.uuid = uuid
        self.pattern = pattern

    def __call__(self, n: int) -> str:
        if self.uuid is not None:
            return self.uuid
        if self.pattern is not None:
            return str(uuid_lib.UUID(self.pattern.format(n=n)))
        return str(uuid_lib.uuid4())


def before_call_env(uuid: str, n: int, address: Address) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AUDIOSOCKET_UUID=uuid,
        AUDIOSOCKET_CALL=str(n),
        AUDIOSOCKET_ADDRESS=str(address),
        AUDIOSOCKET_HOST=address.host,
        AUDIOSOCKET_PORT=str(address.port),
    )
    return env


def _failure(command: str, status: int | None, output: bytes, timeout: float) -> str:
    if status is None:
        why = f"did not finish within {timeout:g} s"
    elif status < 0:
        why = f"was killed by signal {-status}"
    else:
        why = f"exited {status}"
    text = output.decode("utf-8", "replace").strip().splitlines()
    last = f": {text[-1][:KEPT_OUTPUT]}" if text else ""
    return f"--before-call {command!r} {why}{last}"


def run_before_call(
    command: str, uuid: str, n: int, address: Address, timeout: float = BEFORE_CALL_TIMEOUT
) -> None:
    """Run it and wait; BeforeCallFailed unless it exits 0 in time."""
    try:
        before = BeforeCall(command, uuid, n, address, timeout)
    except OSError as exc:
        raise BeforeCallFailed(f"--before-call {command!r} could not run: {exc}") from None
    while True:
        left = before.deadline - time.monotonic()
        if left <= 0:
            raise BeforeCallFailed(before.kill())
        select.select([before.pipe], [], [], left)
        if before.read():
            break
    why = before.result()
    if why is not None:
        raise BeforeCallFailed(why)


class BeforeCall:
    """The command started, not waited for: a reactor watches `pipe` (its output, which
    ends when it exits) and calls :meth:`result`; :meth:`kill` at the deadline."""

    def __init__(
        self,
        command: str,
        uuid: str,
        n: int,
        address: Address,
        timeout: float = BEFORE_CALL_TIMEOUT,
    ) -> None:
        self.command = command
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.output = bytearray()
        self.proc = subprocess.Popen(
            command,
            shell=True,
            env=before_call_env(uuid, n, address),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        self.pipe = self.proc.stdout
        os.set_blocking(self.pipe.fileno(), False)

    def read(self) -> bool:
        """Take what it wrote; True once its output ended (it exited, or closed it)."""
        try:
            data = os.read(self.pipe.fileno(), 4096)
        except BlockingIOError:
            return False
        except OSError:
            return True
        if data:
            self.output += data
            del self.output[: max(0, len(self.output) - 4 * KEPT_OUTPUT)]
            return False
        return True

    def result(self) -> str | None:
        """After its output ended: None if it exited 0, else why not."""
        try:
            status = self.proc.wait(timeout=max(0.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            return _failure(self.command, None, bytes(self.output), self.timeout)
        finally:
            self.pipe.close()
        if status != 0:
            return _failure(self.command, status, bytes(self.output), self.timeout)
        return None

    def kill(self) -> str:
        """Past its deadline (or the run stops): end it and its children; why it failed."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass
        if not self.pipe.closed:
            self.pipe.close()
        return _failure(self.command, None, bytes(self.output), self.timeout)
