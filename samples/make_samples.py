"""Regenerate the samples from hello-8k.wav: python samples/make_samples.py

- hello-8k.wav: a short spoken phrase, 8 kHz 16-bit mono. The committed file is
  the reference: espeak-ng's voice differs between versions, so it is made
  again only with --speech (needs espeak-ng and sox), and the tests then need
  their expected bytes updated.
- call.raw: what Asterisk sends in a call (UUID, 20 ms frames, DTMF), as raw bytes.
- call.trace: a whole call both ways, as `--trace` writes it (the current version).

Both are made from hello-8k.wav the same way every time: byte for byte the same.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from audiosocket_cli.engines.call import CallReport  # noqa: E402
from audiosocket_cli.files.trace import TraceWriter  # noqa: E402
from audiosocket_cli.output.sinks import Output, TraceSink  # noqa: E402
from audiosocket_cli.protocol.events import CallInfo, CallStart  # noqa: E402
from audiosocket_cli.protocol.session import Ended  # noqa: E402
from audiosocket_cli.protocol.wire import Message  # noqa: E402

UUID = "40325ec2-5bd7-4a4e-9a2c-6a4f6d3b1c01"
TEXT = "Hello. This is an audio socket test call. Press one to continue."


def speech_wav(path: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", "en", "-s", "150", "-w", str(raw), TEXT], check=True)
        subprocess.run(
            ["sox", str(raw), "-r", "8000", "-c", "1", "-b", "16", "-e", "signed", str(path)],
            check=True,
        )


def frames(pcm: bytes, size: int = 320) -> list[bytes]:
    """20 ms frames, the last one short, as Asterisk sends a played file."""
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


def main() -> None:
    import soundfile as sf

    wav = HERE / "hello-8k.wav"
    if "--speech" in sys.argv[1:]:
        speech_wav(wav)
    out = HERE
    if "--out" in sys.argv[1:]:  # elsewhere than samples/ (the tests compare the bytes)
        out = Path(sys.argv[sys.argv.index("--out") + 1])
    pcm = sf.read(str(wav), dtype="int16")[0].tobytes()
    audio = frames(pcm)

    # The raw dump: one direction, no timing.
    raw = [Message.for_uuid(UUID)] + [Message.audio(f) for f in audio[:50]]
    raw += [Message.dtmf("1"), Message.dtmf("#")] + [Message.audio(f) for f in audio[50:100]]
    (out / "call.raw").write_bytes(b"".join(m.encode() for m in raw))

    # The trace: Asterisk's audio at 20 ms, the application echoing it 1 ms later,
    # reported as every command reports a call.
    call = CallInfo(conn=1, uuid=None, peer="127.0.0.1:40000", started_ts=1_764_000_000.0)
    writer = TraceWriter(
        str(out / "call.trace"), command="make_samples.py", created=1_764_000_000.0
    )
    output = Output([TraceSink(writer, print)])
    report = CallReport(output, call)
    output.emit(call, CallStart(0.0, "from 127.0.0.1:40000", {"peer": "127.0.0.1:40000"}))
    report.message(0.000412, ">", Message.for_uuid(UUID))
    call.uuid = UUID
    t = 0.020
    for n, frame in enumerate(audio[:100]):
        report.message(t, ">", Message.audio(frame))
        report.message(t + 0.001, "<", Message.audio(frame))
        if n == 30:  # well before the hangup: a digit the application handled
            report.message(t + 0.005, ">", Message.dtmf("5"))
        t += 0.020
    report.message(t, "<", Message.hangup())
    report.finish(Ended(t, "app-hangup", "the application hung up"), t=t)
    output.close()


if __name__ == "__main__":
    main()
