"""Row files: the one reader and the one writer of every stage, and the store of resumable shards.

- ``iter_raw_rows(path)`` reads a JSON (a list, or an object with a ``data`` list), JSONL or Parquet file row by
  row, each with its 0-based position and, in JSONL and JSON lists, its 1-based line. JSON lines are split on
  line feeds only (never on the Unicode line separators a text may hold); a UTF-8 byte order mark is skipped. A row
  that cannot be used as text is a row of its own with the error (a line that is not JSON, bytes that are not
  UTF-8, a lone surrogate escape such as ``\\ud800``), so a caller can reject it and go on with the others. A file
  that cannot be read at all raises ``DataLoadError`` naming it. ``read_rows(path)`` is the strict form: the rows'
  values, the first unreadable one raising.
- ``write_rows(rows, path)`` writes JSONL, Parquet or a JSON list (by the file's extension) into a temporary file of
  a unique name, fsyncs it and renames it over ``path``: a killed run never leaves half a file, a finished one is on
  disk, and two runs never share a temporary file. ``write_text_atomic`` does the same for one text file.
- ``check_distinct_paths`` refuses a stage's outputs that are one of its inputs (links and ``..`` resolved), before
  any work; ``check_writable`` tries the output's folder first; ``output_lock`` is the advisory lock a stage holds
  on its output, so a second run on the same output stops with a message instead of racing the first.
- ``ShardStore``: the finished shards of a resumable run (scoring, evaluation answers), each a row file, and the
  manifest of the settings and data that made them, so that a resumed run never mixes with another one.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

from srt_trainer.errors import SRTUserError

logger = logging.getLogger(__name__)

OUTPUT_SUFFIXES = (".jsonl", ".parquet")
JSONL_SUFFIXES = (".jsonl", ".ndjson")


_T = TypeVar("_T")


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


class OutputLockedError(SRTUserError, RuntimeError):
    """Another run holds the lock of a stage's output."""


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same path once links and ``..`` are resolved, or hard links."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def check_distinct_paths(inputs: Mapping[str, str | Path | None], outputs: Mapping[str, str | Path | None]) -> None:
    """Refuse, before any work, an output that is one of the inputs or another output (paths resolved, symbolic and
    hard links included): writing it would destroy the input. Keys are what the user typed (``--data``,
    ``--output``); None values are skipped."""
    named_in = [(k, Path(v)) for k, v in inputs.items() if v is not None and str(v)]
    named_out = [(k, Path(v)) for k, v in outputs.items() if v is not None and str(v)]
    for out_name, out in named_out:
        for in_name, src in named_in:
            if same_file(out, src):
                raise OutputPathError(
                    f"{out}: {out_name} is the same file as {in_name} {src}; writing it would destroy the input, "
                    f"choose another {out_name}"
                )
    for i, (name_a, a) in enumerate(named_out):
        for name_b, b in named_out[i + 1 :]:
            if same_file(a, b):
                raise OutputPathError(f"{a}: {name_a} and {name_b} are the same file; choose different names")


def check_writable(path: str | Path) -> Path:
    """Create the folder of an output file and try a temporary file there, so that a path that cannot be written
    fails before any work is done (``OutputPathError`` naming it)."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{path}: is a folder, not a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise OutputPathError(f"{path}: cannot be written: {e.strerror or e}") from e
    return path


@contextlib.contextmanager
def output_lock(output: str | Path, what: str = "output") -> Iterator[Path]:
    """Hold the advisory lock of ``output`` (``<stem>.lock`` beside it) for the duration: a second run on the same
    output stops at once with ``OutputLockedError`` instead of racing this one over its files. The lock is the
    operating system's (``flock``): a killed run never leaves it held, so the next run can always resume."""
    from filelock import FileLock, Timeout

    lock_path = sidecar_path(output, "lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_path), timeout=0)
        lock.acquire()
    except Timeout:
        raise OutputLockedError(
            f"{output}: another run is writing this {what} (it holds {lock_path}); wait for it to finish or choose "
            f"another output"
        ) from None
    except OSError as e:
        raise OutputPathError(f"{lock_path}: cannot be created: {e.strerror or e}") from e
    try:
        yield lock_path
    finally:
        lock.release()


@contextlib.contextmanager
def guard_outputs(
    inputs: Mapping[str, str | Path | None],
    output: str | Path,
    sidecars: Mapping[str, str | Path | None] | None = None,
    what: str = "output",
    is_main: bool = True,
) -> Iterator[None]:
    """What every stage does before any work: refuse outputs (``output`` and the ``sidecars`` written beside it) that
    are one of the ``inputs``, try that ``output`` can be written, and hold its lock until the stage is done (the
    main process only; the others write nothing of their own there)."""
    if not is_main:
        yield
        return
    lock = sidecar_path(output, "lock")
    check_distinct_paths(inputs, {"--output": output, **(sidecars or {}), "the lock file": lock})
    check_writable(output)
    with output_lock(output, what):
        yield


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

BOM = b"\xef\xbb\xbf"


@dataclass(slots=True)
class RawRow:
    """One row as read: its 0-based position, its value, and where the file has lines its 1-based line; a row that
    cannot be used has ``error`` set (and ``field`` where one field is at fault) and its raw ``text``. ``offset``
    says where the row is in its file (a byte offset in JSONL, a character offset in a JSON list, a row number in
    Parquet), so that ``read_rows_at`` can read it again without the rest of the file."""

    row: int
    value: Any
    line: int | None = None
    text: str | None = None
    error: str | None = None
    field: str | None = None
    offset: int | None = None  # where the row starts, for ``read_rows_at``


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while rows are built by the hundred thousand: it would walk every row
    built so far again and again and find no garbage (rows hold no cycles); measured, that doubled the time of
    loading a file. Reference counting still frees everything at once. Nested uses keep it paused to the end of the
    outermost."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _read_bytes(path: Path) -> bytes:
    """The file's bytes without a byte order mark."""
    try:
        return path.read_bytes().removeprefix(BOM)
    except OSError as e:
        raise DataLoadError(f"{path}: cannot be read: {e.strerror or e}") from e


def _read_text(path: Path) -> str:
    """The file's text; bytes that are not UTF-8 are kept as surrogate escapes (U+DC80-U+DCFF), so that one bad row
    never costs the others (each row is checked by ``_unicode_error``); a byte order mark is dropped."""
    return _read_bytes(path).decode("utf-8", errors="surrogateescape")


def _read_text_checked(path: Path) -> tuple[str, bool]:
    """``_read_text`` and whether the text may hold a surrogate, decided for the whole file as ``_decode_line``
    decides for a line (a regular expression over a whole file's characters cost a third of loading it)."""
    return _decode_line(_read_bytes(path))


# A lone surrogate: in a file's text, a byte that is not UTF-8 (kept as U+DC80-U+DCFF by ``surrogateescape``); in a
# parsed value, also a ``\ud800``-style escape. Found by the regular-expression engine, never by a loop in Python.
_SURROGATE = re.compile("[\ud800-\udfff]")
# the JSON escape of a surrogate code point: the only way a parsed value gets one from text that is valid UTF-8
# (a pair of them is one character and fine; ``_first_surrogate`` tells which)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_UNDECODABLE = re.compile("[\udc80-\udcff]")


def _first_surrogate(value: Any, where: str = "") -> tuple[str, str] | None:
    """(field path, character) of the first surrogate code point in a parsed value, keys included."""
    if isinstance(value, str):
        found = _SURROGATE.search(value)
        return (where, found.group()) if found is not None else None
    if isinstance(value, Mapping):
        for k, v in value.items():
            name = f"{where}.{k}" if where else str(k)
            found = _first_surrogate(k, name) or _first_surrogate(v, name)
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _first_surrogate(v, f"{where}[{i}]")
            if found:
                return found
    return None


def _unicode_error(value: Any, source: str, start: int = 0, end: int | None = None) -> tuple[str | None, str] | None:
    """(field, reason) when a parsed row holds text that is not valid Unicode: bytes that are not UTF-8 in the file
    (``source[start:end]``, the row's text as decoded with surrogate escapes) or a lone surrogate escape such as
    ``\\ud800``."""
    end = len(source) if end is None else end
    raw = _SURROGATE.search(source, start, end)
    if raw is not None:
        byte = ord(raw.group()) - 0xDC00
        return None, f"not UTF-8 text: byte 0x{byte:02x} (column {raw.start() - start + 1})"
    found = _first_surrogate(value)
    if found is None:
        return None
    field, ch = found
    if start == end and "\udc80" <= ch <= "\udcff":
        byte = ord(ch) - 0xDC00
        return field or None, f"not UTF-8 text: byte 0x{byte:02x} (or a lone surrogate escape \\u{ord(ch):04x})"
    return field or None, f"invalid Unicode: a lone surrogate escape \\u{ord(ch):04x} cannot be encoded as UTF-8"


def _decoded_row(
    row: int, value: Any, source: str, line: int | None, start: int = 0, end: int | None = None, check: bool = True
) -> RawRow:
    """The row parsed from ``source[start:end]``; ``check=False`` when the caller knows that span holds neither a
    surrogate nor a surrogate escape (then the value cannot hold one either)."""
    bad = _unicode_error(value, source, start, end) if check else None
    if bad is None:
        return RawRow(row=row, value=value, line=line)
    field, reason = bad
    text = source[start:end] if (start, end) != (0, None) else source
    return RawRow(row=row, value=None, line=line, text=_printable(text), error=reason, field=field)


def _printable(text: str) -> str:
    """A row's text for a rejects file: undecodable bytes shown as U+FFFD, lone surrogates as their escapes."""
    text = _UNDECODABLE.sub("\ufffd", text)
    return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _may_hold_surrogates(text: str, start: int = 0, end: int | None = None) -> bool:
    """Whether ``text[start:end]`` holds a surrogate or a surrogate escape: where it holds neither, no value parsed
    from it can, and the rows need no check of their own."""
    end = len(text) if end is None else end
    return _SURROGATE.search(text, start, end) is not None or _SURROGATE_ESCAPE.search(text, start, end) is not None


def _read_json(path: Path) -> Iterator[RawRow]:
    text, check = _read_text_checked(path)
    start = len(text) - len(text.lstrip())
    if text[start : start + 1] == "[":
        yield from _read_json_list(path, text, start + 1, check)
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataLoadError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataLoadError(f"{path}: expected a JSON list of rows (or an object with a 'data' list)")
    del text
    for i, value in enumerate(data):
        # bytes that are not UTF-8 show as surrogates in the value
        raw = _decoded_row(i, value, "", None, check=check)
        raw.offset = i
        yield raw


_WS = re.compile(r"[ \t\n\r]*")


def _read_json_list(path: Path, text: str, pos: int, check: bool) -> Iterator[RawRow]:
    """The elements of a JSON list one by one, each with the line it starts on (counted on from the previous row's,
    so the whole file is counted once); ``check``: whether the text may hold a surrogate (then each row is looked at
    for one)."""
    decoder = json.JSONDecoder()
    pos = _WS.match(text, pos).end()
    if text[pos : pos + 1] == "]":
        tail = _WS.match(text, pos + 1).end()
        if tail != len(text):
            raise DataLoadError(f"{path}: not valid JSON (line {_line_of(text, tail)}: extra data after the list)")
        return
    row = 0
    line, counted = 1, 0  # the line of text[counted]
    while True:
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataLoadError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
        line += text.count("\n", counted, pos)
        counted = pos
        raw = _decoded_row(row, value, text, line, pos, end, check=check and _may_hold_surrogates(text, pos, end))
        raw.offset = pos
        yield raw
        row += 1
        pos = _WS.match(text, end).end()
        sep = text[pos : pos + 1]
        if sep == "]":
            tail = _WS.match(text, pos + 1).end()
            if tail != len(text):
                raise DataLoadError(f"{path}: not valid JSON (line {_line_of(text, tail)}: extra data after the list)")
            return
        if sep != ",":
            raise DataLoadError(f"{path}: not valid JSON (line {_line_of(text, pos)}: expected ',' or ']')")
        pos = _WS.match(text, pos + 1).end()


def _decode_line(data: bytes) -> tuple[str, bool]:
    """The text of a line (or of a whole file) and whether it may hold a surrogate: text that is valid UTF-8 holds
    none unless it escapes one (``\\ud800``); other bytes are kept as surrogate escapes, for ``_unicode_error`` to
    name."""
    try:
        line = data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="surrogateescape"), True
    return line, "\\u" in line and _SURROGATE_ESCAPE.search(line) is not None


def _read_jsonl(path: Path) -> Iterator[RawRow]:
    try:
        f = path.open("rb")
    except OSError as e:
        raise DataLoadError(f"{path}: cannot be read: {e.strerror or e}") from e
    loads, escape = json.loads, _SURROGATE_ESCAPE.search
    with f:
        row = 0
        start = 0  # the byte offset of the line
        # binary lines: split on b"\n" only, never on the line separators (U+2028, U+0085, ...) of a row's text
        for line_no, data in enumerate(f, start=1):
            offset, start = start, start + len(data)
            if offset == 0:
                data = data.removeprefix(BOM)
            # the common line, inline (this loop runs once per row of every stage): valid UTF-8, no surrogate
            # escape, so no surrogate can be in its value
            try:
                line = data.decode("utf-8")
            except UnicodeDecodeError:
                line, check = _decode_line(data)
            else:
                check = "\\u" in line and escape(line) is not None
            if not line or line.isspace():
                continue
            try:
                value = loads(line)  # the line feed (and a carriage return) is whitespace to JSON
            except json.JSONDecodeError:
                yield _bad_jsonl_line(row, line, line_no, offset, check)
            else:
                if check:
                    raw = _decoded_row(row, value, line.rstrip("\r\n"), line_no)
                    raw.offset = offset
                    yield raw
                else:
                    yield RawRow(row, value, line_no, None, None, None, offset)
            row += 1


def _bad_jsonl_line(row: int, line: str, line_no: int, offset: int, check: bool) -> RawRow:
    """The rejected row of a JSONL line that does not parse, with the parser's reason for the line alone."""
    line = line.rstrip("\r\n")
    try:  # the error as the line alone gives it (past its end, a line feed would be line 2)
        json.loads(line)
        error = "invalid JSON"
    except json.JSONDecodeError as e:
        error = f"invalid JSON: {e.msg} (column {e.colno})"
    bad = _unicode_error(None, line) if check else None
    if bad is not None:
        error = bad[1]
    return RawRow(row=row, value=None, line=line_no, text=_printable(line), error=error, offset=offset)


PARQUET_BATCH_ROWS = 8192


def _read_parquet(path: Path) -> Iterator[RawRow]:
    """Rows batch by batch: the file's rows never all live as Python objects at once."""
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
        batches = file.iter_batches(batch_size=PARQUET_BATCH_ROWS)
        first = next(batches, None)
    except Exception as e:  # pyarrow raises several unrelated types for unreadable files
        raise DataLoadError(f"{path}: not a readable Parquet file: {e}") from e
    i = 0
    batch = first
    while batch is not None:
        for value in batch.to_pylist():
            yield RawRow(row=i, value=value, offset=i)
            i += 1
        try:
            batch = next(batches, None)
        except Exception as e:
            raise DataLoadError(f"{path}: not a readable Parquet file: {e}") from e


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


def read_rows_at(path: str | Path, offsets: Iterable[int], format: str | None = None) -> list[Any]:
    """The values of the rows of ``path`` that start at ``offsets`` (``RawRow.offset`` of an earlier read), in the
    order given: a stage that keeps only where its rows are can read back the few it needs. The rows were read
    once without error; a file changed since gives other rows."""
    path = Path(path)
    fmt = format or format_of(path)
    wanted = list(offsets)
    order = sorted(set(wanted))
    found: dict[int, Any] = {}
    if fmt == "jsonl":
        with path.open("rb") as f:
            for offset in order:
                f.seek(offset)
                data = f.readline()
                line, _ = _decode_line(data.removeprefix(BOM) if offset == 0 else data)
                found[offset] = json.loads(line.rstrip("\r\n"))
    elif fmt == "json":
        text = _read_text(path)
        start = len(text) - len(text.lstrip())
        if text[start : start + 1] == "[":
            decoder = json.JSONDecoder()
            found = {offset: decoder.raw_decode(text, offset)[0] for offset in order}
        else:
            data = json.loads(text)
            data = data["data"] if isinstance(data, dict) else data
            found = {offset: data[offset] for offset in order}
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        first = 0
        k = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS):
            end = first + batch.num_rows
            local = []
            while k < len(order) and order[k] < end:
                local.append(order[k] - first)
                k += 1
            if local:
                for j, value in zip(local, batch.take(pa.array(local)).to_pylist(), strict=True):
                    found[first + j] = value
            first = end
            if k == len(order):
                break
    else:
        raise DataLoadError(f"{path}: unknown file type (expected .json, .jsonl or .parquet)")
    return [found[offset] for offset in wanted]


def offset_field() -> Any:
    """``--offset``, declared once for every reader that also takes ``--limit``."""
    return field(
        default=0,
        metadata={
            "help": "Skip the first N rows of the file (with --limit, the release's start / end indices, to split "
            "work by hand); row indices in the outputs stay those of the file."
        },
    )


def row_window(rows: Iterable[_T], offset: int = 0, limit: int | None = None) -> Iterator[_T]:
    """Rows ``offset`` to ``offset + limit`` of a source, by position (rejected rows count, as they have an index),
    keeping each row's own index. A negative offset or limit is refused."""
    if offset < 0:
        raise DataLoadError(f"--offset must be 0 or more, not {offset}")
    if limit is not None and limit < 0:
        raise DataLoadError(f"--limit must be 0 or more, not {limit}")
    return islice(rows, offset, None if limit is None else offset + limit)


def no_rows_message(label: str, offset: int = 0) -> str:
    """Why a source gave no rows: empty, or ``--offset`` past its end."""
    return f"{label}: no rows from --offset {offset} on" if offset else f"{label}: contains no rows"


def describe_row(raw: RawRow) -> str:
    """``row R (line L), field 'F'``: where a row is, for messages."""
    where = f"row {raw.row}" + (f" (line {raw.line})" if raw.line is not None else "")
    return where + (f", field '{raw.field}'" if raw.field else "")


def read_rows(path: str | Path, format: str | None = None) -> list[Any]:
    """Every row's value of a row file (see ``iter_raw_rows``); a row that does not parse raises ``DataLoadError``
    naming the file, row and line."""
    rows = []
    with gc_paused():
        for raw in iter_raw_rows(path, format):
            if raw.error is not None:
                raise DataLoadError(f"{path}: {describe_row(raw)}: {raw.error}")
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


def _temp_beside(path: Path, suffix: str = ".tmp") -> Path:
    """A new, empty temporary file beside ``path`` whose name no other run can take."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    return Path(tmp)


def _replace(tmp: Path, path: Path) -> None:
    try:
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; a row file is as readable as any other
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """A failed write (a full disk, an I/O error) names the file it was writing: the system's error names none, or
    the temporary file beside it."""
    try:
        yield
    except OSError as e:
        if e.errno is None or e.filename == str(path):
            raise
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e


def write_rows(rows: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write rows to ``path``: JSONL (``.jsonl``), Parquet (``.parquet``) or one JSON list (``.json``), through a
    temporary file of a unique name beside it that is fsync'd and then renamed over ``path``.

    JSON keeps each row as it is (a row without a column has no key); Parquet gives every row every column."""
    path = Path(path)
    fmt = format_of(path)
    if fmt is None:
        raise OutputPathError(f"{path}: a row file must end in .jsonl, .json or .parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _naming(path):
        _write_rows(rows, path, fmt)
    return path


def _write_rows(rows: Iterable[Mapping[str, Any]], path: Path, fmt: str) -> None:
    tmp = _temp_beside(path)
    try:
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
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _replace(tmp, path)


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Write a text file (a summary, a manifest) as ``write_rows`` writes rows: whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _naming(path):
        tmp = _temp_beside(path)
        try:
            tmp.write_text(text, encoding="utf-8")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _replace(tmp, path)
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
                    "remove that folder to start over (srt score and srt eval generate do it with --overwrite), or "
                    "write to another output"
                )
        elif is_main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(json.dumps(dict(manifest), indent=2), path)

    def path(self, k: int) -> Path:
        return self.work_dir / f"shard-{k:06d}.jsonl"

    def done(self, num_shards: int) -> list[int]:
        """The shards among the first ``num_shards`` that are finished."""
        return [k for k in range(num_shards) if self.path(k).exists()]

    def write(self, k: int, rows: Iterable[Mapping[str, Any]]) -> None:
        write_rows(rows, self.path(k))

    def read(self, k: int) -> list[dict[str, Any]]:
        return read_rows(self.path(k), "jsonl")
