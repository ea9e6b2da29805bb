"""Which sinks a command gets: by its flags and whether stdout is a terminal."""

from __future__ import annotations

from typing import Any

from audiosocket_cli.files.trace import TraceWriter
from audiosocket_cli.output.sinks import (
    Environment,
    JsonSink,
    Output,
    PlainSink,
    StderrEventSink,
    TraceSink,
    noter,
)


def make_output(
    env: Environment,
    *,
    json_lines: bool = False,
    trace_path: str | None = None,
    verbose: int = 0,
    quiet: bool = False,
    command: str = "",
) -> Output:
    """The sinks for a command's flags and terminal; OSError if the trace cannot be opened."""
    sinks: list[Any] = []
    batch = not env.stdout_isatty  # a file or a pipe: lines in batches, flushed every 100 ms
    if json_lines:
        sinks.append(JsonSink(env.stdout, quiet=quiet, batch=batch))
        sinks.append(StderrEventSink(env.stderr))
    elif env.stdout_isatty:
        from audiosocket_cli.output.human import HumanSink  # rich costs start-up time

        sinks.append(HumanSink(env, verbose=verbose, quiet=quiet))
    else:
        sinks.append(PlainSink(env.stdout, quiet=quiet, batch=batch))
        sinks.append(StderrEventSink(env.stderr))
    if trace_path:
        sinks.append(TraceSink(TraceWriter(trace_path, command=command), noter(env.stderr)))
    return Output(sinks, env.stderr)
