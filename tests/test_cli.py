"""The `srt` console script as users call it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from srt_trainer.cli import STAGES, main
from srt_trainer.io import read_rows

SRT = str(Path(sys.executable).parent / "srt")
REPO = Path(__file__).resolve().parents[1]


def _srt(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([SRT, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_help_lists_every_stage():
    res = _srt("--help")
    assert res.returncode == 0
    stages = {"score", "reflect", "select", "agree", "train", "run", "eval", "ablate"}
    for stage in stages:
        assert f"    {stage} " in res.stdout
    assert set(STAGES) == stages


def _srt_here(capsys, *args: str) -> tuple[int, str]:
    """``srt ARGS`` in this process (the console script is checked once, above): exit status and stdout."""
    try:
        code = main(list(args))
    except SystemExit as e:  # --help exits from argparse
        code = e.code
    return code, capsys.readouterr().out


def test_every_stage_is_built_and_documents_its_options(capsys):
    for stage in STAGES:  # each entry point imports and answers --help with its own usage
        code, out = _srt_here(capsys, stage, "--help")
        assert code == 0 and out.startswith(f"usage: srt {stage}"), (stage, out[:200])
    code, out = _srt_here(capsys, "select", "--help")
    assert code == 0 and "--keep_unaccepted_winners" in out


def test_no_stage_prints_help_and_fails(capsys):
    code, out = _srt_here(capsys)
    assert code == 2 and "stages:" in out


def test_run_help_documents_its_config(capsys):
    code, out = _srt_here(capsys, "run", "--help")
    assert code == 0
    assert "--model_name_or_path" in out and "'embedded'" in out and "--template" in out


def test_main_job_on_the_recipe_config(tmp_path, embedded_dir, capsys):
    """The README's first command, on a 6-row slice: reflect → score → select → LoRA SFT → answers; then the same
    command again reuses every stage (teacher cache, score shards, the last checkpoint). In this process: the
    console script is checked above."""
    config = REPO / "recipes" / "smollm2-135m" / "run" / "config_cpu.yaml"
    out = tmp_path / "demo"
    args = [
        "run",
        str(config),
        "--output_dir",
        str(out),
        "--limit",
        "6",
        "--teacher_max_tokens",
        "32",
        "--held_out_max_new_tokens",
        "12",
        "--num_train_epochs",
        "1",
        "--save_steps",
        "1",
        "--score_max_length",
        "256",
        "--max_length",
        "256",
        "--keep_unaccepted_winners",
        "true",
    ]
    code, _ = _srt_here(capsys, *args)
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    for variant in ("Q", "A", "QA"):
        r = summary["reflection"][variant]
        assert r["rows"] == 6 and r["ok"] + r["fallback"] + r["failed"] == 6 and r["failed"] == 0
        rows = read_rows(out / "reflect" / f"{variant.lower()}.jsonl")
        assert [x["source_index"] for x in rows] == list(range(6)) and {x["variant"] for x in rows} == {variant}
    for name in ("ori", "q", "a", "qa"):
        scores = read_rows(out / "scores" / f"{name}.scores.jsonl")
        assert len(scores) == 6 and all(x["ifd"] is None or x["ifd"] > 0 for x in scores)
    counts = summary["selection"]
    assert counts["rows"] == 6 and counts["kept"] == summary["training"]["rows"] > 0
    selected = read_rows(out / "selection" / "selected.jsonl")
    assert len(selected) == counts["kept"] and all(x["variant"] in ("QA", "A", "Q", "ori") for x in selected)
    for suffix in ("funnel.png", "hist.png", "card.md", "selection.json"):
        assert (out / "selection" / f"selected.{suffix}").is_file()
    assert summary["training"]["global_step"] >= 1 and (out / "adapter_config.json").is_file()
    answers = read_rows(out / "answers.jsonl")
    assert len(answers) == 4 and all("untuned_output" in a for a in answers)

    code, _ = _srt_here(capsys, *args)  # a rerun: nothing is asked, scored or trained again
    assert code == 0
    again = json.loads((out / "summary.json").read_text())
    for variant in ("Q", "A", "QA"):
        assert again["reflection"][variant]["counts"]["asked"] == 0
        assert again["reflection"][variant]["counts"]["requests"] == 0
    assert again["training"]["resumed_from"] and again["training"]["global_step"] == summary["training"]["global_step"]
    assert again["selection"] == counts


def test_main_job_checks_its_data_before_any_model_work(tmp_path, capsys, monkeypatch):
    """A window past the end of the data stops `srt run` at once, before the student is loaded or asked."""
    from srt_trainer.training import student

    def no_model(*args, **kwargs):
        raise AssertionError("the student was loaded before the data was checked")

    monkeypatch.setattr(student, "load_model_for_training", no_model)
    monkeypatch.setattr(student, "load_tokenizer", no_model)
    config = REPO / "recipes" / "smollm2-135m" / "run" / "config_cpu.yaml"
    data = REPO / "tests" / "data" / "alpaca_slice.json"
    argv = ["run", str(config), "--data", str(data), "--offset", "9999", "--output_dir", str(tmp_path / "o")]
    assert main(argv) == 2 and "no rows from --offset 9999 on" in capsys.readouterr().err


def test_a_process_of_a_launch_ends_with_its_exit_status_and_its_output_flushed():
    """Under a multi-process launch a command's process ends at once after its work (no interpreter shutdown, where a
    gloo worker thread still releasing tensors would abort it): the status, and every line written, stay."""
    body = (
        "import logging, sys\n"
        "from srt_trainer.errors import SRTUserError, run_cli\n"
        "def done():\n"
        "    print('written', end='')\n"
        "    logging.getLogger('srt_trainer').warning('logged')\n"
        "def refused():\n"
        "    raise SRTUserError('data.json: no rows')\n"
        "code = run_cli('srt x', done if sys.argv[1] == 'done' else refused)\n"
        "print('after the command')  # not reached under a launch\n"
        "sys.exit(code)\n"
    )
    env = {**os.environ, "WORLD_SIZE": "2"}
    ok = subprocess.run([sys.executable, "-c", body, "done"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and ok.stdout == "written" and "logged" in ok.stderr
    refused = subprocess.run([sys.executable, "-c", body, "refused"], capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and refused.stdout == "" and "srt x: data.json: no rows" in refused.stderr
    alone = subprocess.run(
        [sys.executable, "-c", body, "done"], capture_output=True, text=True, env={**env, "WORLD_SIZE": "1"}
    )
    assert alone.returncode == 0 and alone.stdout == "writtenafter the command\n"
