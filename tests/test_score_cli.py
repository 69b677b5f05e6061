"""`srt score` end to end, in this process (the console script is test_cli's): output contract, rejects, plots, and
resuming a run stopped between two shards. Scoring across two processes is the recipe test's real launch
(tests/test_recipe.py), checked there against one process."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

import pytest

from srt_trainer.cli import main
from srt_trainer.io import read_rows
from srt_trainer.scoring import STAT_COLUMNS
from tests.processes import interrupted_after_shards

STATS = (*STAT_COLUMNS, "score_error")


def _score_here(*args: str) -> str:
    """``srt score ARGS`` in this process; what it printed."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["score", *args]) == 0
    return stdout.getvalue()


@pytest.fixture(scope="module")
def data_file(alpaca_rows, tmp_path_factory) -> Path:
    """24 real rows plus the rows the contract must keep: bad JSON, an empty response, a row with only an input.

    The real rows are the slice's 24 shortest (8 with an input), in slice order: the contract is the same for any
    rows, and short ones keep this module's scoring runs to seconds."""
    path = tmp_path_factory.mktemp("data") / "rows.jsonl"
    size = lambda r: len(r["instruction"]) + len(r["input"]) + len(r["output"])  # noqa: E731
    rows = [alpaca_rows[i] for i in sorted(sorted(range(len(alpaca_rows)), key=lambda i: size(alpaca_rows[i]))[:24])]
    lines = [json.dumps(r) for r in rows[:20]]
    lines.insert(3, '{"instruction": "broken"')
    lines.insert(7, json.dumps({"instruction": "Name a color.", "input": "", "output": ""}))
    lines.insert(9, json.dumps({"instruction": "", "input": "Summarize: rain fell all day.", "output": "It rained."}))
    lines += [json.dumps(r) for r in rows[20:]]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def single_run(data_file, tmp_path_factory, embedded_dir) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("single") / "scores.jsonl"
    return out, _score_here("--data", str(data_file), "--output", str(out), "--shard_size", "4")


def test_output_contract(single_run, data_file):
    out, stdout = single_run
    rows = read_rows(out)
    assert len(rows) == 26  # 27 lines, 1 rejected for invalid JSON
    assert [r["row_index"] for r in rows] == [i for i in range(27) if i != 3]
    for r in rows:
        assert {"instruction", "input", "output", *STATS} <= set(r)
    empty = rows[6]
    assert empty["output"] == "" and empty["score_error"] == "empty response" and empty["ifd"] is None
    assert empty["ifd_error"] == empty["rifd_error"] == "empty response"  # the reason of each statistic too
    assert all(r["ifd_error"] is None and r["rifd_error"] is None for r in rows if r["output"])
    only_input = rows[8]
    assert only_input["instruction"] == "" and only_input["ifd"] is not None
    assert sum(r["ifd"] is not None for r in rows) == 25
    rejects = read_rows(out.parent / "scores.rejects.jsonl")
    assert [(r["row"], r["reason"][:12]) for r in rejects] == [(3, "invalid JSON")]
    assert (out.parent / "scores.hist.png").stat().st_size > 10_000
    summary = json.loads((out.parent / "scores.summary.json").read_text())
    assert summary["scored"] == 25 and summary["errors"] == {"empty response": 1} and summary["only_input"] == 1
    assert "share_ifd_above_1" in summary and "q0.5" in stdout and "IFD > 1" in stdout


def test_parquet_output_and_limit(data_file, tmp_path, embedded_dir):
    out = tmp_path / "scores.parquet"
    _score_here("--data", str(data_file), "--output", str(out), "--limit", "5", "--no_plot")
    rows = read_rows(out)
    assert [r["row_index"] for r in rows] == [0, 1, 2, 4] and all(r["ifd"] > 0 for r in rows)
    assert not (tmp_path / "scores.hist.png").exists()


def test_stopped_run_resumes_to_identical_output(single_run, data_file, tmp_path, caplog):
    """Stopped dead after its second shard (as a kill between two shards would leave it), the same command resumes:
    the finished shards are read back, not scored again, and the output is byte for byte the uninterrupted one."""
    out = tmp_path / "scores.jsonl"
    shards = tmp_path / "scores.score-shards"
    args = ["--data", str(data_file), "--output", str(out), "--shard_size", "4"]
    with interrupted_after_shards(2):
        _score_here(*args)
    finished = {p.name: p.stat().st_mtime_ns for p in shards.glob("shard-*.jsonl")}
    assert len(finished) == 2 and not out.exists()
    with caplog.at_level(logging.INFO, logger="srt_trainer"):
        _score_here(*args)
    assert f"resuming: {len(finished)} of 7 shards already scored" in caplog.text
    assert all(shards.joinpath(n).stat().st_mtime_ns == t for n, t in finished.items())  # not redone
    assert out.read_bytes() == single_run[0].read_bytes()


def test_resume_refuses_other_settings(single_run, data_file, capsys):
    out, _ = single_run
    args = ["--data", str(data_file), "--output", str(out), "--shard_size", "4", "--template", "alpaca"]
    assert main(["score", *args]) == 2
    assert "holds shards of a run with different settings" in capsys.readouterr().err
