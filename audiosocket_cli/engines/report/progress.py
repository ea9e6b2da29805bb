"""The report's progress bar on stderr, in a terminal only (rich): bytes read per
input, then calls drawn."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Sequence
from typing import Any, BinaryIO


class _Progress:
    """A rich progress bar on stderr (a terminal only): bytes read, then calls drawn."""

    def __init__(self, enabled: bool, streams: Sequence[BinaryIO], names: Sequence[str]) -> None:
        self.bar: Any = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

        self.streams = streams
        self.sizes = []
        for stream in streams:
            try:
                self.sizes.append(os.fstat(stream.fileno()).st_size or None)
            except (OSError, ValueError, io.UnsupportedOperation):
                self.sizes.append(None)
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            console=Console(file=sys.stderr),
            transient=True,
        )
        self.bar.start()
        self.tasks = [
            self.bar.add_task(f"reading {name}", total=size)
            for name, size in zip(names, self.sizes, strict=True)
        ]
        self.plot_task: Any = None

    def update(self, number: int, done: bool = False) -> None:
        if self.bar is None:
            return
        if done:
            self.bar.update(
                self.tasks[number], completed=self.sizes[number] or 1, total=self.sizes[number] or 1
            )
            return
        try:
            position = self.streams[number].tell()
        except (OSError, ValueError):
            return
        self.bar.update(self.tasks[number], completed=position)

    def plotting(self, done: int, total: int) -> None:
        if self.bar is None:
            return
        if self.plot_task is None:
            self.plot_task = self.bar.add_task("drawing calls", total=total)
        self.bar.update(self.plot_task, completed=done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
