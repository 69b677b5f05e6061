"""Reading row files: JSON (a list, or an object with a ``data`` list), JSONL and Parquet, through one table of
formats that serves both a whole read and a read of chosen rows.

- ``iter_raw_rows(path)`` reads a file row by row, each with its 0-based position, where it starts (``offset``) and,
  in JSONL and JSON lists, its 1-based line. JSON lines are split on line feeds only (never on the Unicode line
  separators a text may hold); a UTF-8 byte order mark is skipped. A row that cannot be used as text is a row of its
  own with the error (a line that is not JSON, bytes that are not UTF-8, a lone surrogate escape such as
  ``\\ud800``), so a caller can reject it and go on with the others. A file that cannot be read at all raises
  ``DataLoadError`` naming it. ``read_rows(path)`` is the strict form: the rows' values, the first unreadable one
  raising.
- ``read_rows_at(path, offsets)`` reads again the rows that start at ``offsets`` (of an earlier read), without the
  rest of the file.
- A new format is one entry of ``FORMATS``: how to read every row, and how to read the rows at offsets.
"""

from __future__ import annotations

import contextlib
import gc
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

from srt_trainer.errors import SRTUserError
from srt_trainer.io.paths import format_of

_T = TypeVar("_T")


class DataLoadError(SRTUserError, RuntimeError):
    """A row file or data source cannot be read at all (missing, unreadable, not the expected container)."""


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


def _jsonl_at(path: Path, offsets: list[int]) -> dict[int, Any]:
    found = {}
    with path.open("rb") as f:
        for offset in offsets:
            f.seek(offset)
            data = f.readline()
            line, _ = _decode_line(data.removeprefix(BOM) if offset == 0 else data)
            found[offset] = json.loads(line.rstrip("\r\n"))
    return found


def _json_at(path: Path, offsets: list[int]) -> dict[int, Any]:
    text = _read_text(path)
    start = len(text) - len(text.lstrip())
    if text[start : start + 1] == "[":  # a character offset in the list
        decoder = json.JSONDecoder()
        return {offset: decoder.raw_decode(text, offset)[0] for offset in offsets}
    data = json.loads(text)  # an object with a ``data`` list: the row's position in it
    data = data["data"] if isinstance(data, dict) else data
    return {offset: data[offset] for offset in offsets}


def _parquet_at(path: Path, offsets: list[int]) -> dict[int, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    found = {}
    first = 0
    k = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS):
        end = first + batch.num_rows
        local = []
        while k < len(offsets) and offsets[k] < end:
            local.append(offsets[k] - first)
            k += 1
        if local:
            for j, value in zip(local, batch.take(pa.array(local)).to_pylist(), strict=True):
                found[first + j] = value
        first = end
        if k == len(offsets):
            break
    return found


@dataclass(frozen=True)
class RowFormat:
    """How one format is read: every row (``rows``), and the values of the rows at sorted offsets (``at``)."""

    rows: Callable[[Path], Iterator[RawRow]]
    at: Callable[[Path, list[int]], dict[int, Any]]


# the one table of formats: a new format is one entry here
FORMATS = {
    "json": RowFormat(_read_json, _json_at),
    "jsonl": RowFormat(_read_jsonl, _jsonl_at),
    "parquet": RowFormat(_read_parquet, _parquet_at),
}


def _row_format(path: Path, format: str | None) -> RowFormat:
    fmt = format or format_of(path)
    if fmt not in FORMATS:
        raise DataLoadError(f"{path}: unknown file type (expected .json, .jsonl or .parquet)")
    return FORMATS[fmt]


def iter_raw_rows(path: str | Path, format: str | None = None) -> Iterator[RawRow]:
    """The rows of a row file, each with its position; ``format`` (``json``, ``jsonl``, ``parquet``) defaults to the
    extension's. Raises ``DataLoadError`` when the file is missing, of an unknown type or unreadable as a whole."""
    path = Path(path)
    if not path.is_file():
        raise DataLoadError(f"{path}: no such file")
    return _row_format(path, format).rows(path)


def read_rows_at(path: str | Path, offsets: Iterable[int], format: str | None = None) -> list[Any]:
    """The values of the rows of ``path`` that start at ``offsets`` (``RawRow.offset`` of an earlier read), in the
    order given: a stage that keeps only where its rows are can read back the few it needs. The rows were read
    once without error; a file changed since gives other rows."""
    path = Path(path)
    wanted = list(offsets)
    found = _row_format(path, format).at(path, sorted(set(wanted)))
    return [found[offset] for offset in wanted]


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
