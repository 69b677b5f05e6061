"""Rows that could not be used: each is kept with the file, row, field and reason, never dropped silently."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from srt_trainer.io import sidecar_path, write_rows


@dataclass
class Reject:
    """One unusable input row.

    ``row`` is the 0-based position of the row in its source (for JSONL, among non-blank lines); ``line`` is the
    1-based line number where the source has lines. ``raw`` holds the row as read, so nothing is lost.
    """

    file: str
    row: int
    field: str | None
    reason: str
    raw: str
    line: int | None = None

    def describe(self) -> str:
        where = f"{self.file}: row {self.row}" + (f" (line {self.line})" if self.line is not None else "")
        field = f", field '{self.field}'" if self.field else ""
        return f"{where}{field}: {self.reason}"


class RowError(ValueError):
    """A row is unusable; carries the offending field."""

    def __init__(self, field: str | None, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


def rejects_path_for(output: str | Path) -> Path:
    """Where the rejects of a stage writing ``output`` go: beside it, ``<stem>.rejects.jsonl``."""
    return sidecar_path(output, "rejects.jsonl")


def write_rejects(rejects: Iterable[Reject], path: str | Path) -> Path:
    """Write rejects as JSONL (an empty file when there are none, so a stale file never misleads)."""
    return write_rows([asdict(r) for r in rejects], path)


def summarize_rejects(rejects: list[Reject], limit: int = 5, reasons: int = 3) -> str:
    """A few lines for the console: the count of the ``reasons`` most common reasons and the first few rows in
    full. The first line stands alone in error messages, so it stays short even when every reason is unique
    (e.g. one per unmatched item id)."""
    if not rejects:
        return "no rejected rows"
    top = Counter(r.reason for r in rejects).most_common(reasons)
    rest = len(rejects) - sum(n for _, n in top)
    first = "; ".join(f"{n}× {reason}" for reason, n in top) + (f"; and {rest} more" if rest else "")
    lines = [f"{len(rejects)} rejected row(s): {first}"]
    lines += ["  " + r.describe() for r in rejects[:limit]]
    if len(rejects) > limit:
        lines.append(f"  ... and {len(rejects) - limit} more")
    return "\n".join(lines)
