"""The selection stage behind ``srt select``: read the four score outputs, select, write the output and its report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from srt_trainer.io import DataLoadError, check_output_path, guard_outputs, iter_raw_rows, sidecar_path
from srt_trainer.selection.config import SelectArguments, SelectionArguments, SelectionInputError
from srt_trainer.selection.policy import SelectionResult, select_rows
from srt_trainer.selection.report import write_selection


def read_scored(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a score output: JSONL, JSON (a list, or an object with a ``data`` list) or Parquet."""
    path = Path(path)
    if not path.is_file():
        raise SelectionInputError(f"{path}: no such file")
    rows = []
    try:
        for raw in iter_raw_rows(path):
            if raw.error or not isinstance(raw.value, dict):
                where = f"row {raw.row}" + (f" (line {raw.line})" if raw.line else "")
                raise SelectionInputError(f"{path} {where}: {raw.error or 'not an object'}")
            rows.append(raw.value)
    except DataLoadError as e:
        raise SelectionInputError(str(e)) from e
    return rows


def run_select(args: SelectArguments, selection: SelectionArguments) -> SelectionResult:
    """Read the score outputs ``args`` names (those ``selection.policy`` needs), select, and write the output and
    its report; the result's ``files`` name what was written."""
    needed = selection.needed_views()
    files = args.files()
    missing = [f"--{v.lower()}" for v in needed if not files[v]]
    if missing:
        raise SelectionInputError(f"{', '.join(missing)} required (the {selection.policy!r} policy)")
    output = check_output_path(args.output)
    written = ("selection.json", "decisions.jsonl", "funnel.png", "hist.png", "card.md")
    inputs = {f"--{view.lower()}": file for view, file in files.items()}
    sidecars = {f"the report {name}": sidecar_path(output, name) for name in written}
    with guard_outputs(inputs, output, sidecars, "selection"):
        scored = {v: read_scored(files[v]) for v in needed}
        result = select_rows(scored["ori"], scored.get("Q"), scored.get("A"), scored.get("QA"), selection, files)
        result.files = write_selection(result, args, selection, scored)
    return result
