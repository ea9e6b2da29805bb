"""The HTML report of recorded calls: the engine behind `audiosocket report`.

Reads whatever `trace` reads (trace files, raw dumps, pcap and pcapng),
streams each call's records once into bounded aggregates, and writes one
self-contained HTML page: per call a header, the diagnoses with their
evidence, a timeline per direction (level, waveform envelope, arrival gaps,
events) on a shared time axis, histograms of jitter and frame sizes, and the
audio of each direction (embedded, or in WAV files beside the page when long).
A `load --stats` CSV (known by its header row) gets a section of its own,
before the calls: the run's figures per period on one time axis, and a summary
(and a scenario run's response latencies, when it has those columns). A call
that `converse` recorded gets its conversation: the caller's and the agent's
speech on two lanes, each response latency and barge-in marked, each
expectation with its verdict and evidence.

Memory is bounded for any call length: audio becomes a min/max envelope in
10 ms bins and energy in 100 ms bins as it streams (numpy, in batches); only
the arrival time and duration of each audio message are kept (two floats),
and the audio itself goes straight to a WAV file on disk. Plots are SVG from
matplotlib (Agg), decimated to at most MAX_POINTS points per series.

numpy and matplotlib are imported inside the functions that use them, so
that importing this package (for `audiosocket report --help`) stays light.

Modules: write (write_report: the inputs read, the page written), calls (a
call's records into bounded aggregates, its findings), conversation (a
`converse` call's events, and its agent's speech measured from its audio),
load (a `load --stats` CSV: read, summarised, its section), plots (the
figures), page (the HTML), progress (the progress bar), common (the error,
the directions).
"""

from audiosocket_cli.engines.report.calls import (
    COARSE,
    COARSE_BINS,
    FINE,
    FLUSH_SAMPLES,
    FRAME_MS,
    GAP_MARK,
    MAX_BINS,
    MAX_MARKERS,
    CallData,
    DirectionData,
    Finding,
    Marker,
    burst_spans,
)
from audiosocket_cli.engines.report.common import DIR_NAMES, DIR_SIDES, DIRECTIONS, ReportError
from audiosocket_cli.engines.report.conversation import ConversationData
from audiosocket_cli.engines.report.conversation_plots import (
    CONVERSATION_COLORS,
    conversation_load_svg,
    conversation_svg,
)
from audiosocket_cli.engines.report.load import (
    CONVERSATION_COLUMN,
    LOAD_CSV_HEAD,
    LOAD_KEPT,
    LoadRun,
    is_load_csv,
    load_summary,
    read_load_csv,
)
from audiosocket_cli.engines.report.page import CALLS_TABLE_ROWS, CSS, render_page
from audiosocket_cli.engines.report.plots import (
    COLORS,
    EVENT_COLORS,
    LOAD_COLORS,
    MARK_COLOR,
    MAX_LABELS,
    MAX_POINTS,
    REF_COLOR,
    envelope_series,
    gap_series,
    histograms_svg,
    jitter_values,
    level_series,
    load_svg,
    log_tick_values,
    plain_number,
    timeline_svg,
)
from audiosocket_cli.engines.report.write import (
    EMBED_SECONDS,
    Report,
    check_output,
    open_input,
    write_report,
)

__all__ = [
    "CALLS_TABLE_ROWS",
    "COARSE",
    "COARSE_BINS",
    "COLORS",
    "CONVERSATION_COLORS",
    "CONVERSATION_COLUMN",
    "CSS",
    "DIRECTIONS",
    "DIR_NAMES",
    "DIR_SIDES",
    "EMBED_SECONDS",
    "EVENT_COLORS",
    "FINE",
    "FLUSH_SAMPLES",
    "FRAME_MS",
    "GAP_MARK",
    "LOAD_COLORS",
    "LOAD_CSV_HEAD",
    "LOAD_KEPT",
    "MARK_COLOR",
    "MAX_BINS",
    "MAX_LABELS",
    "MAX_MARKERS",
    "MAX_POINTS",
    "REF_COLOR",
    "CallData",
    "ConversationData",
    "DirectionData",
    "Finding",
    "LoadRun",
    "Marker",
    "Report",
    "ReportError",
    "burst_spans",
    "check_output",
    "conversation_load_svg",
    "conversation_svg",
    "envelope_series",
    "gap_series",
    "histograms_svg",
    "is_load_csv",
    "jitter_values",
    "level_series",
    "load_summary",
    "load_svg",
    "log_tick_values",
    "open_input",
    "plain_number",
    "read_load_csv",
    "render_page",
    "timeline_svg",
    "write_report",
]
