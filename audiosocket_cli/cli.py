"""The `audiosocket` command group.

Subcommands live one per module in commands/ and are imported only when
run, so that `audiosocket --help` stays fast (no numpy, no rich).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from audiosocket_cli import __version__
from audiosocket_cli.status import ExitStatus, Terminated, raise_on_sigterm

COMMANDS = {
    "listen": ("listen", "Be the application: accept calls from Asterisk."),
    "dial": ("dial", "Be Asterisk: call an AudioSocket application."),
    "play": ("dial", "Be Asterisk and play a file: dial --play FILE in short."),
    "capture": ("capture", "Sit between Asterisk and the application, and record."),
    "replay": ("replay", "Run a recorded call again against an application."),
    "trace": ("trace", "Print saved traces, raw dumps and packet captures."),
    "load": ("load", "Many Asterisk calls at once, with per-period statistics."),
    "check": ("check", "Run the conformance suite against an application."),
    "converse": ("converse", "Hold a scripted conversation with a voice bot and measure it."),
    "report": ("report", "Write an HTML page with plots of each call."),
    "dissector": ("dissector", "Print or install the Wireshark dissector for AudioSocket."),
}
# The design's own words: "a CLI with subcommands for server, client, replay and capture".
ALIASES = {"server": "listen", "client": "dial"}
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*COMMANDS, *ALIASES]  # aliases too, for shell completion

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        name = ALIASES.get(name, name)
        if name not in COMMANDS:
            return None
        module = importlib.import_module(f"audiosocket_cli.commands.{COMMANDS[name][0]}")
        command: click.Command = getattr(module, name)
        return command

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name and self.get_command(ctx, name) is None and not name.startswith("-"):
            import difflib

            close = difflib.get_close_matches(name, [*COMMANDS, *ALIASES], n=1, cutoff=0.6)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise click.UsageError(f"no such command '{name}'.{hint}", ctx)
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help from the table above, so that --help imports no command.
        also = {command: alias for alias, command in ALIASES.items()}
        rows = [
            (f"{name} ({also[name]})" if name in also else name, text)
            for name, (_, text) in COMMANDS.items()
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        raise_on_sigterm()
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("audiosocket: interrupted", err=True)
            ctx.exit(ExitStatus.INTERRUPTED)
        except Terminated:
            click.echo("audiosocket: terminated", err=True)
            ctx.exit(ExitStatus.TERMINATED)
        except BrokenPipeError:
            # `audiosocket trace x | head`: the reader left, which is not an error.
            # Point stdout at /dev/null so the interpreter's last flush is quiet.
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):
                pass
            ctx.exit(ExitStatus.OK)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        # One line on stderr for every user mistake, never a usage dump.
        standalone = kwargs.pop("standalone_mode", True)
        code: int
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)  # type: ignore[call-overload]
        except click.exceptions.NoArgsIsHelpError as exc:
            # Bare `audiosocket`: the help, as a help and not as an error.
            click.echo(exc.ctx.get_help() if exc.ctx else "")
            code = ExitStatus.OK
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            click.echo(f"audiosocket: error: {exc.format_message()}{hint}", err=True)
            code = ExitStatus.USAGE
        except click.ClickException as exc:
            click.echo(f"audiosocket: error: {exc.format_message()}", err=True)
            code = exc.exit_code
        except click.exceptions.Exit as exc:
            code = exc.exit_code
        except click.Abort:
            click.echo("audiosocket: interrupted", err=True)
            code = ExitStatus.INTERRUPTED
        else:
            # click returns ctx.exit()'s status here; commands return None.
            code = result if isinstance(result, int) else ExitStatus.OK
        if standalone:
            sys.exit(code)
        return code


@click.group(cls=LazyGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="audiosocket")
def cli() -> None:
    """Test and debug tool for Asterisk's AudioSocket protocol.

    Stand in for either end of a call, or sit between them, and see every
    frame.

    \b
    Examples:
      audiosocket listen --record calls/ --echo      # be the application
      audiosocket play hello.wav 127.0.0.1:9092      # be Asterisk
      audiosocket capture --upstream 127.0.0.1:9092  # proxy and record
      audiosocket trace call.trace | grep dtmf
    """


def main() -> None:
    # numpy's BLAS starts a thread per core that spins after each call; the tool's
    # vectors are a frame long, so those threads only cost CPU that calls need.
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    cli.main(prog_name="audiosocket")
