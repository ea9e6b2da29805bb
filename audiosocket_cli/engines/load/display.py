"""A load run's periods shown: one key=value line each, or a live table."""

from __future__ import annotations

from typing import Any

# Lines and the dashboard.


def plain_line(row: dict[str, Any]) -> str:
    """`t=3.0 active=100 started=10 up=10 ended=10 failed=0 ...`: one period, key=value."""

    def f(value: Any) -> str:
        return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

    def counts(values: dict[str, int]) -> str:
        return ",".join(f"{k}:{n}" for k, n in values.items()) or "-"

    line = (
        f"{row['type']} t={row['t']:.1f} active={row['active']} "
        f"started={row['started']}/{row['total_started']} up={row['up']}/{row['total_up']} "
        f"ended={row['ended']}/{row['total_ended']} failed={row['failed']}/{row['total_failed']} "
        f"violations={row['violations']}/{row['total_violations']} "
        f"unserved={row['unserved']}/{row['total_unserved']} "
        f"left_open={row['left_open']}/{row['total_left_open']} "
        f"out={row['msgs_out_per_s']:g}msg/s,{row['bytes_out_per_s']:g}B/s "
        f"in={row['msgs_in_per_s']:g}msg/s,{row['bytes_in_per_s']:g}B/s "
        f"late_ms={f(row['send_late_p50_ms'])}/{f(row['send_late_p99_ms'])}/"
        f"{f(row['send_late_max_ms'])} "
        f"ttfa_ms={f(row['ttfa_p50_ms'])}/{f(row['ttfa_p99_ms'])} "
        f"rt={f(row['realtime_ratio'])} jitter_p99_ms={f(row['jitter_p99_ms'])} "
        f"bursts={row['bursts']}/{row['total_bursts']} gaps={row['gaps']}/{row['total_gaps']} "
        f"echo_ms={f(row['echo_p50_ms'])}/{f(row['echo_p99_ms'])} "
        f"failed_by={counts(row['total_failed_by'])} "
        f"diagnoses={counts(row['total_diagnoses'])}"
    )
    if "conversations" not in row:
        return line
    # --scenario: the conversations' figures, this period's (failed expectations: totals).
    return line + (
        f" conversations={row['conversations']}/{row['total_conversations']} "
        f"conversations_failed={row['conversations_failed']}/{row['total_conversations_failed']} "
        f"response_ms={f(row['response_p50_ms'])}/{f(row['response_p95_ms'])}/"
        f"{f(row['response_p99_ms'])} "
        f"first_response_ms={f(row['first_response_p50_ms'])}/{f(row['first_response_p95_ms'])} "
        f"barge_in_stop_ms={f(row['barge_in_stop_p50_ms'])}/{f(row['barge_in_stop_p95_ms'])} "
        f"talk_overs={row['talk_overs']}/{row['total_talk_overs']} "
        f"dead_air={row['dead_air']}/{row['total_dead_air']} "
        f"failed_expect={counts(row['total_failed_expect'])}"
    )


class Dashboard:
    """A live rich table on a terminal (rich imported only here, only then)."""

    def __init__(self, stream: Any) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=stream)
        self.live = Live(console=self.console, refresh_per_second=4, transient=False)
        self.live.start()

    def update(self, row: dict[str, Any]) -> None:
        from rich.table import Table

        def f(value: Any, unit: str = "") -> str:
            return "-" if value is None else f"{value:g}{unit}"

        table = Table(title=f"audiosocket load  t={row['t']:.1f}s", show_header=True)
        table.add_column("")
        table.add_column("this period", justify="right")
        table.add_column("total", justify="right")
        table.add_row("active / connecting", f"{row['active']} / {row['connecting']}", "")
        for name in ("started", "up", "ended", "failed", "violations", "unserved", "left_open"):
            table.add_row(name, str(row[name]), str(row[f"total_{name}"]))
        table.add_row(
            "messages out / in per s",
            f"{row['msgs_out_per_s']:g} / {row['msgs_in_per_s']:g}",
            "",
        )
        table.add_row(
            "bytes out / in per s", f"{row['bytes_out_per_s']:g} / {row['bytes_in_per_s']:g}", ""
        )
        late = (
            f"{f(row['send_late_p50_ms'])} / {f(row['send_late_p99_ms'])} / "
            f"{f(row['send_late_max_ms'])} ms"
        )
        if row["generator_late"]:
            late = f"[red]{late}[/]"
        table.add_row(
            "our send lateness p50/p99/max", late, f(row["total_send_late_p99_ms"], " ms")
        )
        table.add_row(
            "time to first audio p50/p99",
            f"{f(row['ttfa_p50_ms'])} / {f(row['ttfa_p99_ms'])} ms",
            f"{f(row['total_ttfa_p50_ms'])} / {f(row['total_ttfa_p99_ms'])} ms",
        )
        table.add_row("real-time ratio", f(row["realtime_ratio"]), "")
        table.add_row("jitter p99", f(row["jitter_p99_ms"], " ms"), "")
        table.add_row("bursts / gaps", f"{row['bursts']} / {row['gaps']}", "")
        table.add_row(
            "echo round trip p50/p99",
            f"{f(row['echo_p50_ms'])} / {f(row['echo_p99_ms'])} ms",
            f"{f(row['total_echo_p50_ms'])} / {f(row['total_echo_p99_ms'])} ms",
        )
        if "conversations" in row:
            table.add_row(
                "conversations / failed",
                f"{row['conversations']} / {row['conversations_failed']}",
                f"{row['total_conversations']} / {row['total_conversations_failed']}",
            )
            for name, label in (
                ("response", "response latency p50/p95/p99"),
                ("first_response", "time to first response p50/p95/p99"),
                ("barge_in_stop", "barge-in stop p50/p95/p99"),
            ):
                figures = [
                    f(row[f"{prefix}{name}_p{q}_ms"])
                    for prefix in ("", "total_")
                    for q in (50, 95, 99)
                ]
                table.add_row(
                    label, " / ".join(figures[:3]) + " ms", " / ".join(figures[3:]) + " ms"
                )
            table.add_row(
                "talk-overs / dead air",
                f"{row['talk_overs']} / {row['dead_air']}",
                f"{row['total_talk_overs']} / {row['total_dead_air']}",
            )
            for kind, n in row["total_failed_expect"].items():
                table.add_row(f"failed: {kind}", str(row["failed_expect"].get(kind, 0)), str(n))
        for reason, n in row["total_failed_by"].items():
            table.add_row(f"failed: {reason}", str(row["failed_by"].get(reason, 0)), str(n))
        for code, n in row["total_diagnoses"].items():
            table.add_row(f"diagnosis: {code}", str(row["diagnoses"].get(code, 0)), str(n))
        self.live.update(table, refresh=True)

    def close(self) -> None:
        self.live.stop()
