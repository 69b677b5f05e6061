"""Property tests: random rows with random Unicode (lone surrogate escapes, bytes that are not UTF-8, line and
paragraph separators, a byte order mark, NUL), random extra and missing fields and wrong types, through every
loader and the stage entry points. Whatever comes in, output rows + rejected rows = input rows, nothing valid is
altered, and the exit status says whether anything was usable."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from srt_trainer.cli import main as srt_main
from srt_trainer.io import iter_raw_rows, read_rows, write_rows

FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# stages that run the embedded model: a handful of examples, tiny rows
MODEL = settings(
    max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)

# text with what real files hold: separators, NUL, BOM characters, right-to-left marks, emoji
TRICKY = "\u2028\u2029\x85\x00\r\t\ufeff\u200f\x1c\x0b"
text = st.text(
    alphabet=st.one_of(st.characters(exclude_categories=("Cs",)), st.sampled_from(TRICKY)), min_size=0, max_size=12
)
nonblank = text.filter(lambda t: t.strip() != "")
scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), text)
value = st.recursive(
    scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3), max_leaves=6
)
extras = st.dictionaries(st.sampled_from(["id", "source", "category", "meta", "tags"]), value, max_size=3)

# how a row can be broken; "ok" rows must come through unchanged
KINDS = ["ok", "ok", "ok", "missing_output", "wrong_type", "surrogate", "bad_byte", "not_object", "not_json"]


@st.composite
def row_specs(draw: Any, kinds: list[str] = KINDS) -> tuple[str, dict[str, Any]]:
    kind = draw(st.sampled_from(kinds))
    row = {"instruction": draw(nonblank), "output": draw(text)}
    if draw(st.booleans()):
        row["input"] = draw(text)
    row.update(draw(extras))
    if kind == "missing_output":
        del row["output"]
    elif kind == "wrong_type":
        row[draw(st.sampled_from(["instruction", "output"]))] = draw(st.integers() | st.lists(st.integers()))
    return kind, row


def encode_row(kind: str, row: Any, ascii_only: bool) -> bytes:
    """One row as JSON bytes, broken as its kind says."""
    if kind == "not_object":
        return json.dumps([row["instruction"]], ensure_ascii=ascii_only).encode()
    if kind == "not_json":
        return b'{"instruction": "unterminated'
    data = json.dumps(row, ensure_ascii=ascii_only).encode()
    if kind == "surrogate":
        return data.replace(b'"instruction": "', b'"instruction": "\\udbff', 1)
    if kind == "bad_byte":
        return data.replace(b'"instruction": "', b'"instruction": "\xc3\x28', 1)
    return data


def usable(kind: str) -> bool:
    return kind == "ok"


def check_loaded(specs: list[tuple[str, dict]], loaded: Any) -> None:
    """Rows + rejects = input rows; valid rows in order, their fields and extra columns exactly as written."""
    assert len(loaded.rows) + len(loaded.rejects) == len(specs) == loaded.num_rows_read
    valid = [(i, row) for i, (kind, row) in enumerate(specs) if usable(kind)]
    assert [r["row_index"] for r in loaded.rows] == [i for i, _ in valid]
    for (_, src), got in zip(valid, loaded.rows, strict=True):
        assert got["instruction"] == src["instruction"] and got["output"] == src["output"]
        assert got["input"] == (src.get("input") or "")
        assert {k: got[k] for k in src if k not in ("instruction", "input", "output")} == {
            k: v for k, v in src.items() if k not in ("instruction", "input", "output")
        }
    bad = [i for i, (kind, _) in enumerate(specs) if not usable(kind)]
    assert sorted(r.row for r in loaded.rejects) == bad and all(r.reason for r in loaded.rejects)


def write_jsonl(path: Path, specs: list[tuple[str, dict]], ascii_only: bool, bom: bool, crlf: bool) -> Path:
    end = b"\r\n" if crlf else b"\n"
    body = end.join(encode_row(kind, row, ascii_only) for kind, row in specs) + end
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + body)
    return path


# -- loaders ---------------------------------------------------------------------------------------------------


@FEW
@given(st.lists(row_specs(), min_size=1, max_size=8), st.booleans(), st.booleans(), st.booleans())
def test_jsonl_loader(specs, ascii_only, bom, crlf):
    from srt_trainer.data import load_instruction_data

    with tempfile.TemporaryDirectory() as d:
        path = write_jsonl(Path(d) / "rows.jsonl", specs, ascii_only, bom, crlf)
        loaded = load_instruction_data(path, format="alpaca")
        check_loaded(specs, loaded)
        lines = [r.line for r in loaded.rejects]
        assert lines == [r.row + 1 for r in loaded.rejects]  # the line each bad row is on


@FEW
@given(st.lists(row_specs([k for k in KINDS if k != "not_json"]), min_size=1, max_size=8), st.booleans(), st.booleans())
def test_json_list_loader(specs, ascii_only, bom):
    from srt_trainer.data import load_instruction_data

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "rows.json"
        body = b"[\n" + b",\n".join(encode_row(k, r, ascii_only) for k, r in specs) + b"\n]\n"
        path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + body)
        loaded = load_instruction_data(path, format="alpaca")
        check_loaded(specs, loaded)
        assert [r.line for r in loaded.rejects] == [r.row + 2 for r in loaded.rejects]


@FEW
@given(st.lists(st.dictionaries(text, value, max_size=4), max_size=6), st.sampled_from([".jsonl", ".json"]))
def test_written_rows_read_back_unchanged(rows, suffix):
    """``write_rows`` and the reader agree on any text: separators inside a row never split it."""
    with tempfile.TemporaryDirectory() as d:
        path = write_rows(rows, Path(d) / f"rows{suffix}")
        got = list(iter_raw_rows(path))
        assert [r.error for r in got] == [None] * len(rows)
        assert [r.value for r in got] == rows


@FEW
@given(
    st.lists(
        st.fixed_dictionaries(
            {"id": st.integers(0, 5) | text, "instruction": value, "output": value}, optional={"input": value}
        ),
        min_size=1,
        max_size=6,
    )
)
def test_answers_and_test_set_loaders(rows):
    from srt_trainer.evaluation.judge import read_answers
    from srt_trainer.evaluation.test_sets import read_test_set

    with tempfile.TemporaryDirectory() as d:
        path = write_rows(rows, Path(d) / "answers.jsonl")
        answers = read_answers(path)
        assert len(answers.answers) + len(answers.rejects) == len(rows)
        for kept in answers.answers.values():
            assert kept in rows  # as written
        items = read_test_set(path)
        assert len(items.items) + len(items.rejects) == items.num_rows_read == len(rows)


# -- stage entry points ----------------------------------------------------------------------------------------


reviews = st.fixed_dictionaries(
    {
        "review": st.one_of(text, st.just("8 6\u2028ok"), st.just("3 9")),
        "review_reverse": st.one_of(text, st.just("6 8")),
    },
    optional={"test_set": st.sampled_from(["vicuna", "lima"]), "id": scalar},
)


@FEW
@given(st.lists(st.one_of(reviews, st.just("BAD-LINE")), min_size=0, max_size=8))
def test_eval_aggregate_entry_point(records):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "reviews.jsonl"
        path.write_bytes(
            b"".join(b"\xff not json\n" if r == "BAD-LINE" else json.dumps(r).encode() + b"\n" for r in records)
        )
        code = srt_main(["eval", "aggregate", "--reviews", str(path), "--json", "--plot", "false"])
        if "BAD-LINE" in records or not records:
            assert code == 2
            return
        report = json.loads((Path(d) / "reviews.aggregate.json").read_text())
        assert report["win"] + report["tie"] + report["lose"] + report["failed"] == len(records)
        assert code == (0 if report["n"] else 2)


def _short(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A row with short texts (a few tokens for the model), its wrong types left as they are."""
    row = dict(row)
    for key in ("instruction", "output"):
        if isinstance(row.get(key), str):
            row[key] = (prefix if key == "instruction" else "") + row[key][:6]
    return row


@pytest.fixture(scope="module")
def scorer_parts(embedded_model, embedded_tokenizer):
    return embedded_model, embedded_tokenizer


# a sure case beside the random ones: two usable rows with responses around a row that is not UTF-8
SURE = [
    ("ok", {"instruction": "Name a fruit\u2028please", "output": "An apple.", "id": 3}),
    ("bad_byte", {"instruction": "x", "output": "y"}),
    ("ok", {"instruction": "Say hi", "input": "\x00", "output": "Hi\ufeff!", "id": "a", "meta": {"k": [1]}}),
]
# found by a random run: a rejects file's raw text keeps U+0085, which str.splitlines() takes for a line end
NEL = [("ok", {"instruction": "0", "output": ""}), ("missing_output", {"instruction": "0\x85"})]


@MODEL
@given(st.lists(row_specs(), min_size=1, max_size=3))
@example(SURE)
@example(NEL)
def test_score_entry_point(scorer_parts, specs):
    from srt_trainer.errors import run_cli
    from srt_trainer.models.config import SRTModelConfig
    from srt_trainer.scoring import ScoreArguments, ScoringArguments, run_score

    model, tokenizer = scorer_parts
    specs = [(k, _short(r, "Say ")) for k, r in specs]
    with tempfile.TemporaryDirectory() as d:
        data = write_jsonl(Path(d) / "rows.jsonl", specs, ascii_only=False, bom=True, crlf=False)
        out = Path(d) / "scores.jsonl"
        args = ScoreArguments(data=str(data), output=str(out), plot=False, data_format="alpaca")
        code = run_cli(
            "srt score",
            lambda: run_score(args, ScoringArguments(), SRTModelConfig(), model=model, tokenizer=tokenizer),
        )
        rejects = read_rows(Path(d) / "scores.rejects.jsonl")
        valid = [r for k, r in specs if usable(k)]
        assert len(rejects) == len(specs) - len(valid)
        if not valid:
            assert code == 2 and not out.exists()
            return
        rows = [raw.value for raw in iter_raw_rows(out)]
        assert len(rows) == len(valid)
        for src, got in zip(valid, rows, strict=True):
            assert {k: got[k] for k in src if k != "input"} == {k: v for k, v in src.items() if k != "input"}
        # each statistic stands alone (a one-token response keeps its r-IFD): a row is scored with either
        scored = sum(r["ifd"] is not None or r["rifd"] is not None for r in rows)
        assert code == (0 if scored else 2)
        if specs == SURE:
            assert scored == 2 and [r["id"] for r in rows] == [3, "a"] and rows[1]["meta"] == {"k": [1]}
        for r in rows:  # a missing statistic always says why; a row without both says it in score_error
            assert (r["ifd"] is None) == bool(r["ifd_error"]) and (r["rifd"] is None) == bool(r["rifd_error"])
            assert (r["ifd"] is None and r["rifd"] is None) == bool(r["score_error"])


@MODEL
@given(st.lists(row_specs(), min_size=1, max_size=3))
@example(SURE)
@example(NEL)
def test_reflect_entry_point(scorer_parts, specs):
    from srt_trainer.errors import run_cli
    from srt_trainer.reflection import ReflectArguments, run_reflect
    from srt_trainer.teachers import TeacherArguments
    from srt_trainer.teachers.local import TransformersTeacher

    model, tokenizer = scorer_parts
    teacher = TransformersTeacher("embedded", model_obj=model, tokenizer=tokenizer, batch_size=4)
    specs = [(k, _short(r)) for k, r in specs]
    with tempfile.TemporaryDirectory() as d:
        data = write_jsonl(Path(d) / "rows.jsonl", specs, ascii_only=True, bom=False, crlf=True)
        out = Path(d) / "a.jsonl"
        args = ReflectArguments(mode="response", data=str(data), output=str(out), progress=False)
        teacher_args = TeacherArguments(teacher_max_tokens=1, max_reasks=0)
        code = run_cli("srt reflect", lambda: run_reflect(args, teacher_args, teacher=teacher))
        valid = [r for k, r in specs if usable(k)]
        rejects = read_rows(Path(d) / "a.rejects.jsonl")
        assert len(rejects) == len(specs) - len(valid)
        assert code == (0 if valid else 2)
        if valid:
            rows = [raw.value for raw in iter_raw_rows(out)]
            assert len(rows) == len(valid) and {r["reflection_status"] for r in rows} <= {"ok", "fallback"}
            for src, got in zip(valid, rows, strict=True):
                assert got["instruction"] == src["instruction"]  # response mode never rewrites the instruction
                assert {k: got[k] for k in src if k not in ("instruction", "input", "output")} == {
                    k: v for k, v in src.items() if k not in ("instruction", "input", "output")
                }
