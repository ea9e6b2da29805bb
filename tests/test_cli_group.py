"""The command group: bare help, typos, and the aliases the design promised
(`server` is `listen`, `client` is `dial`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from asterisk_client import AsteriskClient
from click.testing import CliRunner
from conftest import ROOT

from audiosocket_cli.cli import cli


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = dict(env or os.environ)
    full["PYTHONPATH"] = str(ROOT) + os.pathsep + full.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "audiosocket_cli", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=30,
    )


def test_bare_command_prints_the_help_not_an_error() -> None:
    result = run()
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: audiosocket ")
    assert "error" not in result.stderr
    assert "  listen (server) " in result.stdout and "  dial (client) " in result.stdout
    # An alias is listed beside its command, not as a command of its own.
    assert "\n  server " not in result.stdout and "\n  client " not in result.stdout


def test_a_typo_gets_a_suggestion() -> None:
    for typo, meant in (("lisen", "listen"), ("sever", "server"), ("dail", "dial")):
        result = CliRunner().invoke(cli, [typo])
        assert result.exit_code == 2
        assert f"no such command '{typo}'. Did you mean '{meant}'?" in result.stderr
    result = CliRunner().invoke(cli, ["zzzzzz"])
    assert result.exit_code == 2 and "Did you mean" not in result.stderr


def test_aliases_have_the_same_help_and_options() -> None:
    for alias, command in (("server", "listen"), ("client", "dial")):
        mine = CliRunner().invoke(cli, [alias, "--help"]).stdout
        theirs = CliRunner().invoke(cli, [command, "--help"]).stdout
        assert mine.replace(f"cli {alias}", f"cli {command}") == theirs


def test_shell_completion_offers_the_aliases() -> None:
    env = dict(os.environ, _AUDIOSOCKET_COMPLETE="bash_complete", COMP_WORDS="audiosocket s")
    env["COMP_CWORD"] = "1"
    result = run(env=env)
    offered = {line.split(",", 1)[1] for line in result.stdout.splitlines() if "," in line}
    assert {"server"} <= offered
    env["COMP_WORDS"] = "audiosocket c"
    result = run(env=env)
    offered = {line.split(",", 1)[1] for line in result.stdout.splitlines() if "," in line}
    assert {"client", "capture"} <= offered


def test_one_call_through_server_and_client(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    server = subprocess.Popen(
        [sys.executable, "-m", "audiosocket_cli", "server", "127.0.0.1:0", "--echo"]
        + ["--max-calls", "2", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = server.stderr.readline()  # type: ignore[union-attr]
        assert line.startswith("listening on 127.0.0.1:"), line
        port = line.rsplit(":", 1)[1].strip()
        client = run("client", port, "--tone", "300", "--duration", "0.2", "--json", env=env)
        assert client.returncode == 0, client.stderr
        end = [json.loads(x) for x in client.stdout.splitlines()][-1]
        assert end["ended"] == "caller-close" and end["<"]["audio_messages"] >= 9
        with AsteriskClient(("127.0.0.1", int(port))) as caller:
            caller.send_uuid()
            caller.close()
        out, err = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == 0, err
    ends = [json.loads(x) for x in out.splitlines() if '"call-end"' in x]
    assert [e["ended"] for e in ends] == ["caller-close", "caller-close"]
