"""`audiosocket dial` and `audiosocket play`: be Asterisk and call an application.

This module turns flags into a caller.CallPlan, checks every input before
connecting (so mistakes are one line and no half-made call), and maps how the
call ended to an exit status. The call itself is caller.Caller's job.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from audiosocket_cli.commands.options import (
    INJECT,
    RATE,
    UUID,
    AddressType,
    Failure,
    ProtocolFailure,
    asterisk_rules,
    call_uuids,
    lenient_option,
    monitor_option,
    open_output,
    open_pcap,
    output_options,
    pcap_option,
    placing_options,
)
from audiosocket_cli.output.sinks import Environment, Output
from audiosocket_cli.protocol.events import FAILURE_ENDINGS
from audiosocket_cli.protocol.inject import Injection, parse_inject
from audiosocket_cli.protocol.wire import MAX_PAYLOAD, frame_bytes

DEFAULT_PORT = 9092
ADDRESS = AddressType(default_port=DEFAULT_PORT, client=True)
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class DtmfType(click.ParamType):
    """--dtmf DIGITS@SECONDS, the short form of --inject dtmf:DIGITS@SECONDS."""

    name = "DIGITS@SECONDS"

    def convert(self, value: Any, param: Any, ctx: Any) -> Injection:
        if isinstance(value, Injection):
            return value
        text = str(value)
        if "@" not in text or not text.rpartition("@")[0]:
            self.fail(f"{text!r}: expected DIGITS@SECONDS, for example 12#@1.5", param, ctx)
        try:
            return parse_inject(f"dtmf:{text}")
        except ValueError as exc:
            self.fail(str(exc).replace("'dtmf:", "'", 1), param, ctx)


DTMF = DtmfType()


class _CurrentStderr:
    """sys.stderr as it is at each write.

    While the progress bar is live, rich swaps sys.stderr for a proxy that
    prints above the bar; warnings written through this go there too, instead
    of tearing the bar.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        try:
            return sys.stderr.isatty()
        except (AttributeError, ValueError):
            return False


def call_options(func: Callable) -> Callable:
    """The options of a call, shared by dial and play (output options last in --help)."""
    func = output_options(func)
    func = pcap_option(func)
    for decorator in reversed(
        [
            click.option(
                "--rate",
                type=RATE,
                default=8000,
                show_default=True,
                help="Sample rate of the audio sent: 8000 (kind 0x10) ... 192000 (0x18).",
            ),
            click.option(
                "--frame-ms",
                type=click.FloatRange(min=0, min_open=True),
                metavar="MS",
                default=20.0,
                show_default=True,
                help="Milliseconds of audio per message.",
            ),
            click.option(
                "--record",
                "record_path",
                metavar="FILE",
                type=click.Path(dir_okay=False),
                help="Write the audio the application sends to this WAV "
                "(audio at a second rate goes to FILE stem + .RATE.wav).",
            ),
            click.option(
                "--record-stereo",
                "record_stereo",
                metavar="FILE.wav",
                type=click.Path(dir_okay=False),
                help="Write both sides to this stereo WAV on one timeline, at --rate: what "
                "we send on the left at its send time, the application's audio on the right "
                "where it plays (from its arrival, end to end). With --speed 1 only.",
            ),
            click.option(
                "--dtmf",
                "dtmf",
                type=DTMF,
                multiple=True,
                help="Send DTMF digits at a moment, one 0x03 message per digit "
                "(same as --inject dtmf:DIGITS@SECONDS). Repeatable.",
            ),
            click.option(
                "--inject",
                "injections",
                type=INJECT,
                multiple=True,
                help="Send something at a moment: hangup, error, error:CODE, dtmf:DIGITS, "
                "raw:HEX or close, @SECONDS from the connection. Repeatable.",
            ),
            click.option(
                "--duration",
                type=click.FloatRange(min=0),
                metavar="SECONDS",
                help="End the call this many seconds after connecting (scaled by --speed).",
            ),
            click.option(
                "--linger",
                type=click.FloatRange(min=0),
                metavar="SECONDS",
                default=1.0,
                show_default=True,
                help="With a file, keep the call open this many wall-clock seconds after "
                "the file was sent, for the application's answer.",
            ),
            click.option(
                "--end",
                type=click.Choice(["close", "hangup"]),
                default="close",
                show_default=True,
                help="How this side ends the call: close the socket (as Asterisk does), "
                "or send a hangup message (0x00) first.",
            ),
            click.option(
                "--speed",
                type=click.FloatRange(min=0),
                metavar="X",
                default=1.0,
                show_default=True,
                help="1 is real time, 2 twice as fast; 0 sends everything at once, in order. "
                "--duration and --inject times scale with it, --linger does not.",
            ),
            lenient_option,
            monitor_option,
        ]
    ):
        func = decorator(func)
    return func


def source_options(func: Callable) -> Callable:
    """Where dial's audio comes from; at most one."""
    for decorator in reversed(
        [
            click.option(
                "--play",
                "play_path",
                metavar="FILE",
                help="Send a sound file (any format soundfile reads), mixed to mono and "
                "resampled to --rate; the call ends when it was sent and --linger passed.",
            ),
            click.option(
                "--tone",
                type=click.FloatRange(min=0, min_open=True),
                metavar="HZ",
                help="Send a sine tone.",
            ),
            click.option("--mic", is_flag=True, help="Send the local microphone."),
            click.option(
                "--silence",
                is_flag=True,
                help="Send silent frames, as a quiet phone line does (the default).",
            ),
            click.option(
                "--no-audio",
                is_flag=True,
                help="Send nothing after the UUID, as Asterisk while its channel is silent.",
            ),
        ]
    ):
        func = decorator(func)
    return func


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("address", required=False, default=f"127.0.0.1:{DEFAULT_PORT}", type=ADDRESS)
@click.argument("uuid", required=False, type=UUID)
@source_options
@call_options
@placing_options
def dial(
    address: Any,
    uuid: str | None,
    play_path: str | None,
    tone: float | None,
    mic: bool,
    silence: bool,
    no_audio: bool,
    **options: Any,
) -> None:
    """Be Asterisk: connect to an AudioSocket application at ADDRESS and run one call.

    Sends the UUID message first (a random UUID, printed on stderr, when none
    is given), then audio every --frame-ms on a drift-free real-time clock,
    and shows every message both ways. Strict by default: when the
    application sends something Asterisk refuses (a kind other than hangup or
    audio, empty audio, a payload that stalls after its header), the call
    ends as Asterisk would end it, with the reason, and the exit status is 3.
    At the end, diagnoses of the application's audio (pacing, bursts, one-way
    audio, mu-law or byte order, frame sizes) are shown.

    ADDRESS is HOST:PORT, [IPv6]:PORT, or PORT alone (host 127.0.0.1); it
    defaults to 127.0.0.1:9092.

    \b
    Exit status: 0 the call ended normally (either side), 1 could not
    connect or read a file, 2 usage error, 3 the application broke the
    protocol, 130 Ctrl-C, 143 SIGTERM.

    \b
    Examples:
      audiosocket dial 127.0.0.1:9092 --play hello.wav --record answer.wav
      audiosocket dial 9092 --play question.wav --record-stereo call.wav  # both sides
      audiosocket dial 9092 --tone 440 --duration 5 --dtmf 123#@2
      audiosocket dial [::1]:9092 0f6c1a3e-6d0b-4c2e-9f8e-1c2d3e4f5a6b --rate 16000 --mic
      audiosocket dial 9092 --no-audio --inject hangup@3 --json
      audiosocket dial 9092 --play hello.wav --speed 0 --linger 2 --trace call.trace
      audiosocket dial 9092 --tone 440 --duration 3 --pcap call.pcap  # for Wireshark
      audiosocket dial 9092 --before-call 'curl -sf -X POST bot:8080/calls/$AUDIOSOCKET_UUID'
    """
    chosen = [
        name
        for name, given in (
            ("--play", play_path is not None),
            ("--tone", tone is not None),
            ("--mic", mic),
            ("--silence", silence),
            ("--no-audio", no_audio),
        )
        if given
    ]
    if len(chosen) > 1:
        raise click.UsageError(f"choose one audio source, not {' and '.join(chosen)}")
    kind = chosen[0] if chosen else "--silence"
    _run_call(address, uuid, kind, play_path=play_path, tone=tone, command="dial", **options)


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("file")
@click.argument("address", required=False, default=f"127.0.0.1:{DEFAULT_PORT}", type=ADDRESS)
@click.argument("uuid", required=False, type=UUID)
@call_options
@placing_options
def play(file: str, address: Any, uuid: str | None, **options: Any) -> None:
    """Be Asterisk and play FILE to the application at ADDRESS: `dial ADDRESS --play FILE`.

    FILE is any format soundfile reads; it is mixed to mono, resampled to
    --rate, and sent in real time; the last frame is short where the file
    ends, as Asterisk sends it. The call ends when the file was sent and
    --linger passed, or earlier if the application hangs up. ADDRESS defaults
    to 127.0.0.1:9092; UUID to a random one, printed on stderr.

    \b
    Exit status: as dial's (0 normal end, 1 could not connect or read FILE,
    2 usage error, 3 the application broke the protocol, 130, 143).

    \b
    Examples:
      audiosocket play hello.wav
      audiosocket play hello.wav 127.0.0.1:9092 --record answer.wav
      audiosocket play prompt.flac 9092 --rate 16000 --dtmf 1@2.5 --end hangup
      audiosocket play hello.wav --speed 0 --json | jq -c 'select(.dir == "<")'
    """
    _run_call(address, uuid, "--play", play_path=file, tone=None, command="play", **options)


def _frame_samples(rate: int, frame_ms: float) -> int:
    size = frame_bytes(rate, frame_ms)
    if size < 2:
        raise click.BadParameter(
            f"{frame_ms:g} ms at {rate} Hz is less than one sample", param_hint="--frame-ms"
        )
    if size > MAX_PAYLOAD:
        raise click.BadParameter(
            f"{frame_ms:g} ms at {rate} Hz is {size} bytes, over a message's {MAX_PAYLOAD}",
            param_hint="--frame-ms",
        )
    return size // 2


def _check_record_path(path: str, option: str = "--record") -> None:
    from audiosocket_cli.media.recorder import check_writable

    problem = check_writable(Path(path))
    if problem:
        raise Failure(f"{problem} ({option})")


def _check_stereo_path(path: str, speed: float) -> None:
    """--record-stereo: a WAV, on the call's real time, writable."""
    if speed != 1:
        raise click.UsageError(
            f"--record-stereo lays both sides on the call's real time: "
            f"it goes with --speed 1, not --speed {speed:g}"
        )
    if Path(path).suffix.lower() != ".wav":
        raise click.BadParameter(
            f"{path!r}: the stereo recording is a WAV file (FILE.wav)",
            param_hint="--record-stereo",
        )
    _check_record_path(path, "--record-stereo")


def _make_source(
    kind: str, play_path: str | None, tone: float | None, rate: int, samples: int
) -> tuple[Any, str, float | None]:
    """(frame source or None, its name for output, its duration when it is a file)."""
    from audiosocket_cli.media import audio

    if kind == "--no-audio":
        return None, "none", None
    if kind == "--play":
        assert play_path is not None
        path = Path(play_path)
        if not path.exists():
            raise Failure(f"{play_path}: no such file")
        if path.is_dir():
            raise Failure(f"{play_path}: is a directory")
        try:
            source = audio.FileSource(play_path)
            source.pcm(rate)  # resample now, not while the first frame is due
            if source.note:
                click.echo(f"audiosocket: warning: {source.note}", err=True)
        except audio.AudioFileError as exc:
            raise Failure(str(exc)) from None
        return source, f"file:{path.name}", source.duration
    if kind == "--tone":
        assert tone is not None
        if tone >= rate / 2:
            raise click.BadParameter(
                f"{tone:g} Hz cannot be sent at {rate} Hz (at most {rate / 2 - 1:g} Hz)",
                param_hint="--tone",
            )
        return audio.ToneSource(tone), f"tone:{tone:g}Hz", None
    if kind == "--mic":
        from audiosocket_cli.media.mic import MicSource, MicUnavailable

        mic = MicSource()
        try:
            mic.start(rate, samples)
        except MicUnavailable as exc:
            raise Failure(f"--mic: {exc}") from None
        return mic, "mic", None
    return audio.SilenceSource(), "silence", None


def _open_monitor() -> Any:
    """A Monitor, or None with one warning: hearing the call is an aid, not the job
    (listen does the same)."""
    from audiosocket_cli.media.monitor import Monitor, MonitorUnavailable

    try:
        return Monitor()
    except MonitorUnavailable as exc:
        click.echo(f"audiosocket: warning: --monitor: {exc}; going on without it", err=True)
        return None


class _ProgressBar:
    """A transient rich progress bar for a file being sent; started on first use."""

    def __init__(self, env: Environment, output: Output, name: str, total: float) -> None:
        self.env, self.output, self.name, self.total = env, output, name, total
        self._progress: Any = None
        self._task: Any = None

    def __call__(self, seconds: float) -> None:
        if self._progress is None:
            self._start()
        self._progress.update(
            self._task, completed=seconds, pos=f"{min(seconds, self.total):.1f}/{self.total:.1f}s"
        )

    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        # When the human display is live on the same terminal, nest in its console:
        # two live displays on one screen would overwrite each other.
        console = next(
            (getattr(s, "console", None) for s in self.output.sinks if hasattr(s, "console")),
            None,
        ) or Console(file=sys.__stderr__ or sys.stderr, no_color=not self.env.color)
        self._progress = Progress(
            TextColumn("[bold]playing[/] {task.description}"),
            BarColumn(),
            TextColumn("{task.fields[pos]}"),
            console=console,
            transient=True,
        )
        self._task = self._progress.add_task(self.name, total=self.total or 1, pos="")
        self._progress.start()

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def _run_call(
    address: Any,
    uuid: str | None,
    source_kind: str,
    *,
    play_path: str | None,
    tone: float | None,
    command: str,
    call_uuid: str | None,
    uuid_pattern: str | None,
    before_call: str | None,
    rate: int,
    frame_ms: float,
    record_path: str | None,
    record_stereo: str | None,
    dtmf: tuple[Injection, ...],
    injections: tuple[Injection, ...],
    duration: float | None,
    linger: float,
    end: str,
    speed: float,
    lenient: bool,
    monitor: bool,
    pcap_path: str | None,
    json_lines: bool,
    trace_path: str | None,
    verbose: int,
    quiet: bool,
) -> None:
    from audiosocket_cli.engines.dial import Caller, CallPlan
    from audiosocket_cli.media.recorder import file_recording
    from audiosocket_cli.net.transport import ConnectError

    # Everything that can be wrong with the input is found before connecting.
    if uuid is not None and call_uuid is not None and uuid != call_uuid:
        raise click.UsageError(f"two UUIDs: {uuid} and --uuid {call_uuid}: give one")
    uuids = call_uuids(call_uuid or uuid, uuid_pattern)
    samples = _frame_samples(rate, frame_ms)
    # numpy is needed for levels, statistics and sources as soon as audio flows;
    # importing it then would hold up the first frames by ~100 ms: do it now.
    import numpy  # noqa: F401

    if record_path:
        _check_record_path(record_path)
    if record_stereo:
        if record_path and Path(record_path).resolve() == Path(record_stereo).resolve():
            raise click.UsageError("--record and --record-stereo name the same file: give two")
        _check_stereo_path(record_stereo, speed)
    source, source_name, source_duration = _make_source(source_kind, play_path, tone, rate, samples)
    closers: list[Callable[[], None]] = []
    if hasattr(source, "close"):
        closers.append(source.close)
    try:
        monitor_device = _open_monitor() if monitor else None
        if monitor_device is not None:
            closers.append(monitor_device.close)
        announce: Callable[[], None] | None = None
        random_uuid = uuids.uuid is None and uuids.pattern is None
        uuid = uuids(1)
        if random_uuid:
            # Once connected, on stderr: stdout stays the call's messages only.
            announce = functools.partial(click.echo, f"uuid {uuid}", err=True)
        if before_call is not None:
            from audiosocket_cli.engines.before_call import BeforeCallFailed, run_before_call

            try:
                run_before_call(before_call, uuid, 1, address)
            except BeforeCallFailed as exc:
                raise Failure(f"the call was not placed: {exc}") from None
        env = Environment(stderr=_CurrentStderr())  # type: ignore[arg-type]
        output = open_output(
            env,
            json_lines=json_lines,
            trace_path=trace_path,
            verbose=verbose,
            quiet=quiet,
            command=command,
        )
        closers.append(output.close)
        pcap = open_pcap(pcap_path, output)
        if pcap is not None:
            closers.append(pcap.close)
        recording = file_recording(Path(record_path), rate) if record_path else None
        if recording is not None:
            closers.insert(0, recording.close)
        stereo = None
        if record_stereo:
            from audiosocket_cli.media.stereo import CallStereo

            stereo_path = Path(record_stereo)
            # Always a file after a call, empty if nothing was sent either way (as --record).
            stereo = CallStereo(lambda: stereo_path, rate=rate, empty=True)
            closers.insert(0, stereo.close)
        progress = None
        if source_duration is not None and env.stderr_isatty:
            progress = _ProgressBar(env, output, Path(play_path or "").name, source_duration)
            closers.insert(0, progress.stop)
        plan = CallPlan(
            address=address,
            uuid=uuid,
            rate=rate,
            frame_ms=frame_ms,
            source=source,
            source_name=source_name,
            finite_source=source_duration is not None,
            injections=[*dtmf, *injections],
            duration=duration,
            linger=linger,
            end=end,
            speed=speed,
            rules=asterisk_rules(lenient=lenient),
        )
        caller = Caller(
            plan,
            output,
            recording=recording,
            stereo=stereo,
            monitor=monitor_device,
            on_progress=progress,
            on_connected=announce,
            pcap_file=pcap,
        )
        try:
            result = caller.run()
        except ConnectError as exc:
            raise Failure(str(exc)) from None
    finally:
        # Recordings first: they must be whole even if closing anything else fails.
        for close in closers:
            try:
                close()
            except Exception:
                pass
    if result.broke_protocol:
        raise ProtocolFailure(f"{result.ended}: {result.detail}")
    if result.ended in FAILURE_ENDINGS:
        raise Failure(f"{result.ended}: {result.detail}")
