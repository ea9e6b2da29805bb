"""Plumbing the benchmarks share: the server under test as a subprocess, its CPU, statistics.

Also runnable on its own, to stand in for commands that do not exist yet when
a benchmark runs with `--self-test`:

    python benchmarks/_client.py echo-server 127.0.0.1:0     # like listen --echo
    python benchmarks/_client.py play-server 127.0.0.1:0 F   # like listen --play F
    python benchmarks/_client.py dial-client HOST:PORT F     # like dial HOST:PORT --play F
    python benchmarks/_client.py proxy-server 127.0.0.1:0 UP # like capture --upstream UP -q

Each prints `listening on HOST:PORT` first on stderr where it listens, as the
real commands do, so a benchmark drives them the same way. Everything here
talks only to the addresses it is given (127.0.0.1 in the benchmarks).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # Run from a checkout without installing: the benchmarks use the codec.
    sys.path.insert(0, str(ROOT))

LISTENING = re.compile(r"listening on (\[[^\]]+\]|[^\s:]+):(\d+)\s*$")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
FRAME = 0.020


def cli_command(*args: str) -> list[str]:
    """`audiosocket ARGS...` as a subprocess argv, run from this checkout."""
    return [sys.executable, "-m", "audiosocket_cli", *args]


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class ServerProcess:
    """A command under test: started, its port read, its stderr drained, killed.

    stderr is read by a thread all along: a server that writes a line per call
    would otherwise block once the pipe fills, and that would be measured.
    """

    def __init__(
        self,
        argv: Sequence[str],
        startup_timeout: float = 20.0,
        listens: bool = True,
        stdout: Any = None,
        cpus: set[int] | None = None,
        port: int | None = None,
    ) -> None:
        """`cpus`: the CPUs the server may run on (all when None). `port`: a command that
        prints no `listening on` line on stderr (another program, such as an echo server
        in Go) listens there, on 127.0.0.1; it is ready when the kernel lists the port as
        listening (no connection is made to find out: that would be a call)."""
        self.argv = list(argv)
        self.lines: collections.deque[str] = collections.deque(maxlen=200)
        self.line_count = 0
        self.notable: list[str] = []  # warnings, errors, tracebacks: worth reporting
        self._port_found = threading.Event()
        self.host = ""
        self.port = 0
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL if stdout is None else stdout,
            stderr=subprocess.PIPE,
            env=cli_env(),
            text=True,
            errors="replace",
            preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
        )
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        if not listens:
            # A client command (dial): nothing to wait for.
            self._port_found.set()
        deadline = time.monotonic() + startup_timeout
        while not self._port_found.wait(0.05):
            if port is not None and port in listening_ports():
                self.host, self.port = "127.0.0.1", port
                self._port_found.set()
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._reader.join(1.0)
                self.stop()
                tail = " | ".join(self.lines) or "(no output)"
                awaited = f"not listening on port {port}" if port else "no 'listening on' line"
                raise RuntimeError(
                    f"{' '.join(self.argv)}: {awaited} (exit status {self.proc.returncode}): {tail}"
                )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.rstrip("\n")
            self.line_count += 1
            self.lines.append(line)
            if not self._port_found.is_set():
                match = LISTENING.search(line)
                if match:
                    self.host, self.port = match.group(1).strip("[]"), int(match.group(2))
                    self._port_found.set()
                    continue
            lowered = line.lower()
            notable = ("warning", "error", "traceback", "exception")
            if len(self.notable) < 50 and any(word in lowered for word in notable):
                self.notable.append(line)

    def cpu_seconds(self) -> tuple[float, float]:
        return process_cpu(self.pid)

    def rss(self) -> int:
        """Resident memory (VmRSS) of the server and its live descendants, in bytes."""
        return tree_rss(self.pid)

    def stop(self, grace: float = 3.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds; the exit status."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(grace)
        self._reader.join(1.0)
        return self.proc.returncode


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as fh:
        text = fh.read()
    # The command name may hold spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def process_cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, its threads and its live descendants.

    From /proc/PID/stat (utime, stime, and cutime, cstime for reaped children).
    """
    pids = [pid, *_descendants(pid)]
    user = system = 0.0
    for one in pids:
        try:
            fields = _stat_fields(one)
        except (OSError, ValueError):
            continue
        user += (int(fields[11]) + int(fields[13])) / CLOCK_TICKS
        system += (int(fields[12]) + int(fields[14])) / CLOCK_TICKS
    return user, system


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            children[int(_stat_fields(int(entry))[1])].append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def tree_rss(pid: int) -> int:
    """VmRSS of a process and its live descendants, in bytes (0 if it has gone)."""
    total = 0
    for one in (pid, *_descendants(pid)):
        try:
            with open(f"/proc/{one}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError, IndexError):
            continue
    return total


def listening_ports() -> set[int]:
    """The TCP ports something listens on (/proc/net/tcp and tcp6, state LISTEN)."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                next(fh, None)
                for line in fh:
                    fields = line.split()
                    if len(fields) > 3 and fields[3] == "0A":
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except (OSError, ValueError):
            continue
    return ports


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing uses now, for a server told where to listen."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


_scratch: list[str] = []  # the benchmark's own parent folder, once made


def scratch_folder(prefix: str) -> str:
    """A new empty folder for what one run writes (recordings, the Go server's files).

    Every run's folder stays until the benchmark exits, then all go at once. Deleting
    thousands of files between runs would tax the next run: ext4 without a journal (the
    development machine's disk) skips, reading each, the inodes deleted in the last half
    minute or so when it allocates one, and a file's creation then costs up to 0.6 ms
    of CPU instead of 0.02."""
    import atexit
    import shutil
    import tempfile

    if not _scratch:
        _scratch.append(tempfile.mkdtemp(prefix="bench-files-"))
        atexit.register(shutil.rmtree, _scratch[0], True)
    return tempfile.mkdtemp(prefix=prefix, dir=_scratch[0])


def machine_busy() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat), to diff.

    Where the kernel counts busy time on timer ticks only (some VMs, Firecracker
    among them), it reads low for a light load that wakes and sleeps in bursts:
    a rough figure; the per-process times above are the ones to compare."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal: all but idle and iowait.
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def wait_until_quiet(patience: float, busy_below: float = 0.3, calm: float = 3.0) -> str:
    """Before a round on a shared machine: wait until all cores together have been less
    than `busy_below` of a core busy for `calm` seconds, `patience` seconds at most.
    Returns what happened, to print."""
    if patience <= 0:
        return ""
    started = time.monotonic()
    quiet_since = None
    busy = 0.0
    while time.monotonic() - started < patience:
        before = machine_busy()
        time.sleep(0.5)
        busy = (machine_busy() - before) / 0.5
        now = time.monotonic()
        if busy >= busy_below:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now - 0.5
        elif now - quiet_since >= calm:
            return f"machine quiet after {now - started:.0f} s ({busy:.2f} cores busy)"
    return f"machine still busy after {patience:.0f} s ({busy:.2f} cores busy): running anyway"


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "unknown"


# Where the process under test and its clients run. The kernel's placement changes a
# server's CPU cost twofold: woken on its client's core, it pays no cross-core
# wake-ups; moved to the other core, it pays them on every message, and the scheduler
# moves a busier process more readily than a light one. A same-run ratio against a
# floor is only fair with both placed alike.
PLACEMENTS: dict[str, tuple[set[int], set[int]] | None] = {
    # name: (the clients' CPUs, the CPUs of the process under test), None: the OS's choice
    "shared": ({0}, {0}),  # one core for all: the server's own cost, no wake-up IPIs
    "split": ({0}, {1}),  # the server on a core of its own, as a real peer would be
    "free": None,  # wherever the scheduler puts them: varies from run to run
}


def placement_cpus(name: str) -> tuple[set[int] | None, set[int] | None]:
    """(the clients' CPUs, the CPUs of the process under test), or (None, None)."""
    chosen = PLACEMENTS[name]
    if chosen is None:
        return None, None
    return chosen


def describe_placement(name: str, clients: str, server: str) -> str:
    """`split: client on CPU 0, server on CPU 1 (a core each)`."""
    ends, under_test = placement_cpus(name)
    if ends is None or under_test is None:
        return f"free: the OS places the {server} and the {clients}"
    where = "the same core" if ends == under_test else "a core each"
    return (
        f"{name}: {clients} on CPU {','.join(map(str, sorted(ends)))}, {server} on CPU"
        f" {','.join(map(str, sorted(under_test)))} ({where})"
    )


def add_placement_arguments(parser: argparse.ArgumentParser, clients: str, server: str) -> None:
    """--placement and --repeat, for a benchmark with a --floor; see placement_arguments."""
    parser.add_argument(
        "--placement",
        default=None,
        help=f"where the {server} and the {clients} run, comma-separated for several runs"
        f" (with --floor): shared (one core for all), split (the {server} on a core of its"
        " own), free (the OS decides; the ratio then varies with the scheduler)."
        " Default: shared,split with --floor, else free",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="with --floor: run each placement's pair this many times, alternating, and"
        " judge the median ratio (default 3)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each round, wait until the machine is idle (other work under 0.3 of a"
        " core for 3 s), at most this long (default 0: do not wait)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        metavar="N",
        help="run the benchmark and every process it starts (floor, server under test,"
        " clients) at this nice value: -20 (as root) keeps other work on a shared machine"
        " from moving the figures, for the floor and the tool alike (default 0)",
    )


def set_nice(nice: int) -> None:
    """This process's nice value, inherited by every process it starts. Where the kernel
    groups processes by session (Linux's autogroup, /proc/sys/kernel/sched_autogroup_enabled),
    a nice value only weighs against the same session's processes: the session's group
    gets `nice` too, until this process exits (then it is put back)."""
    import atexit

    os.setpriority(os.PRIO_PROCESS, 0, nice)
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as fh:
            if fh.read().strip() != "1":
                return
        with open("/proc/self/autogroup") as fh:
            before = fh.read().split()[-1]  # "/autogroup-21 nice 0"
    except (OSError, IndexError):
        return

    def put(value: str) -> None:
        try:
            with open("/proc/self/autogroup", "w") as fh:
                fh.write(value)
        except OSError:
            pass

    put(str(nice))
    atexit.register(put, before)


def placement_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Checks --placement and --repeat and sets args.placements (the list), args.placement
    (the first) and args.repeat; exits with a usage error on a bad value. Applies --nice
    to this process: every process it starts afterwards inherits it."""
    if args.nice:
        try:
            set_nice(args.nice)
        except OSError as exc:
            parser.error(f"--nice {args.nice}: {exc.strerror or exc} (lower than 0 needs root)")
    args.repeat = args.repeat if args.repeat is not None else (3 if args.floor else 1)
    if not 1 <= args.repeat <= 20:
        parser.error("--repeat must be 1..20")
    wanted = args.placement or ("shared,split" if args.floor else "free")
    args.placements = [p.strip() for p in wanted.split(",") if p.strip()]
    if not args.placements or any(p not in PLACEMENTS for p in args.placements):
        parser.error(f"--placement: choose from {', '.join(PLACEMENTS)}")
    if len(args.placements) > 1 and not args.floor:
        parser.error("--placement: several placements only with --floor")
    if not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2:
        # No pinning here (or one core): the OS decides, and says so in the output.
        args.placements = ["free"]
    args.placement = args.placements[0]


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def command_works(argv: Sequence[str], timeout: float = 20.0) -> bool:
    """Does `argv` (a `--help`) exit 0?"""
    try:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=cli_env(),
            timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


# Stand-ins for the real commands, for --self-test.


def _listening_socket(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host or "127.0.0.1", int(port)))
    server.listen(4096)
    bound_host, bound_port = server.getsockname()[:2]
    print(f"listening on {bound_host}:{bound_port}", file=sys.stderr, flush=True)
    return server


def echo_server(address: str) -> None:
    """Every byte straight back, from one selector loop: the least a server can do."""
    server = _listening_socket(address)
    server.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(server, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is server:
                try:
                    conn, _ = server.accept()
                except BlockingIOError:
                    continue
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.setblocking(False)
                selector.register(conn, selectors.EVENT_READ)
                continue
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                selector.unregister(sock)
                sock.close()
                continue
            # The benchmark's calls are paced, so the send buffer never fills: block if it does.
            sock.setblocking(True)
            try:
                sock.sendall(data)
            except OSError:
                pass
            sock.setblocking(False)


def proxy_server(address: str, upstream: str) -> None:
    """Every byte on to the other side, both ways, from one selector loop: the least a
    proxy can do (no decoding, no output). Each caller gets its own connection to
    `upstream`; when either side ends or fails, both are closed."""
    server = _listening_socket(address)
    server.setblocking(False)
    up_host, _, up_port = upstream.rpartition(":")
    selector = selectors.DefaultSelector()
    selector.register(server, selectors.EVENT_READ)
    peers: dict[socket.socket, socket.socket] = {}

    def close_pair(sock: socket.socket) -> None:
        for one in (sock, peers.get(sock)):
            if one is not None and one in peers:
                del peers[one]
                selector.unregister(one)
                one.close()

    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is server:
                try:
                    conn, _ = server.accept()
                except BlockingIOError:
                    continue
                try:
                    # A blocking connect: the benchmark's upstream answers at once.
                    up = socket.create_connection((up_host or "127.0.0.1", int(up_port)), 5)
                except OSError:
                    conn.close()
                    continue
                for one in (conn, up):
                    one.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    one.setblocking(False)
                    selector.register(one, selectors.EVENT_READ)
                peers[conn], peers[up] = up, conn
                continue
            other = peers.get(sock)
            if other is None:
                continue  # closed earlier in this batch of events
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if data:
                # Paced traffic: the other side's buffer never fills, so block if it does.
                other.setblocking(True)
                try:
                    other.sendall(data)
                except OSError:
                    data = b""
                else:
                    other.setblocking(False)
            if not data:
                close_pair(sock)


def paced_send(sock: socket.socket, pcm: bytes, rate: int = 8000) -> int:
    """pcm as 20 ms audio messages, the k-th at start + k x 20 ms; the count sent."""
    from audiosocket_cli.net.pacing import Pacer
    from audiosocket_cli.protocol.wire import Message

    step = rate // 50 * 2
    pacer = Pacer(FRAME)
    count = 0
    for k, offset in enumerate(range(0, len(pcm), step)):
        pacer.wait(k)
        sock.sendall(Message.audio(pcm[offset : offset + step], rate).encode())
        count += 1
    return count


def play_server(address: str, path: str) -> None:
    """Accept one call at a time; after its UUID, play `path` paced at real time."""
    from audiosocket_cli.media.audio import load_pcm

    pcm = load_pcm(path, 8000)
    server = _listening_socket(address)
    while True:
        conn, _ = server.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.recv(19)  # the UUID message; we do not need it
        try:
            paced_send(conn, pcm)
        except OSError:
            pass
        conn.close()


def dial_client(address: str, path: str) -> None:
    """Be Asterisk playing `path`: UUID in one write, paced audio, linger 1 s, close."""
    import uuid

    from audiosocket_cli.media.audio import load_pcm
    from audiosocket_cli.protocol.wire import Message

    pcm = load_pcm(path, 8000)
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=2)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(Message.for_uuid(uuid.uuid4()).encode())
    paced_send(sock, pcm)
    time.sleep(1.0)
    sock.close()


def main(argv: Sequence[str]) -> int:
    usage = (
        "usage: _client.py echo-server ADDRESS | play-server ADDRESS FILE"
        " | dial-client ADDRESS FILE | proxy-server ADDRESS UPSTREAM"
    )
    try:
        if argv[0] == "echo-server" and len(argv) == 2:
            echo_server(argv[1])
        elif argv[0] == "play-server" and len(argv) == 3:
            play_server(argv[1], argv[2])
        elif argv[0] == "dial-client" and len(argv) == 3:
            dial_client(argv[1], argv[2])
        elif argv[0] == "proxy-server" and len(argv) == 3:
            proxy_server(argv[1], argv[2])
        else:
            print(usage, file=sys.stderr)
            return 2
    except (KeyboardInterrupt, BrokenPipeError):
        return 130
    except IndexError:
        print(usage, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main(sys.argv[1:]))
