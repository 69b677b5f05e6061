"""The `srt` console script as users call it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from srt_trainer.cli import STAGES

SRT = str(Path(sys.executable).parent / "srt")
REPO = Path(__file__).resolve().parents[1]


def _srt(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([SRT, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_help_lists_every_stage():
    res = _srt("--help")
    assert res.returncode == 0
    for stage in ("score", "reflect", "select", "train", "run", "eval"):
        assert f"    {stage} " in res.stdout
    assert set(STAGES) == {"score", "reflect", "select", "train", "run", "eval"}


def test_every_stage_is_built_and_documents_its_options():
    for stage in STAGES:
        assert STAGES[stage].entry is not None
    res = _srt("select", "--help")
    assert res.returncode == 0 and "--keep_unaccepted_winners" in res.stdout


def test_no_stage_prints_help_and_fails():
    res = _srt()
    assert res.returncode == 2 and "stages:" in res.stdout


def test_run_help_documents_its_config():
    res = _srt("run", "--help")
    assert res.returncode == 0
    assert "--model_name_or_path" in res.stdout and "'embedded'" in res.stdout and "--template" in res.stdout


def test_main_job_on_the_recipe_config(tmp_path, embedded_dir):
    """The README's first command: the recipe config, with the output folder moved into the test's tmp dir."""
    config = REPO / "recipes" / "smollm2-135m" / "run" / "config_cpu.yaml"
    res = _srt("run", str(config), "--output_dir", str(tmp_path / "demo"), "--max_new_tokens", "16")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["scoring"]["rows"] == summary["scoring"]["scored"] == 32
    assert summary["scoring"]["rejected_rows"] == 0 and 0 < summary["scoring"]["ifd_quantiles"]["0.5"] < 2
    scores = [json.loads(x) for x in (tmp_path / "demo" / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == 32 and all(r["ifd"] > 0 and r["rifd"] > 0 for r in scores)
    assert (tmp_path / "demo" / "scores.hist.png").exists()
    answers = [json.loads(x) for x in (tmp_path / "demo" / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 4 and all(a["output"].strip() for a in answers)
    assert "USER: Give three tips for keeping houseplants healthy. ASSISTANT:" in res.stdout
    assert (tmp_path / "demo" / "scores.rejects.jsonl").read_text() == ""


def test_main_job_on_real_data_reports_rejects(tmp_path, alpaca_rows, embedded_dir):
    rows = [*alpaca_rows[:20], {"instruction": "", "input": "", "output": "orphan"}]
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = _srt("run", "--data", str(data), "--held_out", "", "--output_dir", str(tmp_path / "o"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "21 rows read (alpaca), 20 to score" in res.stdout
    rejects = [json.loads(x) for x in (tmp_path / "o" / "scores.rejects.jsonl").read_text().splitlines()]
    assert [(r["row"], r["field"], r["reason"]) for r in rejects] == [(20, "instruction", "empty instruction")]
