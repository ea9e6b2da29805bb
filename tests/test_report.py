"""`audiosocket report`: the HTML page of a trace file, a raw dump and a packet capture.

Pages are checked twice: their content (header facts, diagnoses, embedded
WAVs decoded with soundfile, nothing loaded from the network) and in real
headless Chromium: a screenshot whose pixels must show the plots in their
colours, and a copy of the page with a small script that records every
script or resource error and the state of each <audio> element.
Chromium tests are skipped where chromium is missing, except in CI.
"""

from __future__ import annotations

import base64
import csv
import io
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import dpkt
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner, Result

from audiosocket_cli.cli import cli
from audiosocket_cli.engines.load import CSV_COLUMNS
from audiosocket_cli.engines.report import (
    COLORS,
    LOAD_COLORS,
    REF_COLOR,
    log_tick_values,
    plain_number,
    read_load_csv,
)
from audiosocket_cli.files.trace import read_records
from audiosocket_cli.protocol.wire import Message

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
UUID = "40325ec2-5bd7-4a4e-9a2c-6a4f6d3b1c01"
PCAP_UUID = "11111111-2222-4333-8444-555555555555"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["report", *args], catch_exceptions=False)


def make_pcap(path: Path) -> None:
    """A call over TCP: 60 frames of speech with a 300 ms stall, DTMF, an echo, a hangup."""
    pcm = sf.read(SAMPLES / "hello-8k.wav", dtype="int16")[0].tobytes()
    client, server = ("10.0.0.1", 40001), ("10.0.0.2", 9092)
    seq = {True: 1000, False: 500_000}
    packets: list[tuple[float, bytes]] = []

    def packet(ts: float, from_client: bool, flags: int, data: bytes = b"") -> None:
        src, dst = (client, server) if from_client else (server, client)
        tcp = dpkt.tcp.TCP(
            sport=src[1],
            dport=dst[1],
            seq=seq[from_client],
            ack=seq[not from_client],
            flags=flags,
            win=65535,
            data=data,
        )
        ip = dpkt.ip.IP(
            src=socket.inet_aton(src[0]), dst=socket.inet_aton(dst[0]), p=6, ttl=64, data=tcp
        )
        eth = dpkt.ethernet.Ethernet(
            src=b"\x02\x00\x00\x00\x00\x01", dst=b"\x02\x00\x00\x00\x00\x02", data=ip
        )
        packets.append((ts, bytes(eth)))
        seq[from_client] += len(data) + (1 if flags & (dpkt.tcp.TH_SYN | dpkt.tcp.TH_FIN) else 0)

    t0 = 1_700_000_000.0
    ack, psh = dpkt.tcp.TH_ACK, dpkt.tcp.TH_PUSH
    packet(t0, True, dpkt.tcp.TH_SYN)
    packet(t0 + 0.0001, False, dpkt.tcp.TH_SYN | ack)
    packet(t0 + 0.0002, True, ack)
    packet(t0 + 0.001, True, ack | psh, Message.for_uuid(PCAP_UUID).encode())
    t = t0 + 0.02
    for k in range(60):
        frame = Message.audio(pcm[6400 + 320 * k : 6400 + 320 * (k + 1)])
        t += 0.32 if k == 30 else 0.02  # the stall: one 320 ms gap
        packet(t, True, ack | psh, frame.encode())
        packet(t + 0.001, False, ack | psh, frame.encode())  # the application echoes
        if k == 40:
            packet(t + 0.005, True, ack | psh, Message.dtmf("7").encode())
    packet(t + 0.01, False, ack | psh, Message.hangup().encode())
    packet(t + 0.011, False, dpkt.tcp.TH_FIN | ack)
    packet(t + 0.012, True, dpkt.tcp.TH_FIN | ack)
    with open(path, "wb") as f:
        writer = dpkt.pcap.Writer(f, snaplen=65535, linktype=1)
        for ts, data in packets:
            writer.writepkt(data, ts=ts)


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One page per kind of input, and one of two inputs together."""
    folder = tmp_path_factory.mktemp("report")
    make_pcap(folder / "call.pcap")
    inputs = {
        "trace": [str(SAMPLES / "call.trace")],
        "raw": [str(SAMPLES / "call.raw")],
        "pcap": [str(folder / "call.pcap")],
        "two": [str(SAMPLES / "call.trace"), str(SAMPLES / "call.raw")],
    }
    out = {}
    for name, args in inputs.items():
        page = folder / f"{name}.html"
        result = run(*args, "-o", str(page))
        assert result.exit_code == 0, result.output
        assert f"wrote {page}" in result.output
        out[name] = page
    return out


def embedded_wavs(page: str) -> list[tuple[np.ndarray, int]]:
    found = re.findall(r'src="data:audio/wav;base64,([A-Za-z0-9+/=]+)"', page)
    return [sf.read(io.BytesIO(base64.b64decode(b)), dtype="int16") for b in found]


# The page's content.


def test_trace_page_header_diagnoses_and_audio(pages: dict[str, Path]) -> None:
    page = pages["trace"].read_text()
    assert f"Call {UUID}" in page
    assert "127.0.0.1:40000" in page  # the peer, from call-start
    assert "8000 Hz" in page
    assert "2.021 s" in page  # the duration
    assert re.search(r"<dt>ended</dt><dd>[a-z-]*hangup", page)
    assert "dtmf=5" in page
    assert "None: nothing known to go wrong was seen." in page
    assert page.count("<svg") == 2  # the timeline and the histograms
    # The embedded audio is each direction's audio, sample for sample.
    with open(SAMPLES / "call.trace", "rb") as f:
        records = list(read_records(f, "call.trace"))
    for d, (samples, rate) in zip(">", embedded_wavs(page), strict=False):
        sent = b"".join(
            r.message.payload for r in records if r.message and r.message.is_audio and r.dir == d
        )
        assert rate == 8000
        assert samples.tobytes() == sent
    assert len(embedded_wavs(page)) == 2


def test_pages_load_nothing_from_the_network(pages: dict[str, Path]) -> None:
    for page in pages.values():
        text = page.read_text()
        assert not re.search(r'(src|href)="(https?:)?//', text)
        assert "<script" not in text and "@import" not in text and "url(http" not in text
        assert page.stat().st_size < 1_000_000


def test_raw_dump_is_one_direction_without_verdict_on_the_other(pages: dict[str, Path]) -> None:
    page = pages["raw"].read_text()
    assert f"Call {UUID}" in page
    assert "one-way" not in page  # a raw dump holds one direction: no one-way-audio verdict
    assert len(embedded_wavs(page)) == 1
    assert "&lt; to Asterisk</span>: no audio" in page


def test_pcap_page_shows_addresses_gap_and_dtmf(pages: dict[str, Path]) -> None:
    page = pages["pcap"].read_text()
    assert f"Call {PCAP_UUID}" in page
    assert "10.0.0.1:40001" in page and "10.0.0.2:9092" in page
    assert re.search(r'<span class="code">gap</span>.*1 gap\(s\) over 200 ms', page)
    assert "the longest 320 ms" in page
    assert "dtmf=7" in page
    (into, _), (back, _) = embedded_wavs(page)
    assert into.size == back.size == 60 * 160  # the echo: the same audio both ways


def test_several_inputs_get_a_table_linking_each_call(pages: dict[str, Path]) -> None:
    page = pages["two"].read_text()
    links = re.findall(r'<a href="#(call-\d+)" title="([^"]+)">', page)
    assert [title for _, title in links] == [UUID, UUID]
    for anchor, _ in links:
        assert f'<section id="{anchor}">' in page
    # The table has the trace --summary figures: messages, bytes, audio seconds, gaps.
    assert "<td>102</td><td>32323</td><td>2.00</td><td>8000</td><td>5</td>" in page
    assert "20.0/20.0" in page
    # The two figures' ids do not collide in one page.
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))


def test_long_audio_goes_beside_the_page(tmp_path: Path) -> None:
    page = tmp_path / "long.html"
    result = run(str(SAMPLES / "call.trace"), "-o", str(page), "--embed-audio", "1")
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert "data:audio/wav" not in text
    wavs = sorted((tmp_path / "long-audio").glob("*.wav"))
    assert [w.name for w in wavs] == [f"{UUID}.in.wav", f"{UUID}.out.wav"]
    for wav in wavs:
        assert f'href="long-audio/{wav.name}"' in text
        assert sf.info(str(wav)).frames == 16000
    assert not list(tmp_path.glob(".report-*"))  # the work folder is gone


# Failures: one line, exit 1.


@pytest.mark.parametrize(
    ("make", "output", "message"),
    [
        (None, "out.html", "nothere.trace: no such file"),
        ("trace", "missing/out.html", "cannot write: no such directory"),
        ("trace", ".", "is a directory"),
        ("badversion", "out.html", "trace version 99 is not supported"),
        ("empty", "out.html", "no AudioSocket messages"),
        ("csv-no-rows", "out.html", "run.csv line 2: a load stats CSV with no rows"),
        ("csv-bad-number", "out.html", "run.csv line 3: send_late_p99_ms is 'fast', not a number"),
        ("csv-short-row", "out.html", "run.csv line 2: 3 fields, the header has"),
    ],
    ids=[
        "no-input",
        "no-output-dir",
        "output-is-dir",
        "bad-trace",
        "empty",
        "csv-no-rows",
        "csv-bad-number",
        "csv-short-row",
    ],
)
def test_failures_are_one_line(
    tmp_path: Path, cli_env: dict[str, str], make: str | None, output: str, message: str
) -> None:
    source = tmp_path / "nothere.trace"
    if make == "trace":
        source = SAMPLES / "call.trace"
    elif make == "badversion":
        source = tmp_path / "bad.trace"
        source.write_text(json.dumps({"format": "audiosocket-trace", "version": 99}) + "\n")
    elif make == "empty":
        source = tmp_path / "empty.raw"
        source.write_bytes(b"")
    elif make and make.startswith("csv-"):
        source = tmp_path / "run.csv"
        header = ",".join(CSV_COLUMNS) + "\n"
        good = ",".join("0.5" for _ in CSV_COLUMNS) + "\n"
        bad = good.split(",")
        bad[CSV_COLUMNS.index("send_late_p99_ms")] = "fast"
        rows = {
            "csv-no-rows": "",
            "csv-bad-number": good + ",".join(bad),
            "csv-short-row": "0,0.5,0.5\n",
        }[make]
        source.write_text(header + rows)
    proc = subprocess.run(
        [sys.executable, "-m", "audiosocket_cli", "report", str(source), "-o", output],
        cwd=tmp_path,
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("audiosocket: error: "), proc.stderr
    assert message in lines[0]
    assert not (tmp_path / "out.html").exists()


def test_help_imports_nothing_heavy(cli_env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "audiosocket_cli", "report", "--help"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    assert "Examples:" in proc.stdout and "audiosocket report call.trace" in proc.stdout
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "audiosocket_cli" in imported
    assert imported & {"numpy", "matplotlib", "soundfile", "rich", "dpkt"} == set()


# In a real browser.

PROBE = """<script>
window.__errors = [];
window.addEventListener("error", function (e) {
  var t = e.target;
  window.__errors.push(t && t !== window ? "resource " + (t.src || t.href || t.tagName).slice(0, 60)
                                         : "script " + e.message);
}, true);
window.addEventListener("load", function () { setTimeout(function () {
  var audio = [].map.call(document.querySelectorAll("audio"), function (a) {
    return {ready: a.readyState, duration: a.duration, error: a.error ? a.error.code : 0};
  });
  var p = document.createElement("pre");
  p.id = "probe";
  p.textContent = JSON.stringify({errors: window.__errors, audio: audio,
                                  svgs: document.querySelectorAll("svg").length});
  document.body.appendChild(p);
}, 300); });
</script>"""


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--mute-audio",
            f"--user-data-dir={tmp / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )


def colour_mask(image: np.ndarray, colour: str, tolerance: int = 40) -> np.ndarray:
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return (np.abs(image[:, :, :3].astype(int) - rgb) <= tolerance).all(axis=2)


@pytest.mark.parametrize("name", ["trace", "raw", "pcap"])
def test_page_in_chromium(pages: dict[str, Path], name: str, tmp_path: Path) -> None:
    import matplotlib.image

    page = pages[name]
    # Errors and audio, from a copy of the page with the probe script first in <head>.
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("<head>", "<head>" + PROBE, 1))
    proc = chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", probed.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout)
    assert found, proc.stdout[-2000:]
    probe = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert probe["errors"] == []
    assert probe["svgs"] == 2
    expected = {"trace": [2.0, 2.0], "raw": [2.0], "pcap": [1.2, 1.2]}[name]
    assert [round(a["duration"], 2) for a in probe["audio"]] == expected
    assert all(a["error"] == 0 and a["ready"] >= 1 for a in probe["audio"])
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "Uncaught" in line or "ERROR:CONSOLE" in line]

    # What it looks like: the plots are drawn, in each direction's colour, across the axis.
    shot = tmp_path / "shot.png"
    proc = chromium(tmp_path, "--screenshot=" + str(shot), "--window-size=1200,2400", page.as_uri())
    assert shot.exists(), proc.stderr[-2000:]
    image = (matplotlib.image.imread(str(shot)) * 255).astype(np.uint8)
    assert image.shape[:2] == (2400, 1200)
    background = (image[:, :, :3] > 245).all(axis=2).mean()
    assert 0.5 < background < 0.97  # mostly white page, but not blank
    sides = [">", "<"] if name != "raw" else [">"]
    for d in sides:
        mask = colour_mask(image, COLORS[d])
        assert mask.sum() > 20_000, d  # level line, waveform, gaps, histograms
        columns = np.flatnonzero(mask.any(axis=0))
        assert columns.max() - columns.min() > 900, d  # drawn across the time axis
        rows = np.flatnonzero(mask.sum(axis=1) > 50)
        bands = np.count_nonzero(np.diff(rows) > 20) + 1
        assert bands >= 3, d  # separate plots: waveform, level/gaps, histograms
    if name == "raw":
        assert colour_mask(image, COLORS["<"]).sum() < 2000  # nothing drawn for '<'
    assert colour_mask(image, REF_COLOR, 30).sum() > 300  # the 20 ms line


def test_a_second_rate_gets_its_own_audio(tmp_path: Path) -> None:
    raw = tmp_path / "two-rates.raw"
    tone = (np.sin(np.arange(8000) / 5) * 8000).astype("<i2").tobytes()
    wire = b"".join(Message.audio(tone[i : i + 320]).encode() for i in range(0, 16000, 320))
    wire += b"".join(Message.audio(tone[i : i + 640], 16000).encode() for i in range(0, 16000, 640))
    raw.write_bytes(wire)
    page = tmp_path / "rates.html"
    assert run(str(raw), "-o", str(page)).exit_code == 0
    text = page.read_text()
    assert "8000 Hz, 16000 Hz" in text
    (first, rate1), (second, rate2) = embedded_wavs(text)
    assert (rate1, first.size, rate2, second.size) == (8000, 8000, 16000, 8000)


# Log axes: major ticks only, plain numbers.

PLAIN = re.compile(r"^\d{1,3}(,\d{3})*(\.\d+)?$")  # 0.1, 20, 1,000


@pytest.mark.parametrize(
    ("low", "high", "room"),
    [(0.08, 100, 6), (0.08, 20_000, 6), (0.7, 40, 7), (0.7, 400, 7), (0.7, 400, 20),
     (0.7, 2e6, 7), (0.08, 1e9, 6), (0.7, 1.6, 7)],
)  # fmt: skip
def test_log_tick_values_are_round_and_fit(low: float, high: float, room: int) -> None:
    ticks = log_tick_values(low, high, room)
    assert 1 <= len(ticks) <= room
    assert all(low <= t <= high for t in ticks)
    for tick in ticks:
        mantissa = tick / 10 ** np.floor(np.log10(tick) + 1e-9)
        assert round(mantissa, 6) in (1, 2, 3, 5), tick
    assert all(PLAIN.match(plain_number(t)) for t in ticks)


def test_log_tick_values_of_a_narrow_range() -> None:
    """A range holding no 1, 2 or 5 times a power of ten still gets round labels."""
    assert [plain_number(t) for t in log_tick_values(24.6, 25.4, 6)] == [
        "24.6",
        "24.8",
        "25",
        "25.2",
    ]
    assert plain_number(2_000_000) == "2,000,000" and plain_number(0.05) == "0.05"


def _log_axes(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Each log axis of each figure a report draws, as drawn: title, labels, overlap."""
    import audiosocket_cli.engines.report.conversation_plots as conversation_plots
    import audiosocket_cli.engines.report.plots as report

    axes: list[dict[str, Any]] = []
    svg = report._svg

    def drawn(fig: Any, prefix: str) -> str:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            if ax.get_yscale() != "log":
                continue
            labels = [t for t in ax.get_yticklabels() if t.get_text()]
            boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.y0)
            axes.append(
                {
                    "title": ax.get_title(loc="left"),
                    "labels": [t.get_text() for t in labels],
                    "minor": [t.get_text() for t in ax.yaxis.get_minorticklabels()],
                    "minor_ticks": len(ax.yaxis.get_minorticklocs()),
                    "overlap": any(a.y1 > b.y0 for a, b in itertools.pairwise(boxes)),
                }
            )
        return svg(fig, prefix)

    monkeypatch.setattr(report, "_svg", drawn)
    monkeypatch.setattr(conversation_plots, "_svg", drawn)
    return axes


def test_log_axes_label_major_ticks_as_plain_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every log axis (time between messages, both histograms' counts), on calls whose
    counts crowd into a narrow range (every message one size: one bar of 25), and on a
    capture with a stall: a few labels, plain numbers, no minor ones, none overlapping."""
    raw = tmp_path / "short.raw"
    raw.write_bytes(b"".join(Message.audio(bytes(320)).encode() for _ in range(25)))
    make_pcap(tmp_path / "call.pcap")
    axes = _log_axes(monkeypatch)
    page = tmp_path / "page.html"
    inputs = (str(raw), str(SAMPLES / "call.trace"), str(tmp_path / "call.pcap"))
    assert run(*inputs, "-o", str(page)).exit_code == 0
    # Per direction: gaps, and the jitter and size counts where there is audio (a raw
    # dump has one direction only).
    assert len(axes) == 3 * 2 * 3 - 2
    for axis in axes:
        assert axis["minor"] == [] and axis["minor_ticks"] == 0, axis
        labels = axis["labels"]
        assert 2 <= len(labels) <= 8, axis
        assert all(PLAIN.match(label) for label in labels), axis
        assert not axis["overlap"], axis
    # The single bar of 25 messages stands on an axis from 1: 1, 2, 5, 10, 20 or so.
    sizes = [a for a in axes if "message sizes" in str(a["title"])]
    assert sizes[0]["labels"][0] == "1" and "10" in sizes[0]["labels"]
    gaps = [a for a in axes if "time between" in str(a["title"])]
    assert all({"1", "10", "100"} <= set(a["labels"]) for a in gaps)
    # Nothing in scientific notation anywhere on the page (matplotlib's minor labels
    # were "2.46 x 10^1", its major ones "10^2").
    text = page.read_text()
    assert "\u00d7" not in text and "\\times" not in text and "mathdefault" not in text


# A load run's CSV (`load --stats`), made by a real run against `listen --echo`.


@pytest.fixture(scope="module")
def load_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four 1 s echoed calls in 0.5 s periods: about 2 s of load, 4 rows."""
    folder = tmp_path_factory.mktemp("load")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    listener = subprocess.Popen(
        [sys.executable, "-m", "audiosocket_cli", "listen", "127.0.0.1:0", "--echo", "-q"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stderr is not None
        first = listener.stderr.readline()
        assert first.startswith("listening on "), first
        address = first.split()[-1]
        proc = subprocess.run(
            [
                sys.executable, "-m", "audiosocket_cli", "load", address,
                "--calls", "4", "--rate", "4", "--duration", "1", "--total", "4",
                "--period", "0.5", "--workers", "1", "--stats", str(folder / "run.csv"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
    finally:
        listener.terminate()
        listener.wait(timeout=10)
    return folder / "run.csv"


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_load_csv_gets_its_section_before_the_calls(load_csv: Path, tmp_path: Path) -> None:
    page = tmp_path / "mixed.html"
    result = run(str(load_csv), str(SAMPLES / "call.trace"), "-o", str(page))
    assert result.exit_code == 0, result.output
    assert "(1 load run(s), 1 call(s)" in result.output
    text = page.read_text()
    section = text.index('<section id="load-1">')
    assert f"<h2>Load run {load_csv}</h2>" in text
    assert section < text.index('class="calls"') < text.index('<section id="call-1">')
    assert text.count("<svg") == 3  # the load run's plots, the call's timeline and histograms
    plots = text[section : text.index("</section>", section)]
    for title in (
        "calls up",
        "messages per second",
        "our send lateness (ms)",
        "time to first audio (ms)",
        "echo round trip (ms)",
    ):
        assert title in plots
    # The summary's numbers are the CSV's.
    rows = csv_rows(load_csv)
    last = rows[-1]
    sent = [r for r in rows if r["send_late_p99_ms"]]  # empty: nothing sent that period
    worst = max(sent, key=lambda r: float(r["send_late_p99_ms"]))
    expected = {
        "duration": f"{float(last['t']):.3f} s",
        "periods": str(len(rows)),
        "calls total": "4",
        "ended normally": last["total_ended"],
        "failed": "0",
        "most calls up": str(max(int(r["active"]) for r in rows)),
        "worst send lateness p99": (
            f"{float(worst['send_late_p99_ms']):.3f} ms (period ending {float(worst['t']):.3f} s)"
        ),
        "median of the period p50s: send lateness": (
            f"{float(np.median([float(r['send_late_p50_ms']) for r in sent])):.3f} ms"
        ),
    }
    for label, value in expected.items():
        assert f'<th class="l">{label}</th><td>{value}</td>' in plots, label
    assert last["total_ended"] == "4"
    ids = re.findall(r'\bid="([^"]+)"', text)
    assert len(ids) == len(set(ids))


def test_load_csv_empty_cells_are_gaps_not_zeros(load_csv: Path) -> None:
    rows = csv_rows(load_csv)
    with open(load_csv, "rb") as f:
        parsed = read_load_csv(f, "run.csv", 1)
    assert parsed.rows == len(rows)
    ttfa = parsed.column("ttfa_p50_ms")
    # Calls start only early in the run: the later periods have no time to first audio.
    assert [r["ttfa_p50_ms"] == "" for r in rows] == list(np.isnan(ttfa))
    assert any(r["ttfa_p50_ms"] == "" for r in rows)
    assert np.isnan(parsed.column("no_such_column")).all()


def test_load_page_in_chromium(load_csv: Path, tmp_path: Path) -> None:
    import matplotlib.image

    page = tmp_path / "load.html"
    assert run(str(load_csv), "-o", str(page)).exit_code == 0
    shot = tmp_path / "shot.png"
    proc = chromium(tmp_path, "--screenshot=" + str(shot), "--window-size=1200,1600", page.as_uri())
    assert shot.exists(), proc.stderr[-2000:]
    image = (matplotlib.image.imread(str(shot)) * 255).astype(np.uint8)
    # Messages each way and the p50/p99 lines, in their colours, across the time axis;
    # the calls started and ended (dashed, over part of the run) drawn too.
    for colour, pixels, width in (
        (COLORS[">"], 1000, 500),
        (COLORS["<"], 1000, 500),
        (LOAD_COLORS["started"], 100, 200),
        (LOAD_COLORS["ended"], 100, 200),
    ):
        mask = colour_mask(image, colour, 30)
        assert mask.sum() > pixels, colour
        columns = np.flatnonzero(mask.any(axis=0))
        assert columns.max() - columns.min() > width, colour
    rows = np.flatnonzero(colour_mask(image, COLORS[">"], 30).sum(axis=1) > 3)
    assert np.count_nonzero(np.diff(rows) > 20) + 1 >= 3  # msgs/s, lateness, TTFA, echo plots


# A conversation (`converse --trace`): made against the tests' voice bot.


@pytest.fixture(scope="module")
def converse_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in scenario against a bot with 3 s of dead air inside its answer (after
    "Sure."), barging in 1.5 s into the rest of it (well clear of "Sure."): a positive
    latency, a barge-in stop, dead air, one failed expectation (no-dead-air); the
    trace as `converse --trace` writes it."""
    from voice_bot import BotConfig, VoiceBot, espeak_available

    if not espeak_available():
        if os.environ.get("CI"):
            pytest.fail("espeak-ng is not installed (apt-get install espeak-ng)")
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    folder = tmp_path_factory.mktemp("converse")
    default = ROOT / "audiosocket_cli" / "scenarios" / "default.toml"
    scenario = folder / "scenario.toml"
    scenario.write_text(default.read_text().replace("after_ms = 500", "after_ms = 1500"))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    with VoiceBot(BotConfig(dead_air=3.0, stop_ms=600)) as bot:
        proc = subprocess.run(
            [sys.executable, "-m", "audiosocket_cli", "converse", str(bot.port),
             str(scenario), "--trace", str(folder / "call.trace"), "-q"],
            env=env, capture_output=True, text=True, timeout=90,
        )  # fmt: skip
        assert bot.calls[0].ended.wait(10)
    assert proc.returncode == 3, proc.stderr[-2000:]
    failed = [
        r for r in trace_events(folder / "call.trace", "expectation") if r["verdict"] != "pass"
    ]
    assert [r["expectation"] for r in failed] == ["no-dead-air"], proc.stderr[-2000:]
    return folder / "call.trace"


def trace_events(path: Path, name: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in path.read_text().splitlines()[1:]]
    return [r for r in lines if r.get("event") == name]


def report_calls(path: Path) -> list[Any]:
    """The report's own reading of a trace: each call's CallData, closed."""
    from audiosocket_cli.engines.report import CallData

    calls: dict[int, Any] = {}
    with open(path, "rb") as f:
        for record in read_records(f, str(path)):
            call = calls.get(record.conn)
            if call is None:
                call = calls[record.conn] = CallData(len(calls) + 1, "t", record.conn, path.parent)
            call.add(record)
    for call in calls.values():
        call.close()
    return list(calls.values())


def test_a_conversation_gets_its_lanes_figures_and_verdicts(
    converse_trace: Path, tmp_path: Path
) -> None:
    page = tmp_path / "converse.html"
    result = run(str(converse_trace), "-o", str(page))
    assert result.exit_code == 0, result.output
    text = page.read_text()
    (summary,) = trace_events(converse_trace, "conversation")
    section = text[text.index("<h3>Conversation</h3>") : text.index("<h3>Timeline</h3>")]
    assert text.index("<h3>Diagnoses</h3>") < text.index("<h3>Conversation</h3>")
    assert f"<p>{summary['text']}</p>" in section
    assert "conversation: who spoke when, response latencies, barge-ins" in section
    assert text.count("<svg") == 3  # the conversation, the timeline, the histograms
    # Each expectation with its verdict and its one-line evidence.
    verdicts = trace_events(converse_trace, "expectation")
    shown = re.findall(
        r'<tr><td class="(pass|fail)">(PASS|FAIL)</td><td class="l">([^<]*)</td>'
        r'<td class="l">([^<]*)</td></tr>',
        section,
    )
    assert [(v, n, e) for _, v, n, e in shown] == [
        (r["verdict"].upper(), html_escape(r["expectation"]), html_escape(r["evidence"]))
        for r in verdicts
    ]
    assert ("FAIL", "no-dead-air") in [(v, n) for _, v, n, _ in shown]
    # Each response latency and the barge-in, marked with the trace's own figures.
    (turn, _) = trace_events(converse_trace, "turn")
    (barge,) = trace_events(converse_trace, "barge-in")
    assert f"{turn['latency']:+.2f} s" in section
    assert f"barge-in: stopped in {barge['stop_time']:.2f} s" in section
    ((dead_start, dead_end),) = summary["dead_air_spans"]
    assert f"dead air {dead_end - dead_start:.2f} s" in section
    assert f"<td>{turn['caller_start']:.3f}-{turn['caller_end']:.3f}</td>" in section
    assert "<dt>expectations</dt><dd>4 pass, 1 fail</dd>" in text


def html_escape(text: str) -> str:
    import html

    return html.escape(text)


def test_the_agent_lane_is_the_agent_speech_converse_measured(converse_trace: Path) -> None:
    """The report measures the agent's speech from its audio in the trace, on the
    playout clock, as converse did live: its segments start where the agent's reply
    and barge-in utterance began, end where the barge-in stopped it and border the
    dead air, to the millisecond of the trace's rounding."""
    (call,) = report_calls(converse_trace)
    conversation = call.conversation
    assert conversation is not None and conversation.agent_measured
    starts = [a for a, _ in conversation.agent]
    ends = [b for _, b in conversation.agent]
    (summary,) = trace_events(converse_trace, "conversation")
    (turn, _) = trace_events(converse_trace, "turn")
    (barge,) = trace_events(converse_trace, "barge-in")
    ((dead_start, dead_end),) = summary["dead_air_spans"]

    def near(values: list[float], t: float) -> float:
        return min(abs(v - t) for v in values)

    assert near(starts, summary["first_response"]) <= 0.002
    assert near(starts, turn["agent_start"]) <= 0.002
    assert near(starts, barge["agent_start"]) <= 0.002
    assert near(ends, barge["stopped_at"]) <= 0.002
    assert near(ends, dead_start) <= 0.002 and near(starts, dead_end) <= 0.002
    total = sum(b - a for a, b in conversation.agent)
    assert total == pytest.approx(summary["agent_speech"], abs=0.005)


def test_conversation_events_without_a_scenario_start_still_get_lanes(
    converse_trace: Path, tmp_path: Path
) -> None:
    """A trace cut from a longer one, without the call-start naming the scenario: the
    agent's lane comes from the turns, and the page says so."""
    lines = converse_trace.read_text().splitlines(keepends=True)
    cut = tmp_path / "cut.trace"
    cut.write_text("".join(line for line in lines if '"event": "call-start"' not in line))
    (call,) = report_calls(cut)
    assert call.conversation is not None and not call.conversation.agent_measured
    (turn, _) = trace_events(converse_trace, "turn")
    assert call.conversation.agent[0][0] == turn["agent_start"]
    page = tmp_path / "cut.html"
    assert run(str(cut), "-o", str(page)).exit_code == 0
    assert "drawn from the turn events" in page.read_text()


def test_calls_without_a_conversation_are_unchanged(pages: dict[str, Path]) -> None:
    for page in pages.values():
        assert "<h3>Conversation</h3>" not in page.read_text()


def test_conversation_page_in_chromium(converse_trace: Path, tmp_path: Path) -> None:
    import matplotlib.image

    page = tmp_path / "converse.html"
    assert run(str(converse_trace), "-o", str(page)).exit_code == 0
    # The conversation alone, so that what is measured is its figure and tables.
    text = page.read_text()
    start, end = text.index("<h3>Conversation</h3>"), text.index("<h3>Timeline</h3>")
    alone = tmp_path / "alone.html"
    alone.write_text(text[: text.index("<h2>")] + text[start:end] + "</body></html>")
    shot = tmp_path / "shot.png"
    proc = chromium(
        tmp_path, "--screenshot=" + str(shot), "--window-size=1200,1100", alone.as_uri()
    )
    assert shot.exists(), proc.stderr[-2000:]
    image = (matplotlib.image.imread(str(shot)) * 255).astype(np.uint8)
    lanes = {}
    for d in (">", "<"):
        mask = colour_mask(image, COLORS[d], 30)
        rows = np.flatnonzero(mask.sum(axis=1) > 100)  # the bars: wide runs of the colour
        assert rows.size > 10, d
        lanes[d] = float(np.median(rows))
        columns = np.flatnonzero(mask[rows].any(axis=0))
        assert columns.max() - columns.min() > 500, d  # spread over the time axis
    assert lanes[">"] < lanes["<"]  # the caller's lane above the agent's
    assert colour_mask(image, "#d62728", 30).sum() > 200  # FAIL, dead air
    assert colour_mask(image, "#2ca02c", 30).sum() > 200  # PASS, the latency arrow
    assert colour_mask(image, "#7b3294", 30).sum() > 100  # the barge-in


# A scenario run's CSV (`load --scenario`): conversation columns beside load's own.

CONVERSATION_CSV_COLUMNS = (
    "response_p50_ms", "response_p95_ms", "response_p99_ms", "first_response_p50_ms",
    "barge_in_stop_p95_ms", "failed_expect_answer", "failed_expect_stop",
)  # fmt: skip


@pytest.fixture(scope="module")
def scenario_csv(load_csv: Path) -> Path:
    """The real run's CSV with a scenario run's columns added: known figures per period,
    one period without a sample (empty cells)."""
    rows = csv_rows(load_csv)
    path = load_csv.parent / "scenario.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*rows[0], *CONVERSATION_CSV_COLUMNS])
        for i, row in enumerate(rows):
            figures = [400 + 10 * i, 700 + 20 * i, 900 + 100 * i, 300 + i, 250, i % 2, 1]
            cells = [str(v) for v in figures] if i != 1 else [""] * 5 + ["0", "0"]
            writer.writerow([*row.values(), *cells])
    return path


def test_scenario_csv_gets_a_latency_plot_and_its_figures(
    scenario_csv: Path, tmp_path: Path
) -> None:
    page = tmp_path / "scenario.html"
    result = run(str(scenario_csv), "-o", str(page))
    assert result.exit_code == 0, result.output
    text = page.read_text()
    section = text[text.index('<section id="load-1">') : text.index("</section>")]
    assert section.count("<svg") == 2  # load's own plots, then the conversations'
    assert "response latency and time to first response per period (ms)" in section
    assert "barge-in stop time per period (ms)" in section
    rows = csv_rows(scenario_csv)
    sampled = [r for r in rows if r["response_p50_ms"]]
    worst = max(sampled, key=lambda r: float(r["response_p99_ms"]))
    expected = {
        "median of the period p50s: response latency": (
            f"{float(np.median([float(r['response_p50_ms']) for r in sampled])):.3f} ms"
        ),
        "worst response latency p99": (
            f"{float(worst['response_p99_ms']):.3f} ms (period ending {float(worst['t']):.3f} s)"
        ),
        "median of the period p50s: time to first response": (
            f"{float(np.median([float(r['first_response_p50_ms']) for r in sampled])):.3f} ms"
        ),
        "failed expectations": str(
            sum(int(r["failed_expect_answer"]) + int(r["failed_expect_stop"]) for r in rows)
        ),
        "failed expectations: stop": str(len(rows) - 1),
        "failed": "0",  # failed expectations are not failed calls
    }
    for label, value in expected.items():
        assert f'<th class="l">{label}</th><td>{value}</td>' in section, label
    assert "failed: expect_" not in section
    with open(scenario_csv, "rb") as f:
        parsed = read_load_csv(f, "scenario.csv", 1)
    assert parsed.conversations and parsed.failed_expect["stop"] == len(rows) - 1
    assert np.isnan(parsed.column("response_p95_ms")[1])  # an empty cell: no sample


def test_load_csv_without_conversation_columns_is_unchanged(load_csv: Path) -> None:
    with open(load_csv, "rb") as f:
        parsed = read_load_csv(f, "run.csv", 1)
    assert not parsed.conversations and parsed.failed_expect == {}


def test_scenario_csv_page_in_chromium(scenario_csv: Path, tmp_path: Path) -> None:
    import matplotlib.image

    page = tmp_path / "scenario.html"
    assert run(str(scenario_csv), "-o", str(page)).exit_code == 0
    shot = tmp_path / "shot.png"
    proc = chromium(tmp_path, "--screenshot=" + str(shot), "--window-size=1200,2400", page.as_uri())
    assert shot.exists(), proc.stderr[-2000:]
    image = (matplotlib.image.imread(str(shot)) * 255).astype(np.uint8)
    # The p95 lines (only the conversations' plot draws that colour) and the time to
    # first response, across the run's time axis.
    for colour in (LOAD_COLORS["p95"], LOAD_COLORS["first"]):
        mask = colour_mask(image, colour, 25)
        assert mask.sum() > 300, colour
        columns = np.flatnonzero(mask.any(axis=0))
        assert columns.max() - columns.min() > 500, colour
