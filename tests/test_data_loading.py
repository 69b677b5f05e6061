"""The data layer on the real Alpaca data and on files the tests write in the other formats and containers."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from srt_trainer.data import DataLoadError, load_instruction_data, rejects_path_for
from srt_trainer.io import read_rows


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _read_rejects(path: Path) -> list[dict]:
    return read_rows(path)


def test_real_alpaca_json(data_dir, tmp_path):
    loaded = load_instruction_data(data_dir / "alpaca_slice.json", rejects_path=tmp_path / "r.jsonl")
    ds = loaded.dataset
    assert loaded.format == "alpaca"
    assert len(ds) == loaded.num_rows_read == 247  # the slice in tests/data
    assert loaded.rejects == [] and (tmp_path / "r.jsonl").read_text() == ""
    assert ds["row_index"] == list(range(247))
    assert sum(1 for x in ds["input"] if x) == 55
    raw = json.loads((data_dir / "alpaca_slice.json").read_text())
    for i in (0, 123, 246):
        row = ds[i]
        assert (row["instruction"], row["input"], row["output"]) == (
            raw[i]["instruction"],
            raw[i]["input"],
            raw[i]["output"],
        )
        assert row["num_turns"] == 1 and row["messages"][1] == {"role": "assistant", "content": raw[i]["output"]}


def test_real_compressed_alpaca_has_no_input(data_dir):
    ds = load_instruction_data(data_dir / "alpaca_slice_compressed.json").dataset
    assert len(ds) == 247 and set(ds["input"]) == {""}


def test_containers_agree(alpaca_rows, tmp_path):
    rows = alpaca_rows[:200]
    jsonl = _write_jsonl(tmp_path / "d.jsonl", rows)
    parquet = tmp_path / "d.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(folder))
    cols = ["row_index", "instruction", "input", "output", "messages"]
    ref = load_instruction_data(jsonl).dataset.select_columns(cols).to_list()
    assert len(ref) == 200
    for src in (parquet, folder):
        assert load_instruction_data(src).dataset.select_columns(cols).to_list() == ref


def _two_turns(a: dict, b: dict) -> list[tuple[str, str]]:
    return [
        ("user", a["instruction"]),
        ("assistant", a["output"]),
        ("user", b["instruction"]),
        ("assistant", b["output"]),
    ]


def test_sharegpt_and_messages_keep_turns(alpaca_rows, tmp_path):
    pairs = [(alpaca_rows[i], alpaca_rows[i + 1]) for i in range(0, 40, 2)]
    sharegpt = [
        {
            "id": f"c{i}",
            "conversations": [
                {"from": {"user": "human", "assistant": "gpt"}[r], "value": t} for r, t in _two_turns(a, b)
            ],
        }
        for i, (a, b) in enumerate(pairs)
    ]
    sharegpt[0]["conversations"].insert(0, {"from": "system", "value": "Be helpful."})
    messages = [{"messages": [{"role": r, "content": t} for r, t in _two_turns(a, b)]} for a, b in pairs]
    for name, rows, fmt in (("s.json", sharegpt, "sharegpt"), ("m.jsonl", messages, "messages")):
        path = tmp_path / name
        if name.endswith(".json"):
            path.write_text(json.dumps(rows))
        else:
            _write_jsonl(path, rows)
        loaded = load_instruction_data(path)
        assert loaded.format == fmt and loaded.rejects == []
        ds = loaded.dataset
        assert len(ds) == 20 and set(ds["num_turns"]) == {2}
        a, b = pairs[3]
        assert [m["content"] for m in ds[3]["messages"]] == [t for _, t in _two_turns(a, b)]
        assert (ds[3]["instruction"], ds[3]["output"]) == (a["instruction"], a["output"])
    ds = load_instruction_data(tmp_path / "s.json").dataset
    assert ds[0]["system"] == "Be helpful." and ds[0]["messages"][0]["role"] == "user"
    assert ds["id"][:2] == ["c0", "c1"]  # the source's other columns ride along


def test_malformed_rows_end_in_rejects_with_reasons(alpaca_rows, tmp_path):
    good = alpaca_rows[:5]
    lines = [
        good[0],
        "{not json",
        {"instruction": "Name a color.", "input": ""},
        {"instruction": 42, "input": "", "output": "Blue"},
        {"instruction": "   ", "input": "", "output": "Blue"},
        good[1],
        ["a", "list"],
        {"instruction": "Name a color.", "input": 3, "output": "Blue"},
        good[2],
    ]
    path = _write_jsonl(tmp_path / "bad.jsonl", lines)
    out = tmp_path / "scores.jsonl"
    loaded = load_instruction_data(path, rejects_path=rejects_path_for(out))
    assert loaded.dataset["row_index"] == [0, 5, 8]
    assert loaded.dataset["output"] == [g["output"] for g in good[:3]]
    rejects = _read_rejects(tmp_path / "scores.rejects.jsonl")
    got = [(r["row"], r["line"], r["field"], r["reason"]) for r in rejects]
    assert got == [
        (1, 2, None, "invalid JSON: Expecting property name enclosed in double quotes (column 2)"),
        (2, 3, "output", "missing field"),
        (3, 4, "instruction", "not a string (got int)"),
        (4, 5, "instruction", "empty instruction"),
        (6, 7, None, "row is not a JSON object (got list)"),
        (7, 8, "input", "not a string (got int)"),
    ]
    assert all(r["file"] == str(path) for r in rejects)
    assert rejects[0]["raw"] == "{not json"
    assert json.loads(rejects[1]["raw"]) == lines[2]  # nothing is lost
    assert len(loaded.dataset) + len(rejects) == len(lines)


@pytest.mark.parametrize("fmt", ["sharegpt", "messages"])
def test_malformed_conversations(fmt, tmp_path):
    key, role, content = ("conversations", "from", "value") if fmt == "sharegpt" else ("messages", "role", "content")
    user, bot = ("human", "gpt") if fmt == "sharegpt" else ("user", "assistant")

    def conv(*turns):
        return {key: [{role: r, content: c} for r, c in turns]}

    rows = [
        conv((user, "Hi"), (bot, "Hello")),
        conv((user, "Hi"), ("narrator", "Hello")),
        conv((user, ""), (bot, "Hello")),
        conv((user, "Hi"), (user, "Again"), (bot, "Hello")),
        conv((user, "Hi")),
        conv((user, "Hi"), (bot, "Hello"), (user, "More?")),
        {key: [{role: user, content: 5}, {role: bot, content: "x"}]},
        {key: "not a list"},
        conv((user, "Q2"), (bot, "A2"), (user, "Q3"), (bot, "A3")),
    ]
    path = _write_jsonl(tmp_path / f"{fmt}.jsonl", rows)
    loaded = load_instruction_data(path, rejects_path=tmp_path / "rej.jsonl")
    assert loaded.dataset["row_index"] == [0, 8] and loaded.dataset["num_turns"] == [1, 2]
    got = [(r["row"], r["field"], r["reason"]) for r in _read_rejects(tmp_path / "rej.jsonl")]
    assert got == [
        (1, f"{key}[1].{role}", "unknown role 'narrator'"),
        (2, f"{key}[0].{content}", "empty instruction"),
        (3, f"{key}[1].{role}", "expected a assistant turn, got user (turns must alternate)"),
        (4, key, "no assistant turn"),
        (5, key, "conversation ends with a user turn that has no response"),
        (6, f"{key}[0].{content}", "not a string (got int)"),
        (7, key, "not a list of turns (got str)"),
    ]


def test_prompt_only_rows_when_output_not_required(tmp_path):
    path = _write_jsonl(
        tmp_path / "q.jsonl", [{"instruction": "Q1"}, {"messages": [{"role": "user", "content": "Q2"}]}]
    )
    loaded = load_instruction_data(path, format="alpaca", require_output=False)
    assert loaded.dataset["instruction"] == ["Q1"] and loaded.dataset["output"] == [""]
    assert [(r.row, r.field) for r in loaded.rejects] == [(1, "instruction")]
    ds = load_instruction_data(
        _write_jsonl(tmp_path / "m.jsonl", [{"messages": [{"role": "user", "content": "Q2"}]}]), require_output=False
    ).dataset
    assert ds["instruction"] == ["Q2"] and ds["output"] == [""]


def test_format_override(alpaca_rows, tmp_path):
    path = _write_jsonl(tmp_path / "a.jsonl", alpaca_rows[:3])
    loaded = load_instruction_data(path, format="sharegpt")
    assert len(loaded.dataset) == 0
    assert [(r.row, r.field, r.reason) for r in loaded.rejects] == [
        (i, "conversations", "missing field") for i in range(3)
    ]
    with pytest.raises(ValueError, match="unknown data format"):
        load_instruction_data(path, format="csv")


def test_unreadable_sources_fail_with_one_clear_message(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('[{"instruction": "a", ')
    with pytest.raises(DataLoadError, match=r"broken\.json: not valid JSON \(line 1"):
        load_instruction_data(broken)
    obj = tmp_path / "obj.json"
    obj.write_text('{"rows": 3}')
    with pytest.raises(DataLoadError, match=r"obj\.json: expected a JSON list"):
        load_instruction_data(obj)
    bad_parquet = tmp_path / "bad.parquet"
    bad_parquet.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataLoadError, match=r"bad\.parquet: not a readable Parquet file"):
        load_instruction_data(bad_parquet)
    with pytest.raises(DataLoadError, match=r"missing\.jsonl: no such file"):
        load_instruction_data(tmp_path / "missing.jsonl")
    csv = tmp_path / "d.csv"
    csv.write_text("a,b\n")
    with pytest.raises(DataLoadError, match=r"d\.csv: unknown file type"):
        load_instruction_data(csv)
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b'{"instruction": "a", "output": "b"}\n\xff\xfe\xfa\n')
    loaded = load_instruction_data(binary)  # one bad line costs that row only (tests/test_bad_input.py)
    assert len(loaded.rows) == 1 and loaded.rejects[0].describe().endswith(
        "row 1 (line 2): not UTF-8 text: byte 0xff (column 1)"
    )
    unknown = _write_jsonl(tmp_path / "u.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(
        DataLoadError, match=r"u\.jsonl: cannot tell the data format from row 0 \(keys: question, answer\)"
    ):
        load_instruction_data(unknown)
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataLoadError, match="contains no rows"):
        load_instruction_data(empty)
    not_saved = tmp_path / "plain_folder"
    not_saved.mkdir()
    with pytest.raises(DataLoadError, match="not a dataset saved with save_to_disk"):
        load_instruction_data(not_saved)


def test_hub_id_without_a_hub_fails_clearly():
    with pytest.raises(
        DataLoadError, match=r"no-such-org/no-such-data: not a file or folder here, and the dataset hub"
    ):
        load_instruction_data("no-such-org/no-such-data")


def test_extra_columns_of_mixed_type_survive(tmp_path):
    rows = [
        {"instruction": "a", "output": "b", "id": 1, "meta": {"k": 1}},
        {"instruction": "c", "output": "d", "id": "two", "meta": None},
    ]
    ds = load_instruction_data(_write_jsonl(tmp_path / "x.jsonl", rows)).dataset
    assert ds["id"] == ["1", '"two"'] and ds["meta"] == ['{"k": 1}', None]


def test_limit_reads_only_the_first_rows(data_dir):
    loaded = load_instruction_data(data_dir / "alpaca_slice.json", limit=10)
    assert len(loaded.dataset) == loaded.num_rows_read == 10
