"""Writing row and text files whole or not at all.

``write_rows(rows, path)`` writes JSONL, Parquet or a JSON list (by the file's extension) into a temporary file of a
unique name, fsyncs it and renames it over ``path``: a killed run never leaves half a file, a finished one is on disk,
and two runs never share a temporary file. ``write_text_atomic`` and ``write_json`` do the same for one text file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from srt_trainer.io.paths import OutputPathError, format_of

logger = logging.getLogger(__name__)


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


# built once: ``json.dumps`` with any non-default option builds a new encoder for every call
_STRICT = json.JSONEncoder(ensure_ascii=False, allow_nan=False)
_TEXT = json.JSONEncoder(ensure_ascii=False)
_ASCII = json.JSONEncoder(ensure_ascii=True)


def _json_line(row: Mapping[str, Any]) -> bytes:
    """One row as UTF-8 JSON: NaN / infinity (a missing statistic) as null, a lone surrogate as its JSON escape so
    the file stays UTF-8. The common row is dumped and encoded once."""
    try:
        line = _STRICT.encode(row)
    except ValueError:  # a non-finite float: JSON has no NaN
        line = _TEXT.encode({k: _clean(v) for k, v in row.items()})
    try:
        return line.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: kept as its JSON escape
        return _ASCII.encode({k: _clean(v) for k, v in row.items()}).encode("ascii")


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """A new temporary file beside ``path``, of a name no other run can take, for the body to write; then fsync'd
    and renamed over ``path``, or removed when the body fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp: Path | None = None
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; a row file is as readable as any other
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno is not None and e.filename != str(path):
            # a full disk or an I/O error names no file, or the temporary one: name the file being written
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once: setting it to read it is not thread-safe


def _arrow_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows Arrow can take: every row with every column (None where a row lacks it) and, for the rare column whose
    values have no one Arrow type (a number in one row, text in another), its values as JSON text."""
    import pyarrow as pa

    columns = list(dict.fromkeys(k for r in rows for k in r))
    mixed = []
    for c in columns:
        try:
            pa.array([r.get(c) for r in rows])
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            mixed.append(c)
    if mixed:
        logger.warning(
            "Parquet holds one type per column: column(s) %s, of mixed types, are written as JSON text (write .jsonl "
            "to keep them as they are)",
            ", ".join(mixed),
        )
    return [
        {
            c: (json.dumps(r[c], ensure_ascii=False) if c in mixed and r.get(c) is not None else r.get(c))
            for c in columns
        }
        for r in rows
    ]


def write_rows(rows: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write rows to ``path``: JSONL (``.jsonl``), Parquet (``.parquet``) or one JSON list (``.json``), through a
    temporary file of a unique name beside it that is fsync'd and then renamed over ``path``.

    JSON keeps each row as it is (a row without a column has no key); Parquet gives every row every column."""
    path = Path(path)
    fmt = format_of(path)
    if fmt is None:
        raise OutputPathError(f"{path}: a row file must end in .jsonl, .json or .parquet")
    with _atomic(path) as tmp:
        if fmt == "parquet":
            import datasets

            cleaned = [{k: _clean(v) for k, v in r.items()} for r in rows]
            datasets.Dataset.from_list(_arrow_rows(cleaned)).to_parquet(str(tmp))
        else:
            # row by row, never the whole file in memory: a stage may write a million rows
            with tmp.open("wb") as f:
                first = True
                for r in rows:
                    if fmt == "json":
                        f.write(b"[\n" if first else b",\n")
                        f.write(_json_line(r))
                    else:
                        f.write(_json_line(r) + b"\n")
                    first = False
                if fmt == "json":
                    f.write(b"[]" if first else b"\n]")
    return path


def write_json(value: Any, path: str | Path, default: Any = None) -> Path:
    """A JSON file (a summary, a manifest) written as ``write_text_atomic`` writes text: indented, UTF-8 (a lone
    surrogate, as in a path of bytes that are not UTF-8, kept as its escape); ``default`` as ``json.dumps`` takes it."""
    try:
        text = json.dumps(value, indent=2, ensure_ascii=False, default=default)
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, indent=2, default=default)
    return write_text_atomic(text, path)


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Write a text file (a summary, a manifest) as ``write_rows`` writes rows: whole or not at all."""
    path = Path(path)
    with _atomic(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
