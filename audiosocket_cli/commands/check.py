"""`audiosocket check ADDRESS`: the conformance and robustness suite.

Flags are checked here and the results printed in the form the terminal or
the flags ask for; the cases, the runner and the verdicts are
engines.check's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from audiosocket_cli.commands.options import (
    AddressType,
    Failure,
    asterisk_rules,
    call_uuids,
    placing_options,
)
from audiosocket_cli.output.sinks import Environment
from audiosocket_cli.status import ExitStatus

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("address", required=False, type=AddressType(default_port=9092, client=True))
@click.option(
    "--case",
    "case_ids",
    metavar="ID",
    multiple=True,
    help="Run only this case (2.3), or this section (2). Repeatable.",
)
@click.option("--list", "list_only", is_flag=True, help="Print the cases, one a line, and exit.")
@click.option("--json", "json_lines", is_flag=True, help="One JSON object per case on stdout.")
@click.option(
    "--junit",
    "junit_path",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="Also write the results as JUnit XML (a testsuite per section) for CI.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="S",
    default=5.0,
    show_default=True,
    help="How long a case may outlive its plan before it is abandoned (and fails).",
)
@click.option(
    "--answer-timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="S",
    default=5.0,
    show_default=True,
    help="How long the application may take to answer a call (a greeting, a reply): "
    "each call goes on, as a caller's would, until it answers or this passes.",
)
@click.option(
    "--parallel",
    type=click.IntRange(min=1),
    metavar="N",
    default=1,
    show_default=True,
    help="Run up to N cases of sections 1 and 2 at once (faster, for applications that "
    "serve many calls); 1 runs one case at a time, checking the application between them.",
)
@placing_options
@click.option("--strict", is_flag=True, help="Count warnings as failures (exit 3).")
def check(
    address: Any,
    case_ids: tuple[str, ...],
    list_only: bool,
    json_lines: bool,
    junit_path: str | None,
    timeout: float,
    answer_timeout: float,
    parallel: int,
    call_uuid: str | None,
    uuid_pattern: str | None,
    before_call: str | None,
    strict: bool,
) -> None:
    """Run numbered conformance cases against the AudioSocket application at ADDRESS.

    Each case is one short call placed as Asterisk places it, judged as
    Asterisk judges what the application sends. A case ends pass, warn
    (legal, but unlike what works well with Asterisk), fail (Asterisk
    would refuse it, the application broke, or its audio would be heard
    wrong) or skip (the application died or refused calls earlier: said
    once, at the case where it happened), with a one-line reason and the
    evidence. Sections: 1 framing, 2 a real Asterisk call, 3 what the
    application sends back, 4 a hostile peer (robustness, counted apart).
    Cases run one at a time, the application checked alive between them,
    so two runs give the same verdicts; a full run takes about 45 s.

    \b
    Examples:
      audiosocket check 127.0.0.1:9092
      audiosocket check 9092 --case 2.7 --case 2.8     # only the hangup cases
      audiosocket check 9092 --case 3                  # a whole section
      audiosocket check 9092 --json | jq -c 'select(.verdict != "pass")'
      audiosocket check 9092 --junit check.xml --strict
      audiosocket check 9092 --before-call 'curl -sf -X POST localhost:8080/calls/$AUDIOSOCKET_UUID'
      audiosocket check --list

    On a terminal: a table per section and a summary. Piped: one line per
    case, `ID VERDICT name: reason`.

    Exit status: 0 when no case failed; 3 when one did (with --strict, a
    warning too); 1 when the application could not be reached at all; 2 on a
    usage error.
    """
    from audiosocket_cli.engines import check as engine

    env = Environment()
    out = env.stdout
    if list_only:
        for line in engine.case_list():
            click.echo(line, file=out)
        return
    if address is None:
        raise click.UsageError("missing argument 'ADDRESS' (or --list)")
    try:
        cases = engine.select_cases(case_ids) if case_ids else list(engine.CASES)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--case'") from None
    uuids = call_uuids(call_uuid, uuid_pattern)
    if junit_path is not None:
        _check_writable(Path(junit_path))

    table = env.stdout_isatty and not json_lines

    def on_result(result: Any) -> None:
        if json_lines:
            click.echo(engine.json_line(result), file=out)
        elif not table:
            click.echo(engine.plain_line(result), file=out)
        out.flush()

    def on_phase(name: str) -> None:
        if table:
            click.echo(f"checking {address}: {name} ...", file=env.stderr)

    try:
        report = engine.run_check(
            address,
            cases,
            rules=asterisk_rules(lenient=True),
            timeout=timeout,
            answer_timeout=answer_timeout,
            parallel=parallel,
            uuids=uuids,
            before_call=before_call,
            on_result=on_result,
            on_phase=on_phase,
        )
    except engine.Unreachable as exc:
        raise Failure(f"the application could not be reached: {exc}") from None
    if table:
        engine.print_table(report, out, color=env.color)
    else:
        if report.halted:
            click.echo(f"audiosocket: check: {report.halted}", file=env.stderr)
        click.echo(f"audiosocket: check: {report.summary()}", file=env.stderr)
    if junit_path is not None:
        try:
            Path(junit_path).write_bytes(engine.junit_xml(report, strict=strict))
        except OSError as exc:
            raise Failure(f"{junit_path}: cannot write: {exc.strerror or exc}") from None
    if report.failed(strict):
        click.get_current_context().exit(ExitStatus.PROTOCOL)


def _check_writable(path: Path) -> None:
    """A JUnit file that cannot be written is a one-line failure before any call."""
    try:
        with path.open("ab"):
            pass
    except OSError as exc:
        raise Failure(f"{path}: cannot write: {exc.strerror or exc}") from None
