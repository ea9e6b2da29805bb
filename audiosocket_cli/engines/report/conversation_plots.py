"""The report's conversation figures, on the call and load plots' helpers (plots): a
call's two lanes (caller above, agent below, the latencies, barge-ins, talk-over and
dead air between them), and a load run's conversation latencies per period.

numpy and matplotlib are imported inside the functions that use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from audiosocket_cli.engines.report.plots import (
    COLORS,
    LOAD_COLORS,
    MARK_COLOR,
    MAX_LABELS,
    MAX_POINTS,
    REF_COLOR,
    _decimate,
    _grouped_nan,
    _legend,
    _load_line,
    _matplotlib,
    _svg,
    _time_formatter,
)

if TYPE_CHECKING:
    from audiosocket_cli.engines.report.calls import CallData
    from audiosocket_cli.engines.report.conversation import ConversationData
    from audiosocket_cli.engines.report.load import LoadRun

CONVERSATION_COLORS = {
    "latency": REF_COLOR,  # a response latency, the caller's end to the agent's reply
    "early": MARK_COLOR,  # a negative one: the agent began while the caller spoke
    "barge-in": "#7b3294",
    "talk-over": MARK_COLOR,
    "dead-air": MARK_COLOR,
    "first": "#333333",
}


def conversation_svg(call: CallData, conversation: ConversationData, prefix: str) -> str:
    """Two lanes on the call's time axis: the caller's utterances (its turns) above, the
    agent's speech below; between them each response latency, the first response,
    each barge-in and how long the agent took to stop, talk-over and dead air."""
    from matplotlib.patches import Patch

    plt = _matplotlib()
    span = max(call.duration, conversation.end, 0.1)
    colors = CONVERSATION_COLORS
    fig, ax = plt.subplots(figsize=(12, 2.9))
    try:
        caller_y, agent_y, height = 1.0, 0.0, 0.4
        ax.set_ylim(-1.0, 1.85)
        ax.set_yticks([caller_y, agent_y], ["caller", "agent"])
        ax.grid(True, axis="x", color="#eeeeee", linewidth=0.5)
        ax.set_axisbelow(True)
        ax.set_title("conversation: who spoke when, response latencies, barge-ins")
        turns = conversation.turns
        ax.broken_barh(
            [(t.caller_start, max(t.caller_end - t.caller_start, 0.005)) for t in turns],
            (caller_y - height / 2, height),
            facecolors=COLORS[">"],
        )
        for t in turns[:MAX_LABELS]:
            ax.annotate(
                t.label,
                (t.caller_start, caller_y + height / 2),
                xytext=(0, 3),
                textcoords="offset points",
                fontsize=8,
                color=COLORS[">"],
            )
        ax.broken_barh(
            [(a, max(b - a, 0.005)) for a, b in conversation.agent[:MAX_POINTS]],
            (agent_y - height / 2, height),
            facecolors=COLORS["<"],
        )
        for start, stop in conversation.dead_air_spans:
            ax.broken_barh(
                [(start, stop - start)],
                (agent_y - height / 2, height),
                facecolors="none",
                edgecolors=colors["dead-air"],
                hatch="///",
                linewidth=0.8,
            )
            ax.annotate(
                f"dead air {stop - start:.2f} s",
                ((start + stop) / 2, agent_y - height / 2),
                xytext=(0, -3),
                va="top",
                textcoords="offset points",
                ha="center",
                fontsize=7,
                color=colors["dead-air"],
            )
        for turn in turns:
            if turn.agent_start is None or turn.latency is None:
                continue
            early = turn.latency < 0
            color = colors["early"] if early else colors["latency"]
            middle = (agent_y + caller_y) / 2
            for x, y0, y1 in (
                (turn.caller_end, middle, caller_y - height / 2),
                (turn.agent_start, agent_y + height / 2, middle),
            ):
                ax.plot([x, x], [y0, y1], color=color, linewidth=0.8, linestyle=":")
            ax.annotate(
                "",
                (turn.agent_start, middle),
                xytext=(turn.caller_end, middle),
                arrowprops={"arrowstyle": "->", "color": color, "linewidth": 1.2},
            )
            ax.annotate(
                f"{turn.latency:+.2f} s" + (" (began early)" if early else ""),
                ((turn.caller_end + turn.agent_start) / 2, middle),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                fontsize=8,
                color=color,
            )
        first = conversation.first_response
        if first is not None:
            ax.scatter(
                [first],
                [agent_y - height / 2 - 0.12],
                marker="^",
                s=30,
                color=colors["first"],
                zorder=3,
            )
            ax.annotate(
                f"first response {first:.2f} s",
                (first, agent_y - height / 2 - 0.12),
                xytext=(4, -3),
                textcoords="offset points",
                va="top",
                fontsize=7,
                color=colors["first"],
            )
        for barge in conversation.barge_ins:
            color = colors["barge-in"]
            ax.plot(
                [barge.at, barge.at],
                [agent_y - height / 2, caller_y + height / 2],
                color=color,
                linewidth=1.2,
            )
            end = barge.stopped_at
            if barge.agent_start is None or barge.stop_time is None:
                label, end = "barge-in: the agent was quiet", None
            elif barge.stopped:
                label = f"barge-in: stopped in {barge.stop_time:.2f} s"
            else:
                label = f"barge-in: still speaking {barge.stop_time:.2f} s later"
                end = barge.at + barge.stop_time
            low = agent_y - height / 2 - 0.3
            if end is not None:
                ax.annotate(
                    "",
                    (end, low),
                    xytext=(barge.at, low),
                    arrowprops={
                        "arrowstyle": "|-|",
                        "color": color,
                        "linewidth": 1.2,
                        "mutation_scale": 3,
                    },
                )
            # Right of the bracket where there is room, else left of the barge-in.
            right = (end or barge.at) > 0.7 * span
            ax.annotate(
                label,
                (barge.at if right else (end or barge.at), low),
                xytext=(-3 if right else 3, -3),
                textcoords="offset points",
                ha="right" if right else "left",
                va="top",
                fontsize=7,
                color=color,
            )
        talk = conversation.talk_over_at
        if talk:
            ax.scatter(
                talk,
                [agent_y + height / 2 + 0.08] * len(talk),
                marker="x",
                s=36,
                color=colors["talk-over"],
                zorder=3,
            )
        agent = "agent speech" + ("" if conversation.agent_measured else " (from the turns)")
        handles = [
            Patch(color=COLORS[">"], label="caller turns"),
            Patch(color=COLORS["<"], label=agent),
            Patch(color=colors["latency"], label="response latency"),
            Patch(color=colors["barge-in"], label="barge-in to stop"),
        ]
        if talk:
            handles.append(Patch(color=colors["talk-over"], label=f"talk-over ({len(talk)})"))
        ax.legend(
            handles=handles,
            loc="lower right",
            bbox_to_anchor=(1.0, 1.0),
            fontsize=7,
            ncol=len(handles),
            frameon=False,
            borderaxespad=0.1,
            handletextpad=0.3,
            columnspacing=1.0,
        )
        ax.set_xlim(0, span)
        ax.xaxis.set_major_formatter(_time_formatter(span))
        ax.set_xlabel("time from call start (s)" if span < 300 else "time from call start (m:ss)")
        # The timeline's margins: the two figures' time axes line up on the page.
        fig.subplots_adjust(left=0.07, right=0.98, top=0.86, bottom=0.17)
        return _svg(fig, prefix)
    finally:
        plt.close(fig)


def conversation_load_svg(run: LoadRun, prefix: str) -> str:
    """A scenario run's conversations over time: response latency and time to first
    response per period (p50, p95, p99 as the CSV has them), and barge-in stop times."""
    import numpy as np

    plt = _matplotlib()
    t = run.column("t")
    span = max(float(np.nanmax(t)) if not np.isnan(t).all() else 0.0, 0.1)
    group = _decimate(t.size)
    x = _grouped_nan(t, group, "max")
    stats = ("p50", "p95", "p99", "max")
    barge = [s for s in stats if f"barge_in_stop_{s}_ms" in run.columns]
    rows = 2 if barge else 1
    fig, axes = plt.subplots(
        rows,
        1,
        figsize=(12, 2.6 * rows + 0.6),
        sharex=True,
        gridspec_kw={"hspace": 0.5},
        squeeze=False,
    )
    try:
        latency = axes[0][0]
        latency.set_title("response latency and time to first response per period (ms)")
        lows = [0.0]
        drawn = 0
        # Time to first response: p50 and p95 only, so that the legend fits beside the
        # title (a load --stats CSV has p50, p95, p99 and max of both).
        for stem, label, style, kept in (
            ("response", "response", "-", stats),
            ("first_response", "first response", "--", ("p50", "p95")),
        ):
            for stat in kept:
                name = f"{stem}_{stat}_ms"
                if name not in run.columns:
                    continue
                y = run.column(name)
                how = "mean" if stat == "p50" else "max"
                color = LOAD_COLORS["first"] if stem == "first_response" else LOAD_COLORS[stat]
                _load_line(
                    latency, x, y, group, how, color=color, linestyle=style, label=f"{label} {stat}"
                )
                if not np.isnan(y).all():
                    lows.append(float(np.nanmin(y)))
                drawn += 1
        latency.set_ylabel("ms")
        latency.set_ylim(bottom=min(lows) * 1.1)
        latency.axhline(0, color="#cccccc", linewidth=0.5)
        latency.grid(True, axis="y", color="#dddddd", linewidth=0.5)
        _legend(latency, max(drawn, 1))
        if barge:
            stop = axes[1][0]
            stop.set_title("barge-in stop time per period (ms)")
            for stat in barge:
                how = "mean" if stat == "p50" else "max"
                _load_line(
                    stop,
                    x,
                    run.column(f"barge_in_stop_{stat}_ms"),
                    group,
                    how,
                    color=LOAD_COLORS[stat],
                    label=stat,
                )
            stop.set_ylabel("ms")
            stop.set_ylim(bottom=0)
            stop.grid(True, axis="y", color="#dddddd", linewidth=0.5)
            _legend(stop, len(barge))
        bottom = axes[-1][0]
        bottom.set_xlim(0, span)
        bottom.xaxis.set_major_formatter(_time_formatter(span))
        bottom.set_xlabel("time from run start (s)" if span < 300 else "time from run start (m:ss)")
        for row in axes[:-1]:
            row[0].tick_params(labelbottom=True)
        fig.subplots_adjust(left=0.07, right=0.98, top=0.88 if rows == 1 else 0.93, bottom=0.14)
        return _svg(fig, prefix)
    finally:
        plt.close(fig)
