"""`audiosocket check`: the suite against good applications (listen --echo, listen --play)
and against deliberately broken ones (tests/check_apps.py), one fault each.

The tool runs as a subprocess, as a user runs it; every assertion is on its
own output (verdicts, reasons, its own timings), never on a clock of the test.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from check_apps import APPS
from conftest import ROOT, SAMPLES

from audiosocket_cli.engines.check import CASES

PYTHON = sys.executable
ALL_IDS = [case.id for case in CASES]

# A bug of the core that `check` found, reported to the lead and not ours to fix:
# protocol/session.py's fast path reads data[1] and data[2] of a 1-byte read at a
# message boundary (IndexError), so `listen` ends the call (internal-error) when a
# caller's kind byte arrives on its own. Until it is fixed, 1.3 fails against listen.


def run_check(address: str, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "audiosocket_cli", "check", address, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )


def results(proc: subprocess.CompletedProcess) -> dict[str, dict[str, Any]]:
    out = {}
    for line in proc.stdout.splitlines():
        record = json.loads(line)
        out[record["id"]] = record
    return out


@pytest.fixture
def listen(cli_env: dict[str, str]) -> Iterator[Any]:
    """Start `audiosocket listen ARGS` on a free port; yields a function of the args."""
    procs: list[subprocess.Popen] = []

    def start(*args: str) -> str:
        proc = subprocess.Popen(
            [PYTHON, "-m", "audiosocket_cli", "listen", "127.0.0.1:0", "-q", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env,
            cwd=ROOT,
        )
        procs.append(proc)
        assert proc.stderr is not None
        first = proc.stderr.readline()
        match = re.match(r"listening on (\S+)", first)
        assert match, first
        return match.group(1)

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


# The suite itself.


def test_list_prints_every_case_one_a_line() -> None:
    proc = subprocess.run(
        [PYTHON, "-m", "audiosocket_cli", "check", "--list"], capture_output=True, text=True
    )
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ALL_IDS
    assert len(ALL_IDS) >= 29
    for section in ("1.", "2.", "3.", "4."):
        assert any(i.startswith(section) for i in ALL_IDS)


@pytest.mark.parametrize(
    "args, message",
    [
        (["127.0.0.1:9", "--case", "9.9"], "no case '9.9'"),
        ([], "ADDRESS"),
        (["not an address"], "ADDRESS"),
        (["127.0.0.1:9", "--timeout", "0"], "--timeout"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    proc = subprocess.run(
        [PYTHON, "-m", "audiosocket_cli", "check", *args], capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert proc.stdout == ""


def test_unreachable_application_exits_1_before_any_case() -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = run_check(f"127.0.0.1:{port}", "--json")
    assert proc.returncode == 1
    assert "could not be reached" in proc.stderr
    assert proc.stdout == ""


def test_full_run_against_listen_echo(listen: Any, tmp_path: Path) -> None:
    """Everything passes, in under 60 s by the tool's own count."""
    address = listen("--echo")
    junit = tmp_path / "check.xml"
    proc = run_check(address, "--json", "--junit", str(junit))
    found = results(proc)
    assert list(found) == ALL_IDS
    for record in found.values():
        assert set(record) >= {"id", "section", "name", "verdict", "reason", "evidence", "t"}
        assert record["duration"] >= 0
        # On a busy machine our own sends can be late: the tool then says its timing
        # verdict was disturbed (a warn), never that the application failed.
        assert record["verdict"] == "pass" or (
            record["verdict"] == "warn" and record["reason"].startswith("measurement disturbed")
        ), record
    assert proc.returncode == 0
    took = float(re.search(r"in ([\d.]+)s against", proc.stderr).group(1))  # type: ignore[union-attr]
    assert took < 60
    # The JUnit file: a testsuite per section, a testcase per case, fail as <failure>.
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert [s.get("name", "")[0] for s in suites] == ["1", "2", "3", "4"]
    cases = root.findall("testsuite/testcase")
    assert len(cases) == len(ALL_IDS)
    failures = root.findall("testsuite/testcase/failure")
    assert len(failures) == sum(r["verdict"] == "fail" for r in found.values())
    assert int(root.get("failures", "-1")) == len(failures)


def test_listen_play_answers_at_the_callers_rate(listen: Any) -> None:
    """A paced player (not an echo) passes the call and measurement cases too."""
    address = listen("--play", str(SAMPLES / "hello-8k.wav"), "--loop")
    proc = run_check(address, "--case", "2.1", "--case", "2.2", "--case", "2.7", "--case", "3")
    found = results(proc) if proc.stdout.startswith("{") else {}
    if not found:  # plain lines, since --json was not given
        for line in proc.stdout.splitlines():
            case_id, verdict = line.split()[:2]
            found[case_id] = {"verdict": verdict.lower(), "line": line}
    assert list(found) == ["2.1", "2.2", "2.7", "3.1", "3.2", "3.3", "3.4", "3.5", "3.6", "3.7"]
    # As in the full run: a timing verdict our own lateness disturbed is a warn that says so.
    assert all(
        r["verdict"] == "pass" or (r["verdict"] == "warn" and "measurement disturbed" in r["line"])
        for r in found.values()
    ), proc.stdout
    assert proc.returncode == 0
    assert re.match(r"2\.1 PASS an 8 kHz call \(kind 0x10\): ", proc.stdout)


# The broken applications: each fails exactly the cases about its fault.

# app: (cases run, {case: words of its reason} for the cases that must fail, and the
# same for those that must warn); every other case must pass.
FAULTS: dict[str, tuple[list[str], dict[str, str], dict[str, str]]] = {
    "good": (["1.3", "2.4", "2.8", "3.4"], {}, {}),
    "bursts": (["2.1", "3.1", "3.2"], {"3.1": "not paced at real time"}, {}),
    # Asterisk transcodes another rate: one warning, in 3.3, and the calls themselves pass.
    "always-8k": (["2.1", "2.2", "3.3"], {}, {"3.3": "at another rate"}),
    "never-closes": (
        ["2.1", "2.7", "2.8"],
        {"2.7": "did not close its side", "2.8": "did not close its side"},
        {},
    ),
    "dies-on-dtmf": (["2.1", "2.4"], {"2.4": "ended the call after the DTMF"}, {}),
    "dtmf-back": (["2.4", "3.4"], {"3.4": "dtmf message"}, {}),
    "uuid-back": (["1.1", "3.4"], {"3.4": "uuid message"}, {}),
    "split-writes": (["1.1", "3.5"], {"3.5": "after its header"}, {}),
    "big-endian": (["3.3", "3.6"], {"3.6": "big-endian"}, {}),
    "dies-on-unassigned": (
        ["2.1", "4.1"],
        {"4.1": "the application stopped accepting connections after case 4.1"},
        {},
    ),
}


@pytest.fixture(scope="module")
def broken_runs() -> Iterator[dict[str, subprocess.CompletedProcess]]:
    """Every broken application checked at once (each run is a few seconds of calls)."""
    apps = {name: APPS[name]() for name in FAULTS}

    def one(name: str) -> subprocess.CompletedProcess:
        ids = FAULTS[name][0]
        args = [arg for case_id in ids for arg in ("--case", case_id)]
        return run_check(apps[name].address, "--json", *args)

    try:
        with ThreadPoolExecutor(max_workers=len(apps)) as pool:
            yield dict(zip(apps, pool.map(one, apps), strict=True))
    finally:
        for app in apps.values():
            app.close()


@pytest.mark.parametrize("name", list(FAULTS))
def test_broken_application_fails_exactly_its_cases(
    name: str, broken_runs: dict[str, subprocess.CompletedProcess]
) -> None:
    proc = broken_runs[name]
    ids, must_fail, must_warn = FAULTS[name]
    found = results(proc)
    assert list(found) == ids, proc.stderr
    verdicts = {case_id: r["verdict"] for case_id, r in found.items()}
    expected = {i: "fail" if i in must_fail else "warn" if i in must_warn else "pass" for i in ids}
    assert verdicts == expected, found
    for case_id, words in {**must_fail, **must_warn}.items():
        assert words in found[case_id]["reason"], found[case_id]
    assert proc.returncode == (3 if must_fail else 0)


def test_strict_counts_warnings_and_junit_marks_them(tmp_path: Path) -> None:
    """With --strict a warn exits 3 and is a <failure> in JUnit; without, it is not."""
    from audiosocket_cli.engines.check import WARN, Report, Result, junit_xml
    from audiosocket_cli.net.address import Address

    report = Report(
        Address("127.0.0.1", 9),
        [Result("3.2", 3, "frame size", WARN, "not 20 ms frames", "30x 480", None, 0.0)],
        True,
        1.0,
    )
    assert not report.failed() and report.failed(strict=True)
    loose = ET.fromstring(junit_xml(report))
    assert loose.find(".//failure") is None
    assert "WARN: not 20 ms frames" in (loose.findtext(".//system-out") or "")
    assert loose.find(".//property[@name='verdict']").get("value") == "warn"  # type: ignore[union-attr]
    strict = ET.fromstring(junit_xml(report, strict=True))
    assert strict.find(".//failure").get("type") == "warn"  # type: ignore[union-attr]
