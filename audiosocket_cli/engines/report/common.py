"""What every part of the report shares: its one error, and the two directions of a
call with their names."""

from __future__ import annotations

DIRECTIONS = (">", "<")
DIR_NAMES = {">": "to application", "<": "to Asterisk"}
DIR_SIDES = {">": "in", "<": "out"}


class ReportError(Exception):
    """The report cannot be made: an input that cannot be read, an output that cannot be written."""
