"""Options and parameter types that several commands share, defined once."""

from __future__ import annotations

import os
import re
import uuid as uuid_lib
from collections.abc import Callable
from typing import Any

import click

from audiosocket_cli.net.address import Address, parse_address
from audiosocket_cli.output.make import make_output
from audiosocket_cli.output.sinks import Environment, Output
from audiosocket_cli.protocol.inject import Injection, parse_inject
from audiosocket_cli.protocol.wire import RATE_KINDS
from audiosocket_cli.status import ExitStatus


class AddressType(click.ParamType):
    """ADDRESS: HOST:PORT, [IPv6]:PORT or PORT. `client`: an address to connect to,
    where port 0 means nothing."""

    name = "ADDRESS"

    def __init__(self, default_port: int | None = None, client: bool = False) -> None:
        self.default_port = default_port
        self.client = client

    def convert(self, value: Any, param: Any, ctx: Any) -> Address:
        if isinstance(value, Address):
            return value
        text = str(value).strip()
        why = _not_an_address(text)
        if why:
            self.fail(why, param, ctx)
        try:
            address = parse_address(text, self.default_port)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if self.client and address.port == 0:
            self.fail(f"{text!r}: port 0 is not a port to connect to", param, ctx)
        return address


def _not_an_address(text: str) -> str | None:
    """What an argument that cannot be an ADDRESS looks like instead, or None."""
    if "://" in text:
        scheme = text.split("://", 1)[0]
        return f"{text!r} is a URL ({scheme}://): ADDRESS is HOST:PORT, e.g. 127.0.0.1:9092"
    if text in (":", "[]:", "[]"):
        return f"{text!r} has no host and no port (HOST:PORT, e.g. 127.0.0.1:9092)"
    try:
        uuid_lib.UUID(text)
    except ValueError:
        return None
    return f"{text!r} is a UUID, not an ADDRESS (HOST:PORT): the address comes first"


class UUIDType(click.ParamType):
    name = "UUID"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        try:
            return str(uuid_lib.UUID(str(value)))
        except ValueError:
            self.fail(f"{value!r} is not a UUID", param, ctx)


class InjectType(click.ParamType):
    name = "SPEC"

    def convert(self, value: Any, param: Any, ctx: Any) -> Injection:
        if isinstance(value, Injection):
            return value
        try:
            return parse_inject(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class RateType(click.ParamType):
    name = "HZ"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        try:
            rate = int(value)
        except (TypeError, ValueError):
            rate = -1
        if rate not in RATE_KINDS:
            rates = ", ".join(str(r) for r in RATE_KINDS)
            self.fail(f"{value!r} is not an AudioSocket rate ({rates})", param, ctx)
        return rate


ADDRESS = AddressType()
UUID = UUIDType()
INJECT = InjectType()
RATE = RateType()


def output_options(func: Callable) -> Callable:
    """--json, --trace, -v, -q: the output flags every command has."""
    for decorator in reversed(
        [
            click.option("--json", "json_lines", is_flag=True, help="JSON lines on stdout."),
            click.option(
                "--trace",
                "trace_path",
                type=click.Path(dir_okay=False, writable=True),
                help="Keep every message and event in a trace file.",
            ),
            click.option(
                "-v",
                "--verbose",
                count=True,
                callback=_not_with_quiet,
                help="Show each audio frame.",
            ),
            click.option(
                "-q",
                "--quiet",
                is_flag=True,
                callback=_not_with_quiet,
                help="Show events only, not each message.",
            ),
        ]
    ):
        func = decorator(func)
    return func


# The options of every command that is Asterisk's side of a call, defined once.
lenient_option = click.option(
    "--lenient",
    is_flag=True,
    help="Report what Asterisk would refuse as a warning and carry on, instead of "
    "ending the call (exit 3) as Asterisk would.",
)
monitor_option = click.option(
    "--monitor",
    is_flag=True,
    help="Play the application's audio on the local sound device.",
)


def placing_options(func: Callable) -> Callable:
    """--uuid, --uuid-pattern, --before-call: the calls' UUIDs, as the application
    expects them, and the step a dialplan takes before AudioSocket connects."""
    for decorator in reversed(
        [
            click.option(
                "--uuid",
                "call_uuid",
                type=UUID,
                metavar="UUID",
                help="Every call's UUID [default: a random UUID per call].",
            ),
            click.option(
                "--uuid-pattern",
                metavar="PATTERN",
                help="Each call's UUID from its number n (1, 2, ...), as a Python format "
                "string: 00000000-0000-4000-8000-{n:012d}.",
            ),
            click.option(
                "--before-call",
                metavar="CMD",
                help="A shell command run before each call, with the call's UUID in "
                "$AUDIOSOCKET_UUID (and $AUDIOSOCKET_CALL, $AUDIOSOCKET_ADDRESS): the call "
                "is placed only if it exits 0 within 10 s. For applications that need the "
                "call registered first, as a dialplan does over HTTP or ARI.",
            ),
        ]
    ):
        func = decorator(func)
    return func


def call_uuids(call_uuid: str | None, uuid_pattern: str | None) -> Any:
    """The --uuid / --uuid-pattern choice as an engines.before_call.CallUUIDs; a usage
    error if both are given or the pattern does not make UUIDs."""
    from audiosocket_cli.engines.before_call import CallUUIDs, check_uuid_pattern

    if call_uuid is not None and uuid_pattern is not None:
        raise click.UsageError("--uuid and --uuid-pattern cannot go together: choose one")
    if uuid_pattern is not None:
        problem = check_uuid_pattern(uuid_pattern)
        if problem:
            raise click.BadParameter(problem, param_hint="--uuid-pattern")
    return CallUUIDs(call_uuid, uuid_pattern)


def input_options(func: Callable) -> Callable:
    """--dir and --port: how `trace` and `report` read what they are given."""
    func = click.option(
        "--port",
        metavar="PORT",
        type=click.IntRange(1, 65535),
        help="AudioSocket port in a packet capture (only connections on it are read).",
    )(func)
    return click.option(
        "--dir",
        "direction",
        type=click.Choice([">", "<"]),
        default=">",
        show_default=True,
        help="Direction of a raw dump.",
    )(func)


def _not_with_quiet(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """-v and -q ask for opposite things: say so rather than pick one."""
    seen = ctx.meta.setdefault("audiosocket_verbosity", {})
    seen[param.name] = value
    if seen.get("verbose") and seen.get("quiet"):
        raise click.UsageError("-v and -q cannot go together: choose more or less output")
    return value


def _env_seconds(name: str, default: float | None) -> float | None:
    """A slow limit made test-sized through the environment (docs/output.md, "Limits")."""
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise click.UsageError(f"{name}={text!r} is not a number of seconds") from None
    return value if value > 0 else None


def application_rules(idle_timeout: float | None = None, observe: bool = False) -> Any:
    """The session rules of the application's side (listen, capture's caller half)."""
    from audiosocket_cli.protocol.session import MESSAGE_STALL, Mode, Rules

    return Rules(
        mode=Mode.OBSERVE if observe else Mode.STRICT,
        message_stall=_env_seconds("AUDIOSOCKET_MESSAGE_STALL", MESSAGE_STALL),
        idle_timeout=idle_timeout,
    )


def asterisk_rules(lenient: bool = False, observe: bool = False) -> Any:
    """The session rules of Asterisk's side (dial, play, replay, capture's application half)."""
    from audiosocket_cli.protocol.session import INACTIVITY, PAYLOAD_WINDOW, Mode, Rules

    mode = Mode.OBSERVE if observe else Mode.LENIENT if lenient else Mode.STRICT
    return Rules(
        mode=mode,
        payload_window=_env_seconds("AUDIOSOCKET_PAYLOAD_WINDOW", PAYLOAD_WINDOW),
        inactivity=None if observe else _env_seconds("AUDIOSOCKET_INACTIVITY", INACTIVITY),
    )


def warm_up(recording: bool) -> None:
    """Load now what the first call would otherwise wait for (numpy for levels and
    statistics; soundfile, and the thread pool that makes WAV files, for
    recordings), before saying we are ready."""
    from audiosocket_cli.analysis.levels import level_dbfs
    from audiosocket_cli.analysis.stats import ULAW_TABLE

    level_dbfs(bytes(320))
    ULAW_TABLE()
    if recording:
        import concurrent.futures  # noqa: F401  (20 ms: the first call's, otherwise)

        import soundfile  # noqa: F401


class Failure(click.ClickException):
    """Could not do the job (exit 1): one line, no traceback."""

    exit_code = ExitStatus.FAILED


class ProtocolFailure(click.ClickException):
    """The peer broke the protocol, or sent what Asterisk refuses (exit 3)."""

    exit_code = ExitStatus.PROTOCOL


def open_output(
    env: Environment,
    *,
    json_lines: bool,
    trace_path: str | None,
    verbose: int,
    quiet: bool,
    command: str,
) -> Output:
    """The command's output; a trace file that cannot be written is a one-line failure."""
    try:
        return make_output(
            env,
            json_lines=json_lines,
            trace_path=trace_path,
            verbose=verbose,
            quiet=quiet,
            command=command,
        )
    except OSError as exc:
        raise Failure(f"{trace_path}: cannot write: {exc.strerror or exc}") from None


def pcap_option(func: Callable) -> Callable:
    """--pcap FILE: what the command sent and received, as a capture Wireshark opens."""
    return click.option(
        "--pcap",
        "pcap_path",
        metavar="FILE",
        type=click.Path(dir_okay=False),
        help="Write each call's bytes as sent and received to a pcap file (one TCP "
        "connection per call, real addresses and times) for Wireshark, `trace` and `replay`.",
    )(func)


def open_pcap(path: str | None, output: Output) -> Any:
    """The --pcap file, created with its header before the first call (an engines.
    pcap_tap.PcapFile, or None); one line and exit 1 if it cannot be written. A
    later write error is warned of once, through `output`, and ends no call."""
    if path is None:
        return None
    from audiosocket_cli.engines.pcap_tap import PcapFile

    try:
        return PcapFile.open(path, output.note)
    except OSError as exc:
        raise Failure(f"{path}: cannot write: {exc.strerror or exc} (--pcap)") from None


# The verdicts of a conversation (converse, and load --scenario).


class SecondsType(click.ParamType):
    """S: seconds, as 1.5, 1.5s or 1500ms."""

    name = "S"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s)?\s*", str(value))
        if not match:
            self.fail(f"{value!r} is not a duration (1.5, 1.5s or 1500ms)", param, ctx)
        number = float(match.group(1))
        return number / 1000 if match.group(2) == "ms" else number


SECONDS = SecondsType()


class ScenarioProblem(click.ClickException):
    """A scenario that cannot run (exit 2): one line naming the file, the step, the problem."""

    exit_code = ExitStatus.USAGE


def _threshold(name: str, default: float, text: str) -> Any:
    return click.option(
        name, type=SECONDS, default=default, show_default=True, metavar="S", help=text
    )


def conversation_options(func: Callable) -> Callable:
    """--max-first-response, --max-response, --max-barge-in-stop, --dead-air,
    --allow-talk-over: the limits of a conversation's expectations."""
    for decorator in reversed(
        [
            _threshold(
                "--max-first-response",
                3.0,
                '`expect = "first-response"`: the agent\'s first speech at most this long '
                "after the connection.",
            ),
            _threshold(
                "--max-response",
                1.5,
                '`expect = "answer"`: the agent\'s reply at most this long after the end of '
                "the caller's speech.",
            ),
            _threshold(
                "--max-barge-in-stop",
                1.0,
                '`expect = "stop"`: the agent quiet at most this long after the caller barges in.',
            ),
            _threshold(
                "--dead-air",
                2.0,
                "Silence longer than this, while the agent holds the turn, fails no-dead-air "
                "(0: not judged).",
            ),
            click.option(
                "--allow-talk-over",
                is_flag=True,
                help="Do not judge the agent starting to speak while the caller speaks "
                "(no-talk-over).",
            ),
        ]
    ):
        func = decorator(func)
    return func


def conversation_thresholds(options: dict[str, Any]) -> Any:
    """The engines' Thresholds from conversation_options' values (popped from `options`)."""
    from audiosocket_cli.engines.conversation.verdicts import Thresholds

    return Thresholds(
        max_first_response=options.pop("max_first_response"),
        max_response=options.pop("max_response"),
        max_barge_in_stop=options.pop("max_barge_in_stop"),
        dead_air=options.pop("dead_air"),
        talk_over=options.pop("allow_talk_over"),
    )
