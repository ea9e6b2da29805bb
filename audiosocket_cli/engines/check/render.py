"""`check`'s results rendered: a plain line, a JSON line, JUnit XML, a terminal table."""

from __future__ import annotations

import json
from typing import TextIO

from audiosocket_cli.engines.check.results import (
    FAIL,
    PASS,
    SECTIONS,
    SKIP,
    WARN,
    Report,
    Result,
)


def plain_line(result: Result) -> str:
    return f"{result.id} {result.verdict.upper()} {result.name}: {result.reason}"


def json_line(result: Result) -> str:
    return json.dumps(result.as_dict(), ensure_ascii=False)


def junit_xml(report: Report, strict: bool = False) -> bytes:
    """JUnit XML: a testsuite per section, a testcase per case. fail is a <failure>;
    warn is a property and a system-out line (a <failure> too with --strict)."""
    import xml.etree.ElementTree as ET

    root = ET.Element("testsuites", name="audiosocket check")
    total = {"tests": 0, "failures": 0, "time": 0.0}
    for section, title in SECTIONS.items():
        results = [r for r in report.results if r.section == section]
        if not results:
            continue
        suite = ET.SubElement(root, "testsuite", name=f"{section}. {title}")
        failures = 0
        skipped_count = 0
        for r in results:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"audiosocket.check.section{section}",
                name=f"{r.id} {r.name}",
                time=f"{r.duration:.3f}",
            )
            props = ET.SubElement(case, "properties")
            ET.SubElement(props, "property", name="verdict", value=r.verdict)
            if r.t is not None:
                ET.SubElement(props, "property", name="t", value=f"{r.t:.6f}")
            detail = f"{r.reason}\n{r.evidence}".strip()
            if r.verdict == SKIP:
                skipped_count += 1
                skip = ET.SubElement(case, "skipped", message=r.reason)
                skip.text = r.reason
            elif r.verdict == FAIL or (strict and r.verdict == WARN):
                failures += 1
                failure = ET.SubElement(case, "failure", message=r.reason, type=r.verdict)
                failure.text = detail
            elif r.verdict == WARN:
                out = ET.SubElement(case, "system-out")
                out.text = f"WARN: {detail}"
            else:
                out = ET.SubElement(case, "system-out")
                out.text = f"PASS: {detail}"
        duration = sum(r.duration for r in results)
        suite.set("tests", str(len(results)))
        suite.set("failures", str(failures))
        suite.set("errors", "0")
        suite.set("skipped", str(skipped_count))
        suite.set("time", f"{duration:.3f}")
        total["tests"] += len(results)
        total["failures"] += failures
        total["time"] += duration
    root.set("tests", str(total["tests"]))
    root.set("failures", str(total["failures"]))
    root.set("errors", "0")
    root.set("time", f"{report.duration:.3f}")
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


STYLES = {PASS: "green", WARN: "yellow", FAIL: "bold red", SKIP: "dim"}


def print_table(report: Report, stream: TextIO, color: bool = True) -> None:
    """The terminal form: a table per section, then the summary."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=stream, no_color=not color, highlight=False)
    for section, title in SECTIONS.items():
        results = [r for r in report.results if r.section == section]
        if not results:
            continue
        table = Table(title=f"{section}. {title}", title_justify="left", expand=True)
        table.add_column("case", no_wrap=True)
        table.add_column("verdict", no_wrap=True)
        table.add_column("name")
        table.add_column("reason and evidence", ratio=3)
        for r in results:
            text = _escape(r.reason)
            if r.evidence:
                text += f"\n[dim]{_escape(r.evidence)}[/dim]"
            table.add_row(r.id, f"[{STYLES[r.verdict]}]{r.verdict}[/]", _escape(r.name), text)
        console.print(table)
    if report.halted:
        console.print(f"[bold red]{_escape(report.halted)}[/]")
    failed_any = report.failed()
    style = "bold red" if failed_any else "green"
    console.print(f"[{style}]{_escape(report.summary())}[/]")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
