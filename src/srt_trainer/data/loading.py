"""Load instruction data from JSON, JSONL, Parquet, a ``save_to_disk`` folder or a hub id.

The result holds the normalized rows (schema in ``formats``) with a stable ``row_index`` (the row's 0-based position
in its source) plus the source's other columns exactly as read, and the list of rejected rows. Rows need not share
their other columns: an optional field (``id``, ``source``, ``category``) may appear in some rows only, or hold a
number in one row and text in another; each row keeps what it had. ``LoadedData.dataset`` is the same rows as a
``datasets.Dataset`` for code that wants Arrow (there a row without a column has None, and a column of mixed types
is JSON text). A source column that loading would overwrite (``row_index``, or a normalized column the format does
not read) is kept as ``orig_<name>``, and ``renamed`` says so. A file that cannot be read at all raises
``DataLoadError`` naming it.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from srt_trainer.data.formats import FORMATS, NORMALIZED_COLUMNS, detect_format, normalize_row
from srt_trainer.data.rejects import Reject, RowError, summarize_rejects, write_rejects
from srt_trainer.errors import SRTUserError
from srt_trainer.io import DataLoadError, RawRow, format_of, gc_paused, no_rows_message, row_window
from srt_trainer.io import iter_raw_rows as iter_file_rows

logger = logging.getLogger(__name__)


@dataclass
class LoadedData:
    """Normalized rows, the rows that were rejected, and where they came from."""

    rows: list[dict[str, Any]]
    rejects: list[Reject] = field(default_factory=list)
    format: str = ""
    source: str = ""
    num_rows_read: int = 0
    renamed: dict[str, str] = field(default_factory=dict)  # source column -> the name it is kept under
    _dataset: datasets.Dataset | None = field(default=None, repr=False)

    @property
    def dataset(self) -> datasets.Dataset:
        """The rows as a ``datasets.Dataset`` (built on first use)."""
        if self._dataset is None:
            self._dataset = _to_dataset(self.rows)
        return self._dataset

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


RESERVED_PREFIX = "orig_"


def kept_name(column: str, taken: Any, prefix: str = RESERVED_PREFIX) -> str:
    """The name under which a source column that a stage would overwrite is kept: ``orig_<name>`` (``orig_orig_...``
    while that is taken too)."""
    name = prefix + column
    while name in taken:
        name = prefix + name
    return name


def keep_source_columns(
    rows: list[dict[str, Any]], written: Any, what: str = "the source", prefix: str = RESERVED_PREFIX
) -> dict[str, str]:
    """Rename, in place, the source columns of ``rows`` that a stage would overwrite with its own (``written``):
    each is kept as ``orig_<name>`` (or ``prefix + name``), with a warning. Normalized columns are never renamed.
    Returns ``{column: kept name}``."""
    written = set(written) - set(NORMALIZED_COLUMNS) - {"row_index"}
    renamed: dict[str, str] = {}
    for r in rows:
        for k in [k for k in r if k in written]:
            new = renamed.get(k) or kept_name(k, r, prefix)
            renamed[k] = new
            r[new] = r.pop(k)
    if renamed:
        logger.warning(
            "%s: column(s) %s would be overwritten: kept as %s", what, ", ".join(renamed), ", ".join(renamed.values())
        )
    return renamed


# Source columns each format's normalizer reads (a ShareGPT ``conversations`` is also kept as it is).
_CONSUMED = {
    "alpaca": frozenset({"instruction", "input", "output", "system"}),
    "sharegpt": frozenset({"conversations"}),
    "messages": frozenset({"messages"}),
}
# per format: the columns read into the normalized column of the same name (not kept as extras), and the names a
# source column cannot keep (normalized columns the format does not read, and row_index)
_READ_INTO = {fmt: consumed & frozenset(NORMALIZED_COLUMNS) for fmt, consumed in _CONSUMED.items()}
_RESERVED = {fmt: (frozenset(NORMALIZED_COLUMNS) | {"row_index"}) - consumed for fmt, consumed in _CONSUMED.items()}


def _extras(value: dict[str, Any], fmt: str, renamed: dict[str, str]) -> dict[str, Any]:
    """The source row's other columns, as read; one that a normalized column would overwrite gets its kept name."""
    read_into = _READ_INTO[fmt]
    if value.keys() <= read_into:  # the common row: nothing but the fields the format reads
        return {}
    reserved = _RESERVED[fmt]
    out = {}
    for k, v in value.items():
        if k in read_into:  # read into the normalized column of that name
            continue
        if k in reserved:
            new = renamed.get(k) or kept_name(k, value)
            renamed[k] = new
            k = new
        out[k] = v
    return out


def load_instruction_data(
    source: str | Path,
    format: str = "auto",
    split: str = "train",
    limit: int | None = None,
    rejects_path: str | Path | None = None,
    require_output: bool = True,
    offset: int = 0,
    row_check: Callable[[dict[str, Any]], None] | None = None,
) -> LoadedData:
    """Load and normalize instruction data.

    Args:
        source: a ``.json`` / ``.jsonl`` / ``.parquet`` file, a ``save_to_disk`` folder, or a hub dataset id.
        format: ``auto`` (detected from the first object row), ``alpaca``, ``sharegpt`` or ``messages``.
        split: the split to read from a dataset folder or hub id.
        limit: read only the first ``limit`` rows of the source (after ``offset``).
        offset: skip the first ``offset`` rows; ``row_index`` stays the row's index in the source.
        rejects_path: where to write the rejected rows (JSONL); not written when None.
        require_output: False for prompt-only data (held-out or test instructions without responses).
        row_check: a stage's own test of a normalized row, raising ``RowError`` for one it cannot use (training: an
            empty response); such a row is rejected like any other, with its row and line in the file.
    """
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"unknown data format {format!r}; choose auto, {', '.join(FORMATS)}")
    label = str(source)
    rows: list[dict[str, Any]] = []
    rejects: list[Reject] = []
    renamed: dict[str, str] = {}
    fmt = None if format == "auto" else format
    num_read = 0
    with gc_paused():
        raws = iter_raw_rows(source, split)
        if offset or limit is not None:  # islice costs a little per row; most runs read the whole source
            raws = row_window(raws, offset, limit)
        for raw in raws:
            num_read += 1
            if raw.error is not None:
                rejects.append(Reject(label, raw.row, raw.field, raw.error, raw.text or "", raw.line))
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
                if row_check is not None:
                    row_check(normalized)
            except RowError as e:
                rejects.append(Reject(label, raw.row, e.field, e.reason, _raw_text(raw.value), raw.line))
                continue
            rows.append({"row_index": raw.row, **normalized, **_extras(raw.value, fmt or "alpaca", renamed)})
    if num_read == 0:
        raise DataLoadError(no_rows_message(label, offset))
    loaded = LoadedData(rows, rejects, fmt or "alpaca", label, num_read, renamed)
    if renamed:
        logger.warning(
            "%s: column(s) %s of the source would be overwritten: kept as %s",
            label,
            ", ".join(renamed),
            ", ".join(renamed.values()),
        )
    if rejects:
        logger.warning(summarize_rejects(rejects))
    if rejects_path is not None:
        loaded.write_rejects(rejects_path)
    return loaded


class NoUsableRowsError(SRTUserError, ValueError):
    """Every row of a stage's input was rejected: nothing to do."""


def rejects_reasons(loaded: LoadedData, rejects_path: str | Path | None = None) -> str:
    """Why rows were rejected, for a message: the most common reasons with their counts, the first reject in full
    and where the rejects file is."""
    reasons = Counter(r.reason for r in loaded.rejects).most_common(3)
    why = "; ".join(f"{n}x {reason}" for reason, n in reasons)
    where = f" (see {rejects_path})" if rejects_path is not None else ""
    first = f"; first: {loaded.rejects[0].describe()}" if loaded.rejects else ""
    return f"{why}{first}{where}"


def require_rows(loaded: LoadedData, rejects_path: str | Path | None = None, what: str = "usable") -> None:
    """Stop a stage whose input has no usable row, saying why (the most common reasons and where the rejects are)."""
    if loaded.rows:
        return
    why = rejects_reasons(loaded, rejects_path)
    raise NoUsableRowsError(f"{loaded.source}: none of its {loaded.num_rows_read} rows is {what}: {why}")


def _to_dataset(rows: list[dict[str, Any]]) -> datasets.Dataset:
    """Arrow wants one schema: every row gets every column (None where it has none), a column of mixed types
    becomes JSON text, and so do list and object columns outside the normalized ones."""
    extra_cols = list(dict.fromkeys(k for r in rows for k in r if k not in NORMALIZED_COLUMNS and k != "row_index"))
    table = [{**r, **{c: r.get(c) for c in extra_cols}} for r in rows]
    for col in extra_cols:
        kinds = {type(r[col]) for r in table if r[col] is not None}
        if len(kinds) > 1 or kinds & {dict, list}:
            for r in table:
                if r[col] is not None:
                    r[col] = _raw_text(r[col])
    features = _features(extra_cols, table)
    if not table:
        return datasets.Dataset.from_dict({name: [] for name in features}, features=features)
    return datasets.Dataset.from_list(table, features=features)


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
