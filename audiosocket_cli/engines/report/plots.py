"""The report's figures, as inline SVG from matplotlib (Agg): a call's timeline and
histograms, a load run's periods; each series decimated to at most MAX_POINTS
points. A conversation's figures are in conversation_plots, on these helpers.

numpy and matplotlib are imported inside the functions that use them.
"""

from __future__ import annotations

import io
import math
import re
from typing import TYPE_CHECKING, Any

from audiosocket_cli.engines.report.calls import (
    COARSE,
    FINE,
    FRAME_MS,
    GAP_MARK,
    MAX_MARKERS,
    CallData,
    DirectionData,
    Marker,
    burst_spans,
)
from audiosocket_cli.engines.report.common import DIR_NAMES, DIRECTIONS

if TYPE_CHECKING:
    from audiosocket_cli.engines.report.load import LoadRun

MAX_POINTS = 1500  # per plotted series: a plot is about 1100 px wide
MAX_LABELS = 40  # marker labels written per call, so that text stays legible
COLORS = {">": "#1f77b4", "<": "#d95f02"}
REF_COLOR = "#2ca02c"  # the 20 ms line
MARK_COLOR = "#d62728"  # gaps and bursts
EVENT_COLORS = {
    "dtmf": "#7b3294",
    "error": "#d62728",
    "hangup": "#000000",
    "warning": "#e6ab02",
    "diagnosis": "#e6ab02",
    "uuid": "#666666",
    "problem": "#d62728",
}
LOAD_COLORS = {
    "active": "#333333",
    "started": REF_COLOR,
    "ended": "#7b3294",
    "failed": MARK_COLOR,
    "p50": COLORS[">"],
    "p95": "#7570b3",
    "p99": COLORS["<"],
    "max": MARK_COLOR,
    "first": REF_COLOR,  # time to first response
}


def _matplotlib() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "svg.fonttype": "none",  # text stays text: smaller, and searchable in the page
            "svg.hashsalt": "audiosocket-report",  # same input, same page
            "font.size": 9,
            "axes.titlesize": 9,
            "axes.titlelocation": "left",
            "axes.spines.top": False,
            "axes.spines.right": False,
            "path.simplify": True,
        }
    )
    return plt


def _decimate(n: int) -> int:
    """Group size that brings n points down to at most MAX_POINTS."""
    return max(1, -(-n // MAX_POINTS))


def _grouped(values: Any, group: int, fill: float, reduce: Any) -> Any:
    import numpy as np

    if group == 1:
        return values
    pad = (-values.size) % group
    padded = np.concatenate((values, np.full(pad, fill, dtype=values.dtype)))
    return reduce(padded.reshape(-1, group), axis=1)


def level_series(data: DirectionData, span: float) -> tuple[Any, Any]:
    """(seconds, dBFS) per 100 ms bin, or coarser for long calls; NaN where no audio."""
    import numpy as np

    bins = min(data.sumsq.size, int(math.ceil(span / COARSE)) + 1)
    group = _decimate(bins)
    energy = _grouped(data.sumsq[:bins], group, 0.0, np.sum)
    count = _grouped(data.nsamples[:bins], group, 0.0, np.sum)
    with np.errstate(divide="ignore", invalid="ignore"):
        level = 10 * np.log10(energy / count / (32768.0 * 32768.0))
    level = np.where(count > 0, np.maximum(level, -100.0), np.nan)
    x = (np.arange(level.size) + 0.5) * COARSE * group
    return x, level


def envelope_series(data: DirectionData, span: float) -> tuple[Any, Any, Any]:
    """(seconds, min, max) of the samples, full scale 1, NaN where no audio."""
    import numpy as np

    bins = min(data.env_min.size, int(math.ceil(span / FINE)) + 1)
    group = _decimate(bins)
    low = _grouped(data.env_min[:bins], group, 32767, np.min).astype(np.float64)
    high = _grouped(data.env_max[:bins], group, -32768, np.max).astype(np.float64)
    empty = low > high
    low[empty] = np.nan
    high[empty] = np.nan
    x = (np.arange(low.size) + 0.5) * FINE * group
    return x, low / 32768, high / 32768


def gap_series(data: DirectionData) -> tuple[Any, Any, Any]:
    """(arrival time, shortest gap, longest gap) in ms per group of arrivals."""
    import numpy as np

    times = np.frombuffer(data.times, dtype=np.float64)
    if times.size < 2:
        empty = np.zeros(0)
        return empty, empty, empty
    gaps = np.diff(times) * 1000
    x = times[1:]
    group = _decimate(gaps.size)
    if group == 1:
        return x, gaps, gaps
    low = _grouped(gaps, group, np.inf, np.min)
    high = _grouped(gaps, group, -np.inf, np.max)
    return x[::group], low, high


def jitter_values(data: DirectionData) -> Any:
    """Each inter-arrival time less the audio the message before carried, in ms."""
    import numpy as np

    times = np.frombuffer(data.times, dtype=np.float64)
    if times.size < 2:
        return np.zeros(0)
    durations = np.asarray(data.durations, dtype=np.float64)
    return (np.diff(times) - durations[:-1]) * 1000


def _time_formatter(span: float) -> Any:
    from matplotlib.ticker import FuncFormatter

    if span < 300:
        return FuncFormatter(lambda v, _: f"{v:g}")
    return FuncFormatter(lambda v, _: f"{int(v // 60)}:{int(v % 60):02d}")


def log_tick_values(low: float, high: float, room: int = 8) -> list[float]:
    """Major ticks of a log axis from low to high, at most `room` of them: 1, 2 and 5
    times each power of ten if they fit, else 1 and 3 times, else the powers of ten
    (every other one, or fewer, if even those do not fit). A range holding none of
    these gets round values 1, 2 or 5 apart instead, so that it has a label."""
    low, high = sorted((low, high))
    if not (math.isfinite(high) and high > 0):
        return []
    low = max(low, high * 1e-12)
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    bottom, top = low * (1 - 1e-9), high * (1 + 1e-9)  # ends within rounding count
    ticks: list[float] = []
    choices = [((1, 2, 5), 1), ((1, 3), 1)] + [((1,), n) for n in range(1, last - first + 2)]
    for subs, stride in choices:
        ticks = [
            m * 10.0**e
            for e in range(first - first % stride, last + 1, stride)
            for m in subs
            if bottom <= m * 10.0**e <= top
        ]
        if len(ticks) <= max(room, 2):
            break
    if ticks:
        return ticks
    step = 10.0 ** math.floor(math.log10((high - low) / 3 or high))
    step *= next((m for m in (1, 2, 5) if (high - low) / (m * step) <= 4), 10)
    return [n * step for n in range(math.ceil(low / step), math.floor(high / step) + 1)]


def plain_number(value: float) -> str:
    """A tick label as a plain number: 0.1, 20, 1,000; never 10^3 or 2.46 x 10^1."""
    return f"{value:,.6f}".rstrip("0").rstrip(".")


def _log_axis(axis: Any) -> None:
    """A log axis readable at a glance: major ticks only (log_tick_values, as many as fit),
    each labelled as a plain number; no minor ticks, so no crowded minor labels."""
    from matplotlib.ticker import FuncFormatter, Locator, NullLocator

    class NiceLogLocator(Locator):
        def __call__(self) -> list[float]:
            assert self.axis is not None
            low, high = self.axis.get_view_interval()
            # As many labels as the axis has room for at its size and font.
            return log_tick_values(low, high, self.axis.get_tick_space())

        def tick_values(self, vmin: float, vmax: float) -> list[float]:
            return log_tick_values(vmin, vmax)

    axis.set_major_locator(NiceLogLocator())
    axis.set_major_formatter(FuncFormatter(lambda value, _: plain_number(value)))
    axis.set_minor_locator(NullLocator())


def _count_axis(ax: Any, most: int) -> None:
    """A histogram's count axis, log scale: bars rise from below 1, so that a single bar
    (every message one size) stands as tall as its count and the axis spans a decade."""
    ax.set_yscale("log")
    _log_axis(ax.yaxis)
    ax.set_ylim(0.7, max(most, 1) * 1.6)


def timeline_svg(call: CallData, prefix: str) -> str:
    """Events, then per direction: level, waveform envelope and arrival gaps, one time axis."""
    plt = _matplotlib()
    span = max(call.duration, 0.1)
    ratios = [0.9] + [1.0, 1.0, 1.3] * 2
    fig, axes = plt.subplots(
        7,
        1,
        figsize=(12, 12),
        sharex=True,
        gridspec_kw={"height_ratios": ratios, "hspace": 0.45},
    )
    try:
        _events_axis(axes[0], call)
        for row, d in enumerate(DIRECTIONS):
            data = call.dirs[d]
            color = COLORS[d]
            name = f"{d} {DIR_NAMES[d]}"
            level_ax, wave_ax, gap_ax = axes[1 + 3 * row : 4 + 3 * row]
            x, level = level_series(data, span)
            level_ax.plot(x, level, color=color, linewidth=1.0)
            level_ax.set_ylim(-100, 0)
            level_ax.set_ylabel("dBFS")
            level_ax.set_title(f"{name}: level (RMS per {COARSE * 1000:.0f} ms)")
            level_ax.grid(True, axis="y", color="#dddddd", linewidth=0.5)
            x, low, high = envelope_series(data, span)
            if x.size:
                wave_ax.fill_between(x, low, high, color=color, linewidth=0.4, edgecolor=color)
            wave_ax.set_ylim(-1, 1)
            wave_ax.set_ylabel("sample")
            wave_ax.set_title(f"{name}: waveform (min/max envelope)")
            wave_ax.axhline(0, color="#cccccc", linewidth=0.5)
            _gap_axis(gap_ax, data, color, name)
            for marker in call.markers:
                if marker.kind in ("hangup", "error") or (
                    marker.dir == d and marker.kind == "dtmf"
                ):
                    for ax in (level_ax, wave_ax):
                        ax.axvline(
                            marker.t, color=EVENT_COLORS[marker.kind], linewidth=0.8, alpha=0.6
                        )
        axes[-1].set_xlim(0, span)
        axes[-1].xaxis.set_major_formatter(_time_formatter(span))
        axes[-1].set_xlabel(
            "time from call start (s)" if span < 300 else "time from call start (m:ss)"
        )
        for ax in axes[:-1]:
            ax.tick_params(labelbottom=True)
        fig.subplots_adjust(left=0.07, right=0.98, top=0.98, bottom=0.04)
        return _svg(fig, prefix)
    finally:
        plt.close(fig)


def _events_axis(ax: Any, call: CallData) -> None:
    rows = {">": 2, "<": 1, "-": 0}
    ax.set_ylim(-0.6, 2.8)
    ax.set_yticks([2, 1, 0], ["> in", "< out", "events"])
    ax.set_title("messages other than audio, warnings and diagnoses")
    ax.grid(True, axis="y", color="#eeeeee", linewidth=0.5)
    if not call.markers:
        ax.text(0.5, 0.5, "none", transform=ax.transAxes, ha="center", va="center", color="#888888")
        return
    by_kind: dict[str, list[Marker]] = {}
    for marker in call.markers:
        by_kind.setdefault(marker.kind, []).append(marker)
    for kind, markers in by_kind.items():
        ax.scatter(
            [m.t for m in markers],
            [rows.get(m.dir, 0) for m in markers],
            color=EVENT_COLORS[kind],
            marker="v" if kind in ("hangup", "error") else "o",
            s=28,
            zorder=3,
            label=kind,
        )
    span = max(call.duration, 0.1)
    for marker in call.markers[:MAX_LABELS]:
        # Near the right edge the label goes to the left of its marker, inside the plot.
        right = marker.t > 0.85 * span
        ax.annotate(
            marker.label,
            (marker.t, rows.get(marker.dir, 0)),
            xytext=(-3 if right else 3, 4),
            textcoords="offset points",
            ha="right" if right else "left",
            fontsize=8,
            color=EVENT_COLORS[marker.kind],
        )
    _legend(ax, len(by_kind))


def _gap_axis(ax: Any, data: DirectionData, color: str, name: str) -> None:
    import numpy as np

    ax.set_title(f"{name}: time between audio messages (ms, log)")
    ax.set_yscale("log")
    _log_axis(ax.yaxis)
    ax.set_ylabel("ms")
    ax.axhline(FRAME_MS, color=REF_COLOR, linestyle="--", linewidth=1.0, label="20 ms")
    x, low, high = gap_series(data)
    if x.size:
        low = np.maximum(low, 0.1)  # a burst's 0 ms drawn at the bottom of the log scale
        high = np.maximum(high, 0.1)
        if low is high or np.array_equal(low, high):
            ax.plot(x, high, color=color, linewidth=0.8, marker=".", markersize=2)
        else:
            ax.fill_between(x, low, high, color=color, alpha=0.35, linewidth=0)
            ax.plot(x, high, color=color, linewidth=0.8)
        top = max(float(np.nanmax(high)) * 2, 100.0)
        ax.set_ylim(0.08, top)
    else:
        ax.set_ylim(0.08, 1000)
        ax.text(0.5, 0.5, "no audio", transform=ax.transAxes, ha="center", color="#888888")
    times = np.frombuffer(data.times, dtype=np.float64)
    if times.size >= 2:
        gaps = np.diff(times)
        big = np.flatnonzero(gaps > GAP_MARK)
        if big.size:
            shown = big[np.argsort(gaps[big])[::-1][:MAX_LABELS]]
            ax.scatter(
                times[shown + 1],
                gaps[shown] * 1000,
                color=MARK_COLOR,
                marker="^",
                s=24,
                zorder=3,
                label=f"gap > {GAP_MARK * 1000:.0f} ms ({big.size})",
            )
            for i in shown[:10]:
                ax.annotate(
                    f"{gaps[i] * 1000:.0f} ms",
                    (times[i + 1], gaps[i] * 1000),
                    xytext=(3, -10),
                    textcoords="offset points",
                    fontsize=7,
                    color=MARK_COLOR,
                )
    spans = burst_spans(data)
    if spans:
        # A burst is a few ms wide on an hour's axis: a marker at the bottom shows where.
        for start, end in spans[:MAX_MARKERS]:
            ax.axvspan(start, max(end, start + 0.02), color=MARK_COLOR, alpha=0.18, linewidth=0)
        ax.scatter(
            [start for start, _ in spans[:MAX_MARKERS]],
            [0.12] * min(len(spans), MAX_MARKERS),
            color=MARK_COLOR,
            marker="v",
            s=24,
            zorder=3,
            label=f"burst ({len(spans)})",
        )
    _legend(ax, 3)


def _legend(ax: Any, columns: int) -> None:
    """The legend above the plot, right, beside the title: it never hides data."""
    ax.legend(
        loc="lower right",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=7,
        ncol=columns,
        frameon=False,
        borderaxespad=0.1,
        handletextpad=0.3,
        columnspacing=1.0,
    )


def histograms_svg(call: CallData, prefix: str) -> str:
    """Per direction: inter-arrival jitter and audio message sizes."""
    import numpy as np

    plt = _matplotlib()
    fig, axes = plt.subplots(2, 2, figsize=(12, 5), gridspec_kw={"hspace": 0.6, "wspace": 0.2})
    try:
        for row, d in enumerate(DIRECTIONS):
            data = call.dirs[d]
            color = COLORS[d]
            jitter_ax, size_ax = axes[row]
            jitter = jitter_values(data)
            jitter_ax.set_title(
                f"{d} {DIR_NAMES[d]}: jitter (arrival gap less the audio before, ms)"
            )
            if jitter.size:
                # Outliers beyond the range land in its end bins rather than widening it.
                low = max(-40.0, min(-10.0, float(np.floor(jitter.min()))))
                high = min(200.0, max(30.0, float(np.ceil(jitter.max()))))
                width = 1.0 if high - low <= 120 else 2.0
                edges = np.arange(low, high + width, width)
                counts, _ = np.histogram(np.clip(jitter, low, high), bins=edges)
                jitter_ax.bar(edges[:-1], counts, width=width, align="edge", color=color)
                _count_axis(jitter_ax, int(counts.max()))
                jitter_ax.axvline(0, color=REF_COLOR, linestyle="--", linewidth=1.0)
                jitter_ax.set_xlim(low, high)
            else:
                jitter_ax.text(0.5, 0.5, "no audio", transform=jitter_ax.transAxes, ha="center")
            jitter_ax.set_ylabel("messages")
            sizes = data.stats.sizes.most_common(12)
            size_ax.set_title(f"{d} {DIR_NAMES[d]}: audio message sizes (bytes)")
            if sizes:
                sizes.sort()
                labels = [str(s) for s, _ in sizes]
                size_ax.bar(labels, [n for _, n in sizes], color=color)
                _count_axis(size_ax, max(n for _, n in sizes))
                size_ax.tick_params(axis="x", labelsize=7)
            else:
                size_ax.text(0.5, 0.5, "no audio", transform=size_ax.transAxes, ha="center")
        fig.subplots_adjust(left=0.07, right=0.98, top=0.93, bottom=0.08)
        return _svg(fig, prefix)
    finally:
        plt.close(fig)


def _grouped_nan(values: Any, group: int, how: str) -> Any:
    """Each group of periods as one point: its worst ("max") or its mean, NaN-aware."""
    import numpy as np

    if group == 1:
        return values
    pad = (-values.size) % group
    blocks = np.concatenate((values, np.full(pad, np.nan))).reshape(-1, group)
    if how == "max":
        return np.fmax.reduce(blocks, axis=1)  # fmax skips NaN; all NaN stays NaN
    valid = ~np.isnan(blocks)
    counts = valid.sum(axis=1)
    sums = np.where(valid, blocks, 0.0).sum(axis=1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _load_line(ax: Any, x: Any, y: Any, group: int, how: str, **style: Any) -> None:
    """A series with its empty periods as gaps; a point between two gaps gets a dot, or a
    line would not show it."""
    import numpy as np

    y = _grouped_nan(y, group, how)
    line = ax.plot(x, y, linewidth=1.2, **style)[0]
    missing = np.isnan(y)
    before = np.concatenate(([True], missing[:-1]))
    after = np.concatenate((missing[1:], [True]))
    alone = ~missing & before & after
    if alone.any():
        ax.plot(
            x[alone], y[alone], linestyle="none", marker="o", markersize=3, color=line.get_color()
        )


def load_svg(run: LoadRun, prefix: str) -> str:
    """The run over time, one shared axis: calls, messages/s, send lateness, TTFA, echo."""
    import numpy as np

    plt = _matplotlib()
    t = run.column("t")
    span = max(float(np.nanmax(t)) if not np.isnan(t).all() else 0.0, 0.1)
    group = _decimate(t.size)
    x = _grouped_nan(t, group, "max")  # a group is drawn at its last period's end
    fig, axes = plt.subplots(5, 1, figsize=(12, 10), sharex=True, gridspec_kw={"hspace": 0.5})
    try:
        calls, msgs, late, ttfa, echo = axes
        calls.set_title("calls up (at each period's end), and calls per period")
        _load_line(
            calls, x, run.column("active"), group, "max", color=LOAD_COLORS["active"], label="up"
        )
        for name in ("started", "ended", "failed"):
            _load_line(
                calls,
                x,
                run.column(name),
                group,
                "max",
                color=LOAD_COLORS[name],
                label=name,
                linestyle="--" if name != "failed" else "-",
            )
        calls.set_ylabel("calls")
        calls.set_ylim(bottom=0)
        _legend(calls, 4)
        msgs.set_title("messages per second")
        _load_line(
            msgs,
            x,
            run.column("msgs_out_per_s"),
            group,
            "mean",
            color=COLORS[">"],
            label="> we sent",
        )
        _load_line(
            msgs,
            x,
            run.column("msgs_in_per_s"),
            group,
            "mean",
            color=COLORS["<"],
            label="< the application sent",
        )
        msgs.set_ylabel("msg/s")
        msgs.set_ylim(bottom=0)
        _legend(msgs, 2)
        for ax, title, stem, stats in (
            (late, "our send lateness (ms)", "send_late", ("p50", "p99", "max")),
            (ttfa, "time to first audio (ms)", "ttfa", ("p50", "p99")),
            (echo, "echo round trip (ms)", "echo", ("p50", "p99")),
        ):
            ax.set_title(title)
            ax.set_ylabel("ms")
            drawn = False
            for stat in stats:
                y = run.column(f"{stem}_{stat}_ms")
                if np.isnan(y).all():
                    continue
                # p50s are averaged over a group of periods, the worst figures kept as worst.
                how = "mean" if stat == "p50" else "max"
                _load_line(ax, x, y, group, how, color=LOAD_COLORS[stat], label=stat)
                drawn = True
            if drawn:
                ax.set_ylim(bottom=0)
                _legend(ax, len(stats))
            else:
                ax.text(
                    0.5,
                    0.5,
                    "no sample in any period",
                    transform=ax.transAxes,
                    ha="center",
                    va="center",
                    color="#888888",
                )
            ax.grid(True, axis="y", color="#dddddd", linewidth=0.5)
        axes[-1].set_xlim(0, span)
        axes[-1].xaxis.set_major_formatter(_time_formatter(span))
        axes[-1].set_xlabel(
            "time from run start (s)" if span < 300 else "time from run start (m:ss)"
        )
        for ax in axes[:-1]:
            ax.tick_params(labelbottom=True)
        fig.subplots_adjust(left=0.07, right=0.98, top=0.97, bottom=0.05)
        return _svg(fig, prefix)
    finally:
        plt.close(fig)


_NUMBER = re.compile(r"(\d+\.\d\d)\d+")
_IDS = re.compile(r'(\bid="|href="#|url\(#)')


def _svg(fig: Any, prefix: str) -> str:
    """The figure as an inline <svg>: ids made unique in the page, coordinates rounded."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    # Two decimals are a hundredth of a point: finer than a pixel, and a third of the size.
    text = _NUMBER.sub(r"\1", text)
    text = _IDS.sub(lambda m: m.group(1) + prefix, text)
    # Scale with the page: keep the viewBox, drop the fixed size.
    text = re.sub(
        r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1 class="plot"', text, count=1
    )
    return text
