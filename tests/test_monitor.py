"""--monitor: real PortAudio on ALSA's null device, and the paths where it cannot play.

PortAudio reads the ALSA configuration once, when sounddevice is imported, so
each case runs in its own Python process with its own HOME.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from asterisk_client import AsteriskClient
from conftest import skip_without_portaudio
from test_listen import Listen, pcm_for, wav_bytes

ROOT = Path(__file__).resolve().parent.parent

PLAY_SCRIPT = r"""
import json, time
import numpy as np
from audiosocket_cli.media.monitor import Monitor

monitor = Monitor()
assert monitor.stream_rate == 0  # nothing opened yet
tone = (np.sin(np.arange(8000) * 2 * np.pi * 440 / 8000) * 8000).astype("<i2").tobytes()
start = time.monotonic()
for k in range(25):  # 0.5 s of 20 ms frames, as a call sends them
    monitor.play(tone[k * 320 : (k + 1) * 320], 8000)
    time.sleep(max(0.0, start + (k + 1) * 0.02 - time.monotonic()))
time.sleep(0.2)
low = {"rate": monitor.stream_rate, "played": monitor.played_bytes, "error": monitor.error}
played = monitor.played_bytes
monitor.play(bytes(16000 * 2 * 5), 16000)  # 5 s at once: far more than may wait
buffered = len(monitor._buffer)
deadline = time.monotonic() + 3
while (monitor.stream_rate != 16000 or monitor._buffer) and time.monotonic() < deadline:
    time.sleep(0.01)
high = {
    "rate": monitor.stream_rate,
    "played": monitor.played_bytes - played,
    "dropped": monitor.dropped_bytes,
    "buffered": buffered,
}
monitor.close()
print(json.dumps({"low": low, "high": high}))
"""

UNAVAILABLE_SCRIPT = r"""
from audiosocket_cli.media.monitor import Monitor, MonitorUnavailable
try:
    Monitor()
except MonitorUnavailable as exc:
    print("UNAVAILABLE", exc)
else:
    print("AVAILABLE")
"""

# Stands in for a machine without libportaudio2: sounddevice's import fails as it then does.
NO_PORTAUDIO_SITECUSTOMIZE = """
import sys

class _NoPortAudio:
    def find_spec(self, name, path=None, target=None):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return None

sys.meta_path.insert(0, _NoPortAudio())
"""


def run_python(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = dict(env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(ROOT)) if p)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, env=env
    )


@pytest.fixture
def no_portaudio_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_PORTAUDIO_SITECUSTOMIZE)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(site)
    return env


def test_monitor_plays_on_a_real_portaudio_device(alsa_null_home):
    result = run_python(PLAY_SCRIPT, alsa_null_home)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    low, high = report["low"], report["high"]
    assert low["rate"] == 8000 and low["error"] is None
    # The device took what the call sent (up to the 40 ms held back to ride out jitter).
    assert 8000 - 640 <= low["played"] <= 8000
    # A new rate reopens the stream; audio beyond 0.25 s is dropped, never queued.
    assert high["rate"] == 16000
    assert high["buffered"] == 16000 * 2 // 4
    assert high["played"] == high["buffered"]  # none of it went to the old 8 kHz stream
    assert high["dropped"] == 16000 * 2 * 5 - high["buffered"]


def test_monitor_unavailable_without_portaudio(no_portaudio_env):
    result = run_python(UNAVAILABLE_SCRIPT, no_portaudio_env)
    assert result.stdout.strip() == (
        "UNAVAILABLE cannot play audio: the PortAudio library is missing "
        "(apt-get install libportaudio2)"
    )


def test_monitor_unavailable_without_an_output_device(tmp_path):
    skip_without_portaudio()
    home = tmp_path / "home"
    home.mkdir()
    (home / ".asoundrc").write_text("pcm.!default { type hw card 99 }\n")
    env = dict(os.environ, HOME=str(home))
    result = run_python(UNAVAILABLE_SCRIPT, env)
    if result.stdout.strip() == "AVAILABLE":
        pytest.skip("this machine has a sound card: there is always an output device")
    assert result.stdout.strip().startswith("UNAVAILABLE cannot play audio: no sound output device")


def test_listen_monitor_without_portaudio_says_so_and_goes_on(tmp_path, no_portaudio_env):
    proc = Listen("--monitor", "--record", str(tmp_path), "--max-calls", "1", env=no_portaudio_env)
    try:
        pcm = pcm_for(20, 0.2)
        with AsteriskClient(proc.address) as client:
            uuid = client.send_uuid()
            client.send_audio(pcm, paced=False)
            client.close()
        assert proc.wait() == 0
    finally:
        proc.kill()
    assert proc.stderr[1] == (
        "audiosocket: warning: --monitor: cannot play audio: the PortAudio library is "
        "missing (apt-get install libportaudio2); going on without it"
    )
    assert wav_bytes(tmp_path / f"{uuid}.wav")[0] == pcm


def test_listen_monitor_plays_calls_one_after_another(tmp_path, alsa_null_home):
    proc = Listen("--monitor", "--record", str(tmp_path), "--max-calls", "2", env=alsa_null_home)
    try:
        sounds = [pcm_for(21, 0.3), pcm_for(22, 0.3, 16000)]
        first, second = AsteriskClient(proc.address), AsteriskClient(proc.address)
        uuids = [first.send_uuid(), second.send_uuid()]
        first.send_audio(sounds[0])  # heard: the first call with audio
        second.send_audio(sounds[1], 16000, paced=False)  # not heard while the first goes on
        first.close()
        second.send_audio(sounds[1], 16000)  # heard now, at its own rate
        second.close()
        assert proc.wait() == 0
    finally:
        proc.kill()
    assert not [line for line in proc.stderr if "monitor" in line]
    assert wav_bytes(tmp_path / f"{uuids[0]}.wav") == (sounds[0], 8000)
    assert wav_bytes(tmp_path / f"{uuids[1]}.wav") == (sounds[1] * 2, 16000)
