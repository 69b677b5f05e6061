"""The selection stage behind ``srt select``: read the four score outputs side by side, select, write the output
and its report."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from srt_trainer.io import DataLoadError, iter_raw_rows, read_rows_at, same_file
from srt_trainer.selection.config import SelectArguments, SelectionArguments, SelectionInputError
from srt_trainer.selection.policy import SelectionResult, select_rows
from srt_trainer.selection.report import read_agreement, write_selection
from srt_trainer.selection.views import Views, ViewSource, copy_message
from srt_trainer.stage import Stage

# what ``write_selection`` writes beside the output
REPORTS = ("selection.json", "decisions.jsonl", "funnel.png", "hist.png", "card.md")


def iter_scored(path: str | Path) -> Iterator[tuple[dict[str, Any], int | None]]:
    """Rows of a score output (JSONL, JSON, a list or an object with a ``data`` list, or Parquet), each with its
    offset in the file; a row that cannot be read, or is not an object, raises ``SelectionInputError`` naming the
    file, row and line."""
    path = Path(path)
    if not path.is_file():
        raise SelectionInputError(f"{path}: no such file")
    try:
        for raw in iter_raw_rows(path):
            if raw.error or not isinstance(raw.value, dict):
                where = f"row {raw.row}" + (f" (line {raw.line})" if raw.line else "")
                raise SelectionInputError(f"{path} {where}: {raw.error or 'not an object'}")
            yield raw.value, raw.offset
    except DataLoadError as e:
        raise SelectionInputError(str(e)) from e


def read_scored(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a score output (see ``iter_scored``)."""
    return [row for row, _ in iter_scored(path)]


def scored_source(path: str | Path, nonempty: bool = False) -> ViewSource:
    """A score output read row by row, whose kept rows are read back by their offsets; ``nonempty``: a file without
    rows is refused now (``<file>: contains no rows``)."""
    rows = iter_scored(path)
    return ViewSource(Stage.nonempty(rows, path) if nonempty else rows, lambda offsets: read_rows_at(path, offsets))


def run_select(args: SelectArguments, selection: SelectionArguments) -> SelectionResult:
    """Read the score outputs ``args`` names (those ``selection.policy`` needs), select, and write the output and
    its report; the result's ``files`` name what was written. An A or QA that is ori's file itself (a link
    included) is refused before anything is read."""
    needed = selection.needed_views()
    files = args.files()
    missing = [f"--{v.lower()}" for v in needed if not files[v]]
    if missing:
        raise SelectionInputError(f"{', '.join(missing)} required (the {selection.policy!r} policy)")
    stage = Stage(
        args.output,
        "selection",
        inputs={f"--{view.lower()}": file for view, file in files.items()},
        side=(),
        reports=REPORTS,
    )
    with stage.guard():
        for view in ("A", "QA"):
            if view in needed and same_file(Path(files[view]), Path(files["ori"])):
                raise SelectionInputError(copy_message(view, files, same_file=True, policy=selection.policy))
        if args.agreement:
            read_agreement(args.agreement)  # a bad report refused before the work, not after it
        # an ori without rows stops every policy before any work, as an empty input stops every stage
        views = Views.of({v: scored_source(files[v], nonempty=v == "ori") for v in needed})
        result = select_rows(views, selection, files, seed=args.seed)
        result.files = write_selection(result, args, selection)
    return result
