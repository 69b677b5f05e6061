"""Row files: the one reader and the one writer of every stage, and the store of resumable shards.

- ``iter_raw_rows(path)`` reads a JSON (a list, or an object with a ``data`` list), JSONL or Parquet file row by
  row, each with its 0-based position (and, in JSONL, its 1-based line); a line that is not JSON is a row of its own
  with the error, so a caller can reject it and go on. A file that cannot be read at all raises ``DataLoadError``
  naming it. ``read_rows(path)`` is the strict form: the rows' values, the first unreadable one raising.
- ``write_rows(rows, path)`` writes JSONL, Parquet or a JSON list (by the file's extension) into a temporary file,
  fsyncs it and renames it over ``path``: a killed run never leaves half a file, and a finished one is on disk.
- ``ShardStore``: the finished shards of a resumable run (scoring, evaluation answers), each a row file, and the
  manifest of the settings and data that made them, so that a resumed run never mixes with another one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from srt_trainer.errors import SRTUserError

OUTPUT_SUFFIXES = (".jsonl", ".parquet")
JSONL_SUFFIXES = (".jsonl", ".ndjson")


class DataLoadError(SRTUserError, RuntimeError):
    """A row file or data source cannot be read at all (missing, unreadable, not the expected container)."""


class OutputPathError(SRTUserError, ValueError):
    """A stage's output file has a name the stage cannot write."""


class ResumeMismatchError(SRTUserError, RuntimeError):
    """A shard folder holds the shards of a run with other settings or data."""


# -- paths ----------------------------------------------------------------------------------------------------


def sidecar_path(output: str | Path, suffix: str) -> Path:
    """A file that belongs beside a stage's output: ``scores.jsonl`` → ``scores.<suffix>``."""
    output = Path(output)
    name = output.name
    for ext in (*OUTPUT_SUFFIXES, ".json"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return output.with_name(f"{name}.{suffix}")


def check_output_path(path: str | Path) -> Path:
    """A stage's output: JSONL or Parquet."""
    path = Path(path)
    if not path.name.endswith(OUTPUT_SUFFIXES):
        raise OutputPathError(f"{path}: the output must end in .jsonl or .parquet")
    return path


def format_of(path: str | Path) -> str | None:
    """``json``, ``jsonl`` or ``parquet`` from the file's extension; None for any other name."""
    name = Path(path).name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(".json"):
        return "json"
    if name.endswith(".parquet"):
        return "parquet"
    return None


def sniff_format(path: str | Path) -> str:
    """For files that may hold JSON or JSONL whatever their name: ``parquet`` by extension; ``json`` when the text is
    one JSON list (or an object with a ``data`` list); ``jsonl`` otherwise."""
    path = Path(path)
    if format_of(path) == "parquet":
        return "parquet"
    text = _read_text(path)
    head = text.lstrip()[:1]
    if head == "[":
        return "json"
    if head == "{":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return "jsonl"
        return "json" if isinstance(data, dict) and isinstance(data.get("data"), list) else "jsonl"
    return "jsonl"


# -- reading --------------------------------------------------------------------------------------------------


@dataclass
class RawRow:
    """One row as read: its 0-based position, its value, and where the file has lines its 1-based line; a row that
    does not parse has ``error`` set and its raw ``text``."""

    row: int
    value: Any
    line: int | None = None
    text: str | None = None
    error: str | None = None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataLoadError(f"{path}: cannot be read: {e}") from e


def _read_json(path: Path) -> Iterator[RawRow]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise DataLoadError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataLoadError(f"{path}: expected a JSON list of rows (or an object with a 'data' list)")
    for i, value in enumerate(data):
        yield RawRow(row=i, value=value)


def _read_jsonl(path: Path) -> Iterator[RawRow]:
    try:
        f = path.open(encoding="utf-8")
    except OSError as e:
        raise DataLoadError(f"{path}: cannot be read: {e}") from e
    with f:
        row = 0
        try:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield RawRow(row=row, value=json.loads(line), line=line_no)
                except json.JSONDecodeError as e:
                    yield RawRow(
                        row=row,
                        value=None,
                        line=line_no,
                        text=line.rstrip("\n"),
                        error=f"invalid JSON: {e.msg} (column {e.colno})",
                    )
                row += 1
        except UnicodeDecodeError as e:
            raise DataLoadError(f"{path}: not UTF-8 text near row {row}: {e}") from e


def _read_parquet(path: Path) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several unrelated types for unreadable files
        raise DataLoadError(f"{path}: not a readable Parquet file: {e}") from e
    for i, value in enumerate(table.to_pylist()):
        yield RawRow(row=i, value=value)


_READERS = {"json": _read_json, "jsonl": _read_jsonl, "parquet": _read_parquet}


def iter_raw_rows(path: str | Path, format: str | None = None) -> Iterator[RawRow]:
    """The rows of a row file, each with its position; ``format`` (``json``, ``jsonl``, ``parquet``) defaults to the
    extension's. Raises ``DataLoadError`` when the file is missing, of an unknown type or unreadable as a whole."""
    path = Path(path)
    if not path.is_file():
        raise DataLoadError(f"{path}: no such file")
    fmt = format or format_of(path)
    if fmt not in _READERS:
        raise DataLoadError(f"{path}: unknown file type (expected .json, .jsonl or .parquet)")
    return _READERS[fmt](path)


def read_rows(path: str | Path, format: str | None = None) -> list[Any]:
    """Every row's value of a row file (see ``iter_raw_rows``); a row that does not parse raises ``DataLoadError``
    naming the file, row and line."""
    rows = []
    for raw in iter_raw_rows(path, format):
        if raw.error is not None:
            raise DataLoadError(f"{path}: row {raw.row} (line {raw.line}): {raw.error}")
        rows.append(raw.value)
    return rows


# -- writing --------------------------------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    # JSON has no NaN: a missing statistic is null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_rows(rows: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write rows to ``path``: JSONL (``.jsonl``), Parquet (``.parquet``) or one JSON list (``.json``), through a
    temporary file beside it that is fsync'd and then renamed over ``path``."""
    path = Path(path)
    fmt = format_of(path)
    if fmt is None:
        raise OutputPathError(f"{path}: a row file must end in .jsonl, .json or .parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    rows = [{k: _clean(v) for k, v in r.items()} for r in rows]
    try:
        if fmt == "parquet":
            import datasets

            datasets.Dataset.from_list(rows).to_parquet(str(tmp))
        else:
            with tmp.open("w", encoding="utf-8") as f:
                if fmt == "json":
                    f.write(json.dumps(rows, ensure_ascii=False, indent=1))
                else:
                    for r in rows:
                        f.write(json.dumps(r, ensure_ascii=False) + "\n")
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# -- resumable shards -----------------------------------------------------------------------------------------


def shard_bounds(num_rows: int, shard_size: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each fixed-size shard of ``num_rows`` rows."""
    return [(s, min(s + shard_size, num_rows)) for s in range(0, num_rows, shard_size)]


class ShardStore:
    """The finished shards of a resumable run in ``work_dir`` (``shard-NNNNNN.jsonl``, each written by
    ``write_rows``), with ``manifest.json``: the settings and data fingerprint of the run that made them.

    Resuming needs ``work_dir`` on storage every process sees, as with Trainer checkpoints.
    """

    MANIFEST = "manifest.json"

    def __init__(self, work_dir: str | Path) -> None:
        self.work_dir = Path(work_dir)

    def clear(self) -> None:
        """Forget every shard (``--overwrite``)."""
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def check_manifest(self, manifest: Mapping[str, Any], is_main: bool = True) -> None:
        """Refuse to resume into a folder whose run had other settings or data; the main process writes the manifest
        of a new run."""
        path = self.work_dir / self.MANIFEST
        if path.exists():
            old = json.loads(path.read_text())
            if old != manifest:
                diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
                raise ResumeMismatchError(
                    f"{self.work_dir} holds shards of a run with different {', '.join(diff)}; "
                    f"remove it (or pass --overwrite) to start over"
                )
        elif is_main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(dict(manifest), indent=2))

    def path(self, k: int) -> Path:
        return self.work_dir / f"shard-{k:06d}.jsonl"

    def done(self, num_shards: int) -> list[int]:
        """The shards among the first ``num_shards`` that are finished."""
        return [k for k in range(num_shards) if self.path(k).exists()]

    def write(self, k: int, rows: Iterable[Mapping[str, Any]]) -> None:
        write_rows(rows, self.path(k))

    def read(self, k: int) -> list[dict[str, Any]]:
        return read_rows(self.path(k), "jsonl")
