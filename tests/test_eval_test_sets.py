"""The five test sets of the paper family and generic instruction files, read into one schema."""

from __future__ import annotations

import json

import pytest

from srt_trainer.data import DataLoadError
from srt_trainer.evaluation import test_sets as ts
from srt_trainer.io import read_rows

# the first 8 items of each of the five sets (tests/data/eval; the full sets hold 80, 180, 218, 252 and 300)
COUNTS = {"vicuna": 8, "koala": 8, "wizardlm": 8, "sinstruct": 8, "lima": 8}


@pytest.fixture(scope="module")
def real_sets(data_dir):
    return {s.name: s for s in ts.read_test_sets([data_dir / "eval"])}


def test_five_real_sets_are_read_whole(real_sets, data_dir):
    assert {name: len(s.items) for name, s in real_sets.items()} == COUNTS
    for name, s in real_sets.items():
        assert not s.rejects and s.num_rows_read == COUNTS[name]
        assert len({it["id"] for it in s.items}) == len(s.items)  # ids are unique keys for matching answers
        assert all(set(it) == set(ts.ITEM_COLUMNS) and it["test_set"] == name for it in s.items)
        assert all(isinstance(it["instruction"], str) and it["instruction"].strip() for it in s.items)
    raw = {n: read_rows(data_dir / "eval" / f"{n}_test_set.jsonl") for n in COUNTS}
    first = {n: s.items[0] for n, s in real_sets.items()}
    assert first["vicuna"]["instruction"] == raw["vicuna"][0]["text"]
    assert first["vicuna"]["id"] == str(raw["vicuna"][0]["question_id"])
    assert first["koala"]["instruction"] == raw["koala"][0]["prompt"] and first["koala"]["id"] == raw["koala"][0]["id"]
    assert first["wizardlm"]["instruction"] == raw["wizardlm"][0]["Instruction"]
    assert first["wizardlm"]["id"] == str(raw["wizardlm"][0]["idx"])
    assert first["sinstruct"]["instruction"] == raw["sinstruct"][0]["instruction"]
    assert first["sinstruct"]["input"] == raw["sinstruct"][0]["instances"][0]["input"]
    assert sum(1 for it in real_sets["sinstruct"].items if it["input"]) == sum(
        1 for r in raw["sinstruct"] if r["instances"][0]["input"]
    )
    assert first["lima"]["instruction"] == raw["lima"][0]["conversations"]  # a string in this release
    assert first["lima"]["id"] == "0"  # no id field: the row's position
    assert all(not it["input"] for n in ("vicuna", "koala", "wizardlm", "lima") for it in real_sets[n].items)


def test_limit_and_names(data_dir):
    s = ts.read_test_set(data_dir / "eval" / "koala_test_set.jsonl", limit=3)
    assert s.name == "koala" and len(s.items) == 3 and s.num_rows_read == 3
    assert ts.set_name_from_path("my_questions.jsonl") == "my_questions"
    assert ts.set_name_from_path("dir/mt_test.json") == "mt"


def test_generic_files_and_rejects(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [
        {"instruction": "Translate to French.", "input": "Good morning", "id": "a"},
        {"prompt": "Write a haiku about rain."},
        {"text": "What is 2 + 2?", "question_id": 7},
        {"conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello"}]},
        {"conversations": ["First user turn", "an answer"]},
        {"question": "no known field"},
        {"instruction": 42},
        {"instruction": "  "},
        {"instruction": "Duplicate id.", "id": "a"},
        {"instruction": "Bad instances.", "instances": ["x"]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    s = ts.read_test_set(path)
    assert s.name == "mine" and s.num_rows_read == 11
    assert [(it["id"], it["instruction"], it["input"]) for it in s.items] == [
        ("a", "Translate to French.", "Good morning"),
        ("1", "Write a haiku about rain.", ""),
        ("7", "What is 2 + 2?", ""),
        ("3", "Hi there", ""),
        ("4", "First user turn", ""),
    ]
    described = [r.describe() for r in s.rejects]
    assert [(r.row, r.field) for r in s.rejects] == [
        (5, "instruction"),
        (6, "instruction"),
        (7, "instruction"),
        (8, "id"),
        (9, "instances"),
        (10, None),
    ]
    assert all(d.startswith(f"{path}: row ") for d in described)
    assert "not a string (got int)" in described[1] and "duplicate id 'a'" in described[3]
    assert "invalid JSON" in described[5] and s.rejects[5].raw == "{broken"
    assert len(s.items) + len(s.rejects) == s.num_rows_read  # nothing lost


def test_json_list_and_folder_errors(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "One."}, {"instruction": "Two."}]))
    assert [it["instruction"] for it in ts.read_test_sets([tmp_path / "a.json"])[0].items] == ["One.", "Two."]
    with pytest.raises(DataLoadError, match="no such file"):
        ts.read_test_sets([tmp_path / "missing.jsonl"])
    (tmp_path / "sub").mkdir()
    with pytest.raises(DataLoadError, match=r"no \.jsonl, \.json or \.parquet"):
        ts.read_test_sets([tmp_path / "sub"])
    (tmp_path / "sub" / "a.jsonl").write_text('{"instruction": "x"}\n')
    with pytest.raises(DataLoadError, match="several test-set files are named a"):
        ts.read_test_sets([tmp_path / "a.json", tmp_path / "sub"])
