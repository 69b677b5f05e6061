"""`srt eval alpacaeval`: AlpacaEval's own package (alpaca-eval 0.6.6) on two answer files of `srt eval generate`,
judged by a real OpenAI-compatible server (`transformers serve`, embedded model) through the shipped annotator.

Whatever the 135M judge prefers, what must hold: the package judged every matched item (or the item is listed as
a failure), the win rate it computed is the share of its own preferences, unusable rows are rejected with a reason,
a rerun asks the judge nothing (finished chunks are kept), and the API key is in no file written.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import pytest
import yaml

from srt_trainer.cli import main as srt_main
from srt_trainer.evaluation.alpaca import shipped_annotator
from srt_trainer.io import read_rows

ITEMS = 3
KEY = "sk-test-never-written-0123456789"


@pytest.fixture(scope="module")
def output_files(data_dir, embedded_model, embedded_tokenizer, tmp_path_factory) -> tuple[Path, Path]:
    """The AlpacaEval files of two real answer runs on the first vicuna items (two prompt formats); the model's file
    has an item the reference lacks and a row without an output."""
    from srt_trainer.evaluation.generate import GenerateArguments, run_generate
    from srt_trainer.models.config import SRTModelConfig

    root = tmp_path_factory.mktemp("alpaca_answers")
    files = []
    for name, template, limit in (("model", "vicuna", ITEMS + 1), ("reference", "alpaca", ITEMS)):
        config = GenerateArguments(
            test_sets=[str(data_dir / "eval" / "vicuna_test_set.jsonl")],
            limit=limit,
            output=str(root / f"{name}.jsonl"),
            max_new_tokens=12,
            generator=f"smollm2-{template}",
        )
        with contextlib.redirect_stdout(io.StringIO()):
            run_generate(config, SRTModelConfig(template=template), model=embedded_model, tokenizer=embedded_tokenizer)
        files.append(root / f"{name}.alpaca_eval.json")
    rows = json.loads(files[0].read_text())
    files[0].write_text(json.dumps([*rows, {"instruction": "A row without an output", "output": None}]))
    return files[0], files[1]


def _run(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = srt_main(["eval", "alpacaeval", *args])
    return rc, out.getvalue(), err.getvalue()


def test_alpaca_eval_package_on_our_outputs(output_files, teacher_server, embedded_dir, tmp_path, monkeypatch):
    model, reference = output_files
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.chdir(tmp_path)  # a relative --output, as a user gives it (and so the annotator's folder)
    out = tmp_path / "ae.jsonl"
    args = [
        "--model_outputs",
        str(model),
        "--reference_outputs",
        str(reference),
        "--output",
        "ae.jsonl",
        "--base_url",
        teacher_server,
        "--judge_model",
        str(embedded_dir),
        "--chunk_size",
        "2",
        "--judge_concurrency",
        "2",
    ]
    rc, stdout, stderr = _run(args)
    assert rc == 0, stderr
    summary = json.loads(out.with_name("ae.summary.json").read_text())
    annotations = read_rows(out)
    failures = read_rows(out.with_name("ae.failures.jsonl"))
    # every matched item judged by the package or listed as a failure; the package's records, in item order
    assert summary["items"] == ITEMS and summary["judged"] + summary["failed"] == ITEMS
    assert len(annotations) == summary["judged"] > 0 and len(failures) == summary["failed"]
    instructions = [r["instruction"] for r in json.loads(model.read_text())[:ITEMS]]
    judged = {a["instruction"] for a in annotations}
    assert [a["instruction"] for a in annotations] == [i for i in instructions if i in judged]
    assert {a["generator_2"] for a in annotations} == {"smollm2-vicuna"}
    assert {a["generator_1"] for a in annotations} == {"smollm2-alpaca"}
    assert {a["annotator"] for a in annotations} == {"srt_pairwise"}
    assert all(a["preference"] in (1.0, 1.5, 2.0) for a in annotations)
    # the win rate is the package's: the share of items where the model (output_2) is preferred, draws half
    expected = 100 * sum(a["preference"] - 1 for a in annotations) / len(annotations)
    assert summary["win_rate"] == pytest.approx(expected)
    assert summary["n_total"] == len(annotations) and summary["alpaca_eval_version"] == "0.6.6"
    with out.with_name("ae.leaderboard.csv").open() as f:
        board = list(csv.DictReader(f))
    assert board[0][""] == "smollm2-vicuna" and float(board[0]["win_rate"]) == pytest.approx(expected)
    assert "win rate" in stdout and f"{expected:.2f}%" in stdout
    # the unmatched item and the row without an output are rejected with their reasons
    rejects = read_rows(out.with_name("ae.rejects.jsonl"))
    assert sorted(r["field"] for r in rejects) == ["id", "output"]
    # the judge got the annotator we ship, set up for this judge; the manifest names its host, never the key
    config = yaml.safe_load(next(out.parent.rglob("srt_pairwise/configs.yaml")).read_text())["srt_pairwise"]
    assert config["completions_kwargs"]["model_name"] == str(embedded_dir)
    manifest = json.loads(out.with_name("ae.manifest.json").read_text())
    assert manifest["judge"]["host"] == teacher_server.split("/")[2]
    assert manifest["files"]["annotator_prompt"]["sha256"]
    # srt eval report reads the win rate with that manifest
    report = tmp_path / "report.md"
    with contextlib.redirect_stdout(io.StringIO()):
        assert srt_main(["eval", "report", "--alpacaeval", str(out), "--output", str(report)]) == 0
    data = json.loads(report.with_suffix(".json").read_text())
    assert data["models"]["smollm2-vicuna"]["AlpacaEval win rate vs smollm2-alpaca (%)"] == summary["win_rate"]
    assert data["sources"][0]["manifest"] == manifest
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not [p for p in written if KEY in p.read_text(errors="replace")]

    # a rerun asks the judge nothing and reads back the same numbers
    rc, stdout, stderr = _run(args)
    assert rc == 0, stderr
    again = json.loads(out.with_name("ae.summary.json").read_text())
    assert again["chunks_judged_now"] == 0 and summary["chunks_judged_now"] == 2
    assert again["win_rate"] == summary["win_rate"] and read_rows(out) == annotations


def test_anchored_patterns_take_the_first_label_only():
    """A small judge often names both outputs; only a label at the start of its reply counts (the package's own
    parser with our patterns)."""
    from alpaca_eval.completion_parsers import regex_parser

    config = yaml.safe_load((shipped_annotator() / "configs.yaml").read_text())["srt_pairwise"]
    patterns = config["completion_parser_kwargs"]["outputs_to_match"]
    cases = {
        "Output (a) is better than Output (b).": [1],
        "**Output (b)**": [2],
        "output b": [2],
        "I prefer Output (a)": [],
        "A clear answer": [],
    }
    for reply, expected in cases.items():
        assert regex_parser(reply, dict(patterns)) == expected, reply


def test_no_item_to_judge_is_one_line(output_files, tmp_path):
    model, _ = output_files
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"instruction": "Something else", "output": "x", "generator": "r"}]))
    files = ["--model_outputs", str(model), "--reference_outputs", str(other), "--output", str(tmp_path / "o.jsonl")]
    rc, _, stderr = _run([*files, "--base_url", "http://127.0.0.1:9/v1", "--judge_model", "m"])
    assert rc == 2 and "no item with a reference output to judge" in stderr and str(model) in stderr
    assert len(stderr.strip().splitlines()) == 1
