"""``srt select``: keep the rewrites the student accepts, and report what was kept and why.

srt select --ori ori.scores.jsonl --q q.scores.jsonl --a a.scores.jsonl --qa qa.scores.jsonl --output selected.jsonl
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from srt_trainer.selection.policy import SelectConfig, SelectionInputError, SelectionResult, select_rows

logger = logging.getLogger(__name__)


def read_scored(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a score output: JSONL, JSON (a list, or an object with a ``data`` list) or Parquet."""
    from srt_trainer.data.loading import DataLoadError, iter_raw_rows

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


def run_select(config: SelectConfig) -> SelectionResult:
    """Read the four score outputs named in ``config``, select, write the output and its report, print counts."""
    from srt_trainer.io import check_output_path
    from srt_trainer.selection.report import format_counts, write_selection

    needed = config.needed_views()
    files = config.files()
    missing = [f"--{v.lower()}" for v in needed if not files[v]]
    if missing or not config.output:
        missing += [] if config.output else ["--output"]
        raise SelectionInputError(f"{', '.join(missing)} required (the {config.policy!r} policy)")
    output = check_output_path(config.output)
    for view, file in files.items():
        if file and Path(file).resolve() == output.resolve():
            raise SelectionInputError(f"--output {output} is also the {view} input; choose another file")
    scored = {v: read_scored(files[v]) for v in needed}
    result = select_rows(scored["ori"], scored.get("Q"), scored.get("A"), scored.get("QA"), config)
    paths = write_selection(result, config, scored)
    print(f"selection ({config.policy} policy) of {result.counts['rows']} source rows:")
    print(format_counts(result.counts))
    for kind, path in paths.items():
        if kind != "output":
            print(f"{kind}: {path}")
    print(f"wrote {paths['output']} ({len(result.rows)} rows)")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    from trl import TrlParser

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    (config,) = TrlParser(SelectConfig, prog="srt select").parse_args_and_config(argv)
    try:
        run_select(config)
    except ValueError as e:  # SelectionInputError included: bad inputs, said plainly
        print(f"srt select: {e}", file=sys.stderr)
        return 1
    return 0
