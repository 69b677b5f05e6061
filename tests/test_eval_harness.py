"""`srt eval harness`: lm-evaluation-harness (lm-eval 0.4.13) through its Python API gives the numbers of the plain
`lm_eval` command on the same model, adapter and task: a tiny Llama with a LoRA adapter and a 20-question
multiple-choice task of our own (tests/data/harness), offline."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from srt_trainer.cli import main as srt_main
from srt_trainer.evaluation.harness import (
    LEADERBOARD_V1,
    HarnessTask,
    UnknownTaskError,
    check_tasks,
    plan_tasks,
    task_manager,
)
from srt_trainer.io import read_rows
from srt_trainer.models.loading import AdapterMismatchError, check_adapter_base

REPO = Path(__file__).resolve().parents[1]
TASKS = "tests/data/harness"  # the task's data_files are relative to the repository root


@pytest.fixture(scope="module")
def tiny_adapter(tiny_models, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny Llama and a LoRA adapter on it with non-zero weights (so the adapter changes the numbers)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = tiny_models["llama"]
    torch.manual_seed(1)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(folder)
    return base, folder


def test_numbers_equal_the_lm_eval_command(tiny_adapter, tmp_path, monkeypatch):
    base, adapter = tiny_adapter
    monkeypatch.chdir(REPO)
    out = tmp_path / "harness.jsonl"
    args = ["--model", str(base), "--adapter", str(adapter), "--tasks", "srt_mc", "--num_fewshot", "2"]
    args += ["--include_path", TASKS, "--device", "cpu", "--batch_size", "8", "--output", str(out)]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert srt_main(["eval", "harness", *args]) == 0
    ours = json.loads(out.with_name("harness.results.json").read_text())["results"]["srt_mc"]

    cli_out = tmp_path / "cli"
    lm_eval = Path(sys.executable).parent / "lm_eval"
    command = [str(lm_eval), "--model", "hf", "--model_args", f"pretrained={base},peft={adapter}"]
    command += ["--tasks", "srt_mc", "--num_fewshot", "2", "--include_path", TASKS, "--device", "cpu"]
    command += ["--batch_size", "8", "--output_path", str(cli_out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (results_file,) = cli_out.rglob("results_*.json")
    theirs = json.loads(results_file.read_text())["results"]["srt_mc"]
    for key in ("acc,none", "acc_norm,none", "acc_stderr,none", "acc_norm_stderr,none"):
        assert ours[key] == theirs[key], key

    rows = read_rows(out)
    assert rows == [
        {
            "model": f"{base.name}+{adapter.name}",
            "task": "srt_mc",
            "metric": "acc,none",
            "value": theirs["acc,none"],
            "stderr": theirs["acc_stderr,none"],
            "num_fewshot": 2,
            "n_samples": 20,
        }
    ]
    manifest = json.loads(out.with_name("harness.manifest.json").read_text())
    assert manifest["packages"]["lm-eval"] == "0.4.13" and manifest["adapter"] == str(adapter)
    assert {Path(p).name for p in manifest["files"]} == {"srt_mc.yaml", "srt_mc.jsonl"}
    assert "srt_mc" in stdout.getvalue() and f"{theirs['acc,none']:.4f}" in stdout.getvalue()
    # srt eval report reads ours with its manifest, and the command's results file (which has none) alike
    report = tmp_path / "report.md"
    with contextlib.redirect_stdout(io.StringIO()):
        assert srt_main(["eval", "report", "--harness", str(out), str(results_file), "--output", str(report)]) == 0
    data = json.loads(report.with_suffix(".json").read_text())
    assert data["models"][f"{base.name}+{adapter.name}"]["srt_mc (2-shot)"] == theirs["acc,none"]
    assert [s["manifest"] for s in data["sources"]] == [manifest, None]

    # a rerun keeps the finished task
    with contextlib.redirect_stdout(io.StringIO()):
        assert srt_main(["eval", "harness", *args]) == 0
    assert json.loads(out.with_name("harness.summary.json").read_text())["tasks_run_now"] == 0
    assert read_rows(out) == rows


def test_task_names_and_the_leaderboard_preset():
    """The preset's tasks are the installed lm_eval's names, each at its own shots; an unknown name is refused
    naming it, with the closest known one; --num_fewshot cannot override the preset."""
    plan = plan_tasks([LEADERBOARD_V1], None)
    assert [(t.name, t.num_fewshot, t.metric.split(",")[0]) for t in plan] == [
        ("arc_challenge", 25, "acc_norm"),
        ("hellaswag", 10, "acc_norm"),
        ("mmlu", 5, "acc"),
        ("truthfulqa_mc2", 0, "acc"),
        ("winogrande", 5, "acc"),
        ("gsm8k", 5, "exact_match"),
    ]
    manager = task_manager(None)
    check_tasks(plan, manager, None)
    with pytest.raises(UnknownTaskError, match=r"arc_challnge \(did you mean arc_challenge\?\)"):
        check_tasks([HarnessTask("arc_challnge")], manager, None)
    with pytest.raises(ValueError, match="--num_fewshot with --tasks leaderboard_v1"):
        plan_tasks([LEADERBOARD_V1], 3)


def test_adapter_of_another_base_is_refused(tiny_models, tiny_adapter, tmp_path):
    base, adapter = tiny_adapter
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tiny_models["mistral"])
    other = tmp_path / "other_adapter"
    other.mkdir()
    (other / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(
        AdapterMismatchError, match=r"field 'base_model_name_or_path': the adapter was trained on .*mistral"
    ):
        check_adapter_base(str(base), str(other))
    config["base_model_name_or_path"] = str(base)
    (other / "adapter_config.json").write_text(json.dumps(config))
    check_adapter_base(str(base), str(other))
    with pytest.raises(AdapterMismatchError, match=r"no adapter_config\.json"):
        check_adapter_base(str(base), str(tmp_path))
