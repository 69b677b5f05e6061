"""Load instruction data from JSON, JSONL, Parquet, a ``save_to_disk`` folder or a hub id.

The result is one normalized ``datasets.Dataset`` (schema in ``formats``) with a stable ``row_index`` (the row's
0-based position in its source) plus the source's other columns, and the list of rejected rows. A file that
cannot be read at all raises ``DataLoadError`` naming it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from srt_trainer.data.formats import FORMATS, NORMALIZED_COLUMNS, detect_format, normalize_row
from srt_trainer.data.rejects import Reject, RowError, summarize_rejects, write_rejects
from srt_trainer.io import DataLoadError, RawRow, format_of
from srt_trainer.io import iter_raw_rows as iter_file_rows

logger = logging.getLogger(__name__)


@dataclass
class LoadedData:
    """Normalized rows, the rows that were rejected, and where they came from."""

    dataset: datasets.Dataset
    rejects: list[Reject] = field(default_factory=list)
    format: str = ""
    source: str = ""
    num_rows_read: int = 0

    def write_rejects(self, path: str | Path) -> Path:
        return write_rejects(self.rejects, path)


def _read_dataset(ds: datasets.Dataset) -> Iterator[RawRow]:
    for i, value in enumerate(ds):
        yield RawRow(row=i, value=value)


def _open_dataset_folder(path: Path, split: str) -> datasets.Dataset:
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise DataLoadError(f"{path}: not a dataset saved with save_to_disk: {e}") from e
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataLoadError(f"{path}: has no split {split!r} (splits: {', '.join(ds)})")
        ds = ds[split]
    return ds


def _open_hub_dataset(name: str, split: str) -> datasets.Dataset:
    try:
        return datasets.load_dataset(name, split=split)
    except Exception as e:
        raise DataLoadError(
            f"{name}: not a file or folder here, and the dataset hub could not provide it ({type(e).__name__}: {e})"
        ) from e


def iter_raw_rows(source: str | Path, split: str = "train") -> Iterator[RawRow]:
    """Raw rows of a source (a row file, a ``save_to_disk`` folder or a hub id), each with its position; raises
    ``DataLoadError`` when the source is unreadable."""
    path = Path(source)
    if path.is_dir():
        return _read_dataset(_open_dataset_folder(path, split))
    if path.is_file():
        if format_of(path) is None:
            raise DataLoadError(f"{path}: unknown file type (expected .json, .jsonl, .parquet or a dataset folder)")
        return iter_file_rows(path)
    if path.suffix or str(source).startswith((".", "/")) or str(source).count("/") > 1:
        raise DataLoadError(f"{source}: no such file or folder")
    return _read_dataset(_open_hub_dataset(str(source), split))


def _raw_text(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)


def _harmonize_extras(rows: list[dict[str, Any]], extras: list[str]) -> None:
    """Columns we pass through must have one type for Arrow; a column of mixed types becomes JSON text."""
    for col in extras:
        kinds = {type(r.get(col)) for r in rows if r.get(col) is not None}
        if len(kinds) > 1 or kinds & {dict, list}:
            for r in rows:
                if r.get(col) is not None:
                    r[col] = _raw_text(r[col])


def load_instruction_data(
    source: str | Path,
    format: str = "auto",
    split: str = "train",
    limit: int | None = None,
    rejects_path: str | Path | None = None,
    require_output: bool = True,
) -> LoadedData:
    """Load and normalize instruction data.

    Args:
        source: a ``.json`` / ``.jsonl`` / ``.parquet`` file, a ``save_to_disk`` folder, or a hub dataset id.
        format: ``auto`` (detected from the first object row), ``alpaca``, ``sharegpt`` or ``messages``.
        split: the split to read from a dataset folder or hub id.
        limit: read only the first ``limit`` rows of the source.
        rejects_path: where to write the rejected rows (JSONL); not written when None.
        require_output: False for prompt-only data (held-out or test instructions without responses).
    """
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"unknown data format {format!r}; choose auto, {', '.join(FORMATS)}")
    label = str(source)
    rows: list[dict[str, Any]] = []
    rejects: list[Reject] = []
    fmt = None if format == "auto" else format
    num_read = 0
    for raw in iter_raw_rows(source, split):
        if limit is not None and num_read >= limit:
            break
        num_read += 1
        if raw.error is not None:
            rejects.append(Reject(label, raw.row, None, raw.error, raw.text or "", raw.line))
            continue
        if fmt is None and isinstance(raw.value, dict):
            fmt = detect_format(raw.value)
            if fmt is None:
                raise DataLoadError(
                    f"{label}: cannot tell the data format from row {raw.row} (keys: {', '.join(raw.value)}); "
                    f"expected Alpaca (instruction/input/output), ShareGPT (conversations) or chat messages; "
                    f"set the format explicitly"
                )
        try:
            normalized = normalize_row(raw.value, fmt or "alpaca", require_output)
        except RowError as e:
            rejects.append(Reject(label, raw.row, e.field, e.reason, _raw_text(raw.value), raw.line))
            continue
        extras = {k: v for k, v in raw.value.items() if k not in NORMALIZED_COLUMNS and k != "row_index"}
        rows.append({"row_index": raw.row, **normalized, **extras})
    if num_read == 0:
        raise DataLoadError(f"{label}: contains no rows")
    extra_cols = sorted({k for r in rows for k in r} - set(NORMALIZED_COLUMNS) - {"row_index"})
    _harmonize_extras(rows, extra_cols)
    features = _features(extra_cols, rows)
    dataset = (
        datasets.Dataset.from_list(rows, features=features)
        if rows
        else datasets.Dataset.from_dict({name: [] for name in features}, features=features)
    )
    loaded = LoadedData(dataset, rejects, fmt or "alpaca", label, num_read)
    if rejects:
        logger.warning(summarize_rejects(rejects))
    if rejects_path is not None:
        loaded.write_rejects(rejects_path)
    return loaded


def _features(extra_cols: list[str], rows: list[dict[str, Any]]) -> datasets.Features:
    base = {
        "row_index": datasets.Value("int64"),
        "instruction": datasets.Value("string"),
        "input": datasets.Value("string"),
        "output": datasets.Value("string"),
        "system": datasets.Value("string"),
        "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
        "num_turns": datasets.Value("int64"),
        "source_format": datasets.Value("string"),
    }
    if extra_cols:
        inferred = datasets.Dataset.from_list([{k: r.get(k) for k in extra_cols} for r in rows]).features
        base.update(inferred)
    return datasets.Features(base)
