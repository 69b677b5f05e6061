"""`srt score` end to end: output contract, rejects, plots, a real two-process launch, and kill-and-resume."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from srt_trainer.io import read_rows
from srt_trainer.scoring import STAT_COLUMNS
from tests.processes import kill_when

BIN = Path(sys.executable).parent
STATS = (*STAT_COLUMNS, "score_error")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _score(*args: str, launcher: list[str] | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = [*(launcher or [str(BIN / "srt")]), "score", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res


@pytest.fixture(scope="module")
def data_file(alpaca_rows, tmp_path_factory) -> Path:
    """24 real rows plus the rows the contract must keep: bad JSON, an empty response, a row with only an input."""
    path = tmp_path_factory.mktemp("data") / "rows.jsonl"
    lines = [json.dumps(r) for r in alpaca_rows[200:220]]
    lines.insert(3, '{"instruction": "broken"')
    lines.insert(7, json.dumps({"instruction": "Name a color.", "input": "", "output": ""}))
    lines.insert(9, json.dumps({"instruction": "", "input": "Summarize: rain fell all day.", "output": "It rained."}))
    lines += [json.dumps(r) for r in alpaca_rows[220:224]]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def single_run(data_file, tmp_path_factory, embedded_dir) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("single") / "scores.jsonl"
    res = _score("--data", str(data_file), "--output", str(out), "--shard_size", "4")
    return out, res


def test_output_contract(single_run, data_file):
    out, res = single_run
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
    rejects = [json.loads(x) for x in (out.parent / "scores.rejects.jsonl").read_text().splitlines()]
    assert [(r["row"], r["reason"][:12]) for r in rejects] == [(3, "invalid JSON")]
    assert (out.parent / "scores.hist.png").stat().st_size > 10_000
    summary = json.loads((out.parent / "scores.summary.json").read_text())
    assert summary["scored"] == 25 and summary["errors"] == {"empty response": 1} and summary["only_input"] == 1
    assert "share_ifd_above_1" in summary and "q0.5" in res.stdout and "IFD > 1" in res.stdout


def test_parquet_output_and_limit(data_file, tmp_path, embedded_dir):
    out = tmp_path / "scores.parquet"
    _score("--data", str(data_file), "--output", str(out), "--limit", "5", "--no_plot")
    rows = read_rows(out)
    assert [r["row_index"] for r in rows] == [0, 1, 2, 4] and all(r["ifd"] > 0 for r in rows)
    assert not (tmp_path / "scores.hist.png").exists()


def test_two_process_launch_matches_single_process(single_run, data_file, tmp_path):
    out = tmp_path / "scores.jsonl"
    # on a machine without CUDA, --multi_gpu starts two CPU processes (gloo); accelerate's --cpu starts only one
    launcher = [
        str(BIN / "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "srt_trainer.cli",
    ]
    res = _score("--data", str(data_file), "--output", str(out), "--shard_size", "4", "--no_plot", launcher=launcher)
    shares = [int(re.search(rf"rank {r} of 2: (\d+) shards", res.stderr).group(1)) for r in (0, 1)]
    assert sum(shares) == 7 and min(shares) >= 3  # both ranks worked, split by tokens
    multi, single = read_rows(out), read_rows(single_run[0])
    assert [r["row_index"] for r in multi] == [r["row_index"] for r in single]  # no duplicate, none missing
    for m, s in zip(multi, single, strict=True):
        assert m["score_error"] == s["score_error"]
        for c in STAT_COLUMNS:
            assert (m[c] is None and s[c] is None) or m[c] == pytest.approx(s[c], rel=1e-5)


def test_killed_run_resumes_to_identical_output(single_run, data_file, tmp_path):
    out = tmp_path / "scores.jsonl"
    shards = tmp_path / "scores.score-shards"
    cmd = [str(BIN / "srt"), "score", "--data", str(data_file), "--output", str(out), "--shard_size", "4"]
    kill_when(cmd, lambda: len(list(shards.glob("shard-*.jsonl"))) >= 2, timeout=600, poll=0.2)
    finished = {p.name: p.stat().st_mtime_ns for p in shards.glob("shard-*.jsonl")}
    assert 2 <= len(finished) < 7 and not out.exists()
    res = _score(*cmd[2:])
    assert f"resuming: {len(finished)} of 7 shards already scored" in res.stderr
    assert all(shards.joinpath(n).stat().st_mtime_ns == t for n, t in finished.items())  # not redone
    assert out.read_bytes() == single_run[0].read_bytes()


def test_resume_refuses_other_settings(single_run, data_file):
    out, _ = single_run
    res = subprocess.run(
        [
            str(BIN / "srt"),
            "score",
            "--data",
            str(data_file),
            "--output",
            str(out),
            "--shard_size",
            "4",
            "--template",
            "alpaca",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode != 0 and "holds shards of a run with different settings" in res.stderr
