"""The report's HTML page, one self-contained file: the load runs' sections first,
then a table of the calls, then per call its facts, diagnoses with their evidence,
its conversation (a `converse` call: lanes, latencies, barge-ins, expectations),
figures, audio (embedded, or in WAV files beside the page when long) and summary."""

from __future__ import annotations

import base64
import datetime
import html
import os
from collections.abc import Sequence
from pathlib import Path

from audiosocket_cli import __version__
from audiosocket_cli.analysis.stats import SUMMARY_ROWS, DirectionStats
from audiosocket_cli.engines.report.calls import CallData
from audiosocket_cli.engines.report.common import DIR_NAMES, DIR_SIDES, DIRECTIONS, ReportError
from audiosocket_cli.engines.report.conversation import ConversationData
from audiosocket_cli.engines.report.conversation_plots import conversation_svg
from audiosocket_cli.engines.report.load import LoadRun, _load_section
from audiosocket_cli.engines.report.plots import histograms_svg, timeline_svg
from audiosocket_cli.engines.report.progress import _Progress

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}
h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
h3{font-size:1em;margin-bottom:.3em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right;vertical-align:top}
th{background:#f4f4f4}td.l,th.l{text-align:left}
dl{display:grid;grid-template-columns:max-content auto;gap:.15em 1em;font-size:.9em}
dt{color:#666}dd{margin:0;font-family:ui-monospace,monospace}
.plot{width:100%;height:auto;display:block}
.in{color:#1f77b4}.out{color:#d95f02}.muted{color:#888}
.finding{margin:.3em 0}.code{font-family:ui-monospace,monospace;font-weight:bold}
.none{color:#2ca02c}.wide{overflow-x:auto}table.calls{font-size:.8em}
audio{vertical-align:middle;margin:.2em 0}
.pass{color:#2ca02c;font-weight:bold}.fail{color:#d62728;font-weight:bold}
.tables{display:flex;flex-wrap:wrap;gap:0 1.5em;align-items:flex-start}
"""


def render_page(
    calls: list[CallData],
    inputs: Sequence[str],
    out: Path,
    tmp: Path,
    embed_seconds: float,
    bar: _Progress,
    loads: Sequence[LoadRun] = (),
) -> tuple[str, list[Path]]:
    esc = html.escape
    runs = f"{len(loads)} load run(s), " if loads else ""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>AudioSocket report: {esc(', '.join(inputs))}</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>AudioSocket report</h1>",
        f'<p class="muted">{esc(", ".join(inputs))}: {runs}{len(calls)} call(s). '
        f"Written by audiosocket-cli {esc(__version__)} on "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.</p>",
    ]
    # Load runs first: the whole run before any one call of it.
    parts += [_load_section(run) for run in loads]
    if calls:
        parts.append(_calls_table(calls))
    audio_files: list[Path] = []
    for done, call in enumerate(calls):
        bar.plotting(done, len(calls))
        parts.append(_call_section(call, out, tmp, embed_seconds, audio_files))
    bar.plotting(len(calls), len(calls))
    parts.append("</body></html>\n")
    return "\n".join(parts), audio_files


def _gaps(stats: DirectionStats) -> str:
    mean = stats.mean_gap
    return "-" if mean is None else f"{mean * 1000:.1f}/{stats.max_gap * 1000:.1f}"


CALLS_TABLE_ROWS = (
    ("messages", lambda s: str(s.messages)),
    ("bytes", lambda s: str(s.wire_bytes)),
    ("audio s", lambda s: f"{s.audio_seconds:.2f}"),
    ("rates", lambda s: ",".join(str(r) for r in s.rates) or "-"),
    ("dtmf", lambda s: s.digits or "-"),
    ("gaps ms mean/worst", _gaps),
)


def _calls_table(calls: list[CallData]) -> str:
    esc = html.escape
    # The input column only where calls come from several inputs: the table is wide.
    several = len({call.source for call in calls}) > 1
    head = "".join(f"<th>{esc(name)}</th>" for name, _ in CALLS_TABLE_ROWS)
    rows = [
        '<div class="wide"><table class="calls"><tr>'
        '<th class="l" rowspan="2">call</th>'
        + ('<th class="l" rowspan="2">input</th>' if several else "")
        + '<th rowspan="2">duration s</th><th class="l" rowspan="2">ended</th>'
        '<th rowspan="2">findings</th>'
        f'<th colspan="{len(CALLS_TABLE_ROWS)}" class="in">&gt; to application</th>'
        f'<th colspan="{len(CALLS_TABLE_ROWS)}" class="out">&lt; to Asterisk</th></tr>',
        f"<tr>{head}{head}</tr>",
    ]
    for call in calls:
        short = call.call_id if call.call_id.startswith("#") else call.call_id[:8]
        cells = [
            f'<td class="l"><a href="#{call.anchor}" title="{esc(call.call_id)}">'
            f"{esc(short)}</a></td>",
            f'<td class="l">{esc(call.source)}</td>' if several else "",
            f"<td>{call.duration:.2f}</td>",
            f'<td class="l">{esc(call.ended or "-")}</td>',
            f"<td>{len(call.findings()) or '-'}</td>",
        ]
        for d in DIRECTIONS:
            stats = call.dirs[d].stats
            cells += [f"<td>{esc(cell(stats))}</td>" for _, cell in CALLS_TABLE_ROWS]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    rows.append("</table></div>")
    return "\n".join(rows)


def _call_section(
    call: CallData, out: Path, tmp: Path, embed_seconds: float, audio_files: list[Path]
) -> str:
    esc = html.escape
    parts = [f'<section id="{call.anchor}">', f"<h2>Call {esc(call.call_id)}</h2>"]
    facts: list[tuple[str, str]] = [
        ("uuid", call.uuid or "- (no UUID message)"),
        ("input", f"{call.source}, connection #{call.conn}"),
    ]
    for key in ("peer", "server", "upstream"):
        if call.start_fields.get(key):
            facts.append((key, str(call.start_fields[key])))
    if call.start_ts:
        started = datetime.datetime.fromtimestamp(call.start_ts, datetime.timezone.utc)
        facts.append(("started", f"{started:%Y-%m-%d %H:%M:%S.%f}"[:-3] + " UTC"))
    facts.append(("duration", f"{call.duration:.3f} s"))
    rates = sorted(set(call.dirs[">"].stats.rates) | set(call.dirs["<"].stats.rates))
    facts.append(("rates", ", ".join(f"{r} Hz" for r in rates) or "-"))
    ended = call.ended or ("-" if not call.end_fields else "")
    detail = call.end_fields.get("detail")
    if detail:
        ended += f" ({detail})"
    elif call.end_text and not call.ended:
        ended = call.end_text
    facts.append(("ended", ended or "- (no call-end in the input)"))
    for d in DIRECTIONS:
        facts.append((f"{d} {DIR_NAMES[d]}", call.dirs[d].stats.summary()))
    if call.warnings:
        facts.append(("warnings", str(call.warnings)))
    conversation = call.conversation
    if conversation is not None and conversation.present:
        failed = len(conversation.failed)
        verdicts = f"{len(conversation.verdicts) - failed} pass, {failed} fail"
        facts.append(("scenario", conversation.scenario or "-"))
        facts.append(("expectations", verdicts))
    parts.append(
        "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts) + "</dl>"
    )
    parts.append("<h3>Diagnoses</h3>")
    findings = call.findings()
    if not findings:
        parts.append('<p class="none">None: nothing known to go wrong was seen.</p>')
    for finding in findings:
        when = f" at {finding.t:.3f} s" if finding.t is not None else ""
        evidence = (
            f'<br><span class="muted">evidence: {esc(finding.evidence)}</span>'
            if finding.evidence
            else ""
        )
        parts.append(
            f'<p class="finding"><span class="code">{esc(finding.code)}</span> '
            f'<span class="muted">({esc(finding.source)}{when})</span>: '
            f"{esc(finding.text)}{evidence}</p>"
        )
    if conversation is not None and conversation.present:
        parts.append(_conversation_html(call, conversation))
    parts.append("<h3>Timeline</h3>")
    parts.append(timeline_svg(call, f"c{call.number}t-"))
    if call.dropped_markers:
        parts.append(f'<p class="muted">{call.dropped_markers} more events not drawn.</p>')
    parts.append("<h3>Jitter and frame sizes</h3>")
    parts.append(histograms_svg(call, f"c{call.number}h-"))
    parts.append("<h3>Audio</h3>")
    parts.append(_audio_html(call, out, embed_seconds, audio_files))
    parts.append(_summary_table(call))
    parts.append("</section>")
    return "\n".join(parts)


def _conversation_html(call: CallData, conversation: ConversationData) -> str:
    """The conversation: its figures, its lanes, each turn and barge-in, each verdict."""
    esc = html.escape

    def s(value: float | None, signed: bool = False) -> str:
        if value is None:
            return "-"
        return f"{value:+.3f}" if signed else f"{value:.3f}"

    parts = ["<h3>Conversation</h3>"]
    if conversation.summary:
        parts.append(f"<p>{esc(conversation.summary)}</p>")
    parts.append(conversation_svg(call, conversation, f"c{call.number}v-"))
    if not conversation.agent_measured:
        parts.append(
            '<p class="muted">The agent\'s speech is drawn from the turn events (each reply '
            "and the seconds the agent spoke after it): the input has no call-start naming "
            "a scenario, so its audio was not measured.</p>"
        )
    figures = "".join(
        f'<tr><th class="l">{esc(k)}</th><td>{esc(v)}</td></tr>'
        for k, v in conversation.figure_rows()
    )
    parts.append(f'<div class="tables"><table class="conversation">{figures}</table><div>')
    if conversation.turns:
        rows = [
            '<table class="turns"><tr><th>turn</th><th class="l">step</th>'
            '<th class="l">action</th><th>caller spoke s</th><th>agent replied s</th>'
            "<th>latency s</th><th>agent spoke s</th><th>talk-over</th></tr>"
        ]
        for t in conversation.turns:
            rows.append(
                f"<tr><td>{t.turn}</td><td class='l'>{esc(t.label)}</td>"
                f"<td class='l'>{esc(t.action)}</td>"
                f"<td>{t.caller_start:.3f}-{t.caller_end:.3f}</td><td>{s(t.agent_start)}</td>"
                f"<td>{s(t.latency, signed=True)}</td><td>{t.agent_speech:.3f}</td>"
                f"<td>{'yes' if t.talk_over else '-'}</td></tr>"
            )
        rows.append("</table>")
        parts.append("".join(rows))
    if conversation.barge_ins:
        rows = [
            '<table class="barge-ins"><tr><th>turn</th><th class="l">step</th>'
            "<th>caller began s</th><th>agent's speech began s</th><th>agent stopped s</th>"
            "<th>stop time s</th></tr>"
        ]
        for b in conversation.barge_ins:
            stopped = s(b.stopped_at) if b.stopped else "still speaking at the end"
            if b.agent_start is None:
                stopped = "the agent was quiet"
            rows.append(
                f"<tr><td>{b.turn}</td><td class='l'>{esc(b.step_name)}</td>"
                f"<td>{b.at:.3f}</td><td>{s(b.agent_start)}</td><td>{esc(stopped)}</td>"
                f"<td>{s(b.stop_time)}</td></tr>"
            )
        rows.append("</table>")
        parts.append("".join(rows))
    parts.append("</div></div>")
    if conversation.verdicts:
        rows = [
            '<table class="expectations"><tr><th></th><th class="l">expectation</th>'
            '<th class="l">evidence</th></tr>'
        ]
        for v in conversation.verdicts:
            verdict = '<td class="pass">PASS</td>' if v.passed else '<td class="fail">FAIL</td>'
            rows.append(
                f'<tr>{verdict}<td class="l">{esc(v.name)}</td>'
                f'<td class="l">{esc(v.evidence)}</td></tr>'
            )
        rows.append("</table>")
        parts.append("".join(rows))
    return "\n".join(parts)


def _audio_html(call: CallData, out: Path, embed_seconds: float, audio_files: list[Path]) -> str:
    esc = html.escape
    lines = []
    for d in DIRECTIONS:
        data = call.dirs[d]
        if not data.wavs:
            lines.append(
                f'<p><span class="{DIR_SIDES[d]}">{esc(d)} {DIR_NAMES[d]}</span>: no audio</p>'
            )
            continue
        for rate, writer in data.wavs.items():
            seconds = writer.samples / rate
            side = f'<span class="{DIR_SIDES[d]}">{esc(d)} {DIR_NAMES[d]}</span>'
            what = f"{side}, {rate} Hz, {seconds:.2f} s"
            if seconds <= embed_seconds:
                encoded = base64.b64encode(writer.path.read_bytes()).decode("ascii")
                lines.append(
                    f'<p>{what}: <audio controls preload="metadata" '
                    f'src="data:audio/wav;base64,{encoded}"></audio></p>'
                )
                continue
            folder = out.parent / f"{out.stem}-audio"
            try:
                folder.mkdir(exist_ok=True)
                target = (
                    folder
                    / f"{call.call_id.replace('#', 'conn')}.{writer.path.name.split('.', 1)[1]}"
                )
                os.replace(writer.path, target)
            except OSError as exc:
                raise ReportError(f"{folder}: cannot write: {exc.strerror or exc}") from None
            audio_files.append(target)
            href = f"{folder.name}/{target.name}"
            lines.append(
                f"<p>{what}: longer than {embed_seconds:g} s, so beside the page: "
                f'<a href="{esc(href)}">{esc(href)}</a> '
                f'<audio controls preload="none" src="{esc(href)}"></audio></p>'
            )
    return "\n".join(lines)


def _summary_table(call: CallData) -> str:
    esc = html.escape
    rows = [
        "<h3>Summary</h3><table>",
        '<tr><th></th><th class="in">&gt; to application</th>'
        '<th class="out">&lt; to Asterisk</th></tr>',
    ]
    for label, cell in SUMMARY_ROWS:
        a, b = (cell(call.dirs[d].stats) for d in DIRECTIONS)
        rows.append(f'<tr><th class="l">{esc(label)}</th><td>{esc(a)}</td><td>{esc(b)}</td></tr>')
    rows.append("</table>")
    return "\n".join(rows)
