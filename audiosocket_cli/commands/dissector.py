"""`audiosocket dissector`: print or install the Wireshark dissector for AudioSocket."""

from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path

import click

from audiosocket_cli.commands.options import Failure

LUA_NAME = "audiosocket.lua"
SOURCE = "dissector.lua"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--install",
    is_flag=True,
    help="Write it into your Wireshark Lua plugin folder instead of printing it.",
)
def dissector(install: bool) -> None:
    """Print the Wireshark dissector for AudioSocket (Lua), or --install it.

    It decodes every message (kind, length, UUID, DTMF digit, error code,
    audio rate and samples), marks what Asterisk refuses and malformed
    messages, and finds AudioSocket on TCP port 9092 and on any port whose
    connection starts with a UUID message. Filter fields: audiosocket.kind,
    .len, .uuid, .digit, .rate, .samples, .error_code, .dir (> or <).

    --install writes it to $XDG_CONFIG_HOME/wireshark/plugins/audiosocket.lua
    (~/.config/wireshark/plugins without XDG_CONFIG_HOME); Wireshark and
    tshark load it on their next start.

    \b
    Examples:
      audiosocket dissector --install
      tshark -r call.pcap -Y 'audiosocket.digit == "5"'
      audiosocket dissector > audiosocket.lua
      tshark -X lua_script:audiosocket.lua -r call.pcap -Y 'audiosocket.kind == 1'
    """
    source = _source()
    if not install:
        sys.stdout.write(source)
        sys.stdout.flush()
        return
    folder = plugin_folder()
    target = folder / LUA_NAME
    # Written beside the target and renamed, so Wireshark never loads half a file.
    partial = folder / f".{LUA_NAME}.partial"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        partial.write_text(source, encoding="utf-8")
        partial.replace(target)
    except OSError as exc:
        try:
            partial.unlink(missing_ok=True)
        except OSError:
            pass
        raise Failure(f"{target}: cannot write: {exc.strerror or exc}") from None
    click.echo(f"installed the AudioSocket dissector as {target}", err=True)


def plugin_folder() -> Path:
    """Wireshark's personal Lua plugin folder (its personal configuration's plugins/)."""
    config = os.environ.get("XDG_CONFIG_HOME")
    base = Path(config) if config else Path.home() / ".config"
    return base / "wireshark" / "plugins"


def _source() -> str:
    try:
        return resources.files("audiosocket_cli.files").joinpath(SOURCE).read_text("utf-8")
    except OSError as exc:
        raise Failure(f"the dissector is missing from this installation: {exc}") from None
