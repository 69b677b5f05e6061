"""Test sets of the paper family's evaluation, read into one schema.

Each set spells its fields its own way: Vicuna (``text``, ``question_id``), Koala (``prompt``, ``id``), WizardLM
(``Instruction``, ``idx``), Self-Instruct (``instruction`` + ``instances[0].input``, ``id``) and LIMA
(``conversations``: the first user turn, as a string or a list of turns). Any other JSON / JSONL / Parquet file
with an ``instruction`` (optionally ``input``), ``prompt`` or ``text`` field works too. Every row becomes
``{id, test_set, instruction, input}``; a row that cannot be read is rejected with its file, row and field.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from srt_trainer.data.rejects import Reject, RowError
from srt_trainer.io import DataLoadError, iter_raw_rows, no_rows_message, row_window

TEST_SET_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet")
# Field holding the instruction, in the order they are tried; ``conversations`` is LIMA's.
INSTRUCTION_FIELDS = ("instruction", "Instruction", "prompt", "text", "conversations")
ID_FIELDS = ("id", "question_id", "idx")
ITEM_COLUMNS = ("id", "test_set", "instruction", "input")


@dataclass
class TestSet:
    """The items of one test set and the rows of its file that could not be used."""

    __test__ = False  # not a pytest class

    name: str
    source: str
    items: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    num_rows_read: int = 0


def set_name_from_path(path: str | Path) -> str:
    """``vicuna_test_set.jsonl`` → ``vicuna``; any other file → its name without extension."""
    name = Path(path).name
    for suffix in TEST_SET_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    for tail in ("_test_set", "_testset", "_test", "-test-set", "-test"):
        if name.lower().endswith(tail) and len(name) > len(tail):
            return name[: -len(tail)]
    return name


def _string(row: Mapping[str, Any], key: str) -> str:
    value = row[key]
    if not isinstance(value, str):
        raise RowError(key, f"not a string (got {type(value).__name__})")
    if not value.strip():
        raise RowError(key, "empty")
    return value


def _first_user_turn(value: Any) -> str:
    """LIMA's ``conversations``: a string, a list of strings (the first is the user's) or ShareGPT / chat turns."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        first = value[0]
        if isinstance(first, str):
            return first
        for turn in value:
            if isinstance(turn, Mapping):
                role = turn.get("from", turn.get("role"))
                text = turn.get("value", turn.get("content"))
                if role in ("human", "user") and isinstance(text, str):
                    return text
    raise RowError("conversations", "no user turn (expected a string or a list of turns)")


def normalize_item(row: Any, test_set: str, row_index: int) -> dict[str, Any]:
    """One test row as ``{id, test_set, instruction, input}``; raises ``RowError`` naming the bad field."""
    if not isinstance(row, Mapping):
        raise RowError(None, f"not an object (got {type(row).__name__})")
    key = next((k for k in INSTRUCTION_FIELDS if k in row), None)
    if key is None:
        raise RowError("instruction", f"missing (expected one of {', '.join(INSTRUCTION_FIELDS)})")
    if key == "conversations":
        instruction = _first_user_turn(row[key])
        if not instruction.strip():
            raise RowError(key, "empty")
    else:
        instruction = _string(row, key)
    input_text = ""
    if key == "instruction" and isinstance(row.get("instances"), list):  # Self-Instruct: the first instance's input
        first = row["instances"][0] if row["instances"] else None
        if not isinstance(first, Mapping) or not isinstance(first.get("input", ""), str):
            raise RowError("instances", "expected a list whose first entry has a string 'input'")
        input_text = first.get("input") or ""
    elif row.get("input") is not None:
        if not isinstance(row["input"], str):
            raise RowError("input", f"not a string (got {type(row['input']).__name__})")
        input_text = row["input"]
    id_key = next((k for k in ID_FIELDS if row.get(k) is not None), None)
    item_id = str(row[id_key]) if id_key else str(row_index)
    return {"id": item_id, "test_set": test_set, "instruction": instruction, "input": input_text}


def read_test_set(path: str | Path, name: str | None = None, limit: int | None = None, offset: int = 0) -> TestSet:
    """Read one test-set file; ``offset`` skips the first rows and ``limit`` keeps N rows after them (an item
    without an id keeps its index in the file). A duplicate id is rejected (answers are matched by test set and
    id)."""
    path = Path(path)
    result = TestSet(name=name or set_name_from_path(path), source=str(path))
    seen: set[str] = set()
    for raw in row_window(iter_raw_rows(path), offset, limit):
        result.num_rows_read += 1
        if raw.error is not None:
            result.rejects.append(Reject(str(path), raw.row, raw.field, raw.error, raw.text or "", raw.line))
            continue
        try:
            item = normalize_item(raw.value, result.name, raw.row)
            if item["id"] in seen:
                raise RowError("id", f"duplicate id {item['id']!r}")
        except RowError as e:
            text = json.dumps(raw.value, ensure_ascii=False, default=str)
            result.rejects.append(Reject(str(path), raw.row, e.field, e.reason, text, raw.line))
            continue
        seen.add(item["id"])
        result.items.append(item)
    if result.num_rows_read == 0:
        raise DataLoadError(no_rows_message(str(path), offset))
    return result


def expand_test_set_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; a folder stands for its test-set files (sorted by name)."""
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.name.lower().endswith(TEST_SET_SUFFIXES))
            if not found:
                raise DataLoadError(f"{p}: no .jsonl, .json or .parquet test-set files in this folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DataLoadError(f"{p}: no such file or folder")
    return files


def read_test_sets(paths: Sequence[str | Path], limit: int | None = None, offset: int = 0) -> list[TestSet]:
    """Read several test sets (files or folders of them), each from its row ``offset`` on; two files of the same
    name are an error."""
    sets = [read_test_set(f, limit=limit, offset=offset) for f in expand_test_set_paths(paths)]
    names = [s.name for s in sets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataLoadError(f"several test-set files are named {', '.join(duplicates)}; rename one of them")
    return sets
