"""The SFT recipes: every model config parses with the paper's settings, and a real two-process
``accelerate launch`` of ``recipes/sft_7b.py`` on the embedded student (the suite's one multi-process launch) scores
the variants across both processes, exactly as one process scores them, selects, trains, saves; the saved adapter
reloads and generates. ``--cpu`` (one process) runs the recipe too."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from srt_trainer.io import read_rows
from srt_trainer.training import gradient_accumulation_for
from srt_trainer.training.cli import make_parser
from tests.serving import free_port
from tests.test_training import write_variant_files

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODEL_CONFIGS = sorted(p for p in (REPO / "recipes").glob("*/sft/config_*.yaml") if "smollm2" not in str(p))


def _recipe_defaults(name: str) -> dict:
    spec = importlib.util.spec_from_file_location(name, REPO / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the recipe only defines DEFAULTS unless run as a script
    return module.DEFAULTS


def test_recipe_configs_cover_the_students():
    names = {p.parent.parent.name for p in MODEL_CONFIGS}
    assert {"llama2-7b", "llama2-13b", "llama3-8b", "mistral-7b", "qwen2-7b", "gemma-2-9b"} <= names
    assert {p.name for p in (REPO / "recipes" / "llama2-7b" / "sft").iterdir()} >= {
        "config_full.yaml",
        "config_lora.yaml",
        "config_qlora.yaml",
    }


@pytest.mark.parametrize("config", MODEL_CONFIGS, ids=lambda p: f"{p.parent.parent.name}/{p.stem}")
def test_model_config_parses_with_paper_settings(config, tmp_path):
    recipe = "sft_13b" if "13b" in config.parent.parent.name else "sft_7b"
    script, args, model, _, selection = make_parser(recipe, _recipe_defaults(recipe)).parse_args_and_config(
        ["--config", str(config), "--output_dir", str(tmp_path), "--bf16", "false"]  # bf16 needs a GPU here
    )
    assert script.mode() == "data" and model.template == "vicuna" and selection.policy == "paper"
    assert (args.num_train_epochs, args.max_length, args.warmup_steps, args.weight_decay) == (3, 2048, 0.03, 0.0)
    assert str(args.lr_scheduler_type).endswith("COSINE") and args.global_batch_size == 128
    assert args.completion_only_loss is True and model.model_name_or_path and "/" in model.model_name_or_path
    full = not model.use_peft
    if full:
        assert args.learning_rate == (1e-5 if recipe == "sft_13b" else 2e-5)
    assert model.load_in_4bit == config.stem.endswith("qlora")
    # on the 8 processes of the accelerate configs the global batch stays 128
    assert (
        args.per_device_train_batch_size * gradient_accumulation_for(128, args.per_device_train_batch_size, 8) * 8
        == 128
    )


def test_13b_recipe_defaults_to_its_learning_rate(tmp_path):
    _, args, *_ = make_parser("sft_13b", _recipe_defaults("sft_13b")).parse_args_and_config(
        ["--output_dir", str(tmp_path)]
    )
    assert args.learning_rate == 1e-5


def _launch(*args: str, launcher: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = [
        str(BIN / "accelerate"),
        "launch",
        *launcher,
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(REPO / "recipes" / "sft_7b.py"),
        "--config",
        str(REPO / "recipes" / "smollm2-135m" / "sft" / "config_cpu.yaml"),
        *args,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return res


@pytest.fixture(scope="module")
def two_process_run(alpaca_rows, data_dir, embedded_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("recipe")
    files = write_variant_files(alpaca_rows, data_dir, folder / "variants")
    out = folder / "out"
    # the users' DDP config; on a machine without CUDA it starts two CPU processes (gloo), --cpu only one
    res = _launch(
        "--output_dir",
        str(out),
        "--ori_data",
        str(files["ori"]),
        "--q_data",
        str(files["Q"]),
        "--a_data",
        str(files["A"]),
        "--qa_data",
        str(files["QA"]),
        "--policy",
        "paper",
        "--keep_unaccepted_winners",
        "true",
        "--score_max_length",
        "256",
        "--shard_size",
        "2",
        "--max_steps",
        "2",
        "--save_steps",
        "1",
        "--max_length",
        "128",
        "--per_device_train_batch_size",
        "1",
        "--global_batch_size",
        "4",
        "--warmup_steps",
        "0",
        "--learning_rate",
        "1e-3",
        launcher=["--config_file", str(REPO / "accelerate_configs" / "multi_gpu.yaml"), "--num_processes", "2"],
    )
    return out, res


def test_two_processes_score_select_train_and_save(two_process_run, embedded_model, embedded_tokenizer, tmp_path):
    from srt_trainer.models.config import SRTModelConfig
    from srt_trainer.scoring import STAT_COLUMNS, ScoreArguments, ScoringArguments, run_score

    out, res = two_process_run
    # scoring shared the rows of every variant between the two processes: 3 shards of 2 rows, split by tokens
    shares = [[int(n) for n in re.findall(rf"rank {rank} of 2: (\d+) shards", res.stderr)] for rank in (0, 1)]
    assert all(len(s) == 4 for s in shares), res.stderr[-3000:]
    assert all(a + b == 3 and min(a, b) >= 1 for a, b in zip(*shares, strict=True)), shares
    # and gave what one process gives: no row twice, none missing, the same statistics
    for variant in ("ori", "q", "a", "qa"):
        multi = read_rows(out / "scores" / f"{variant}.scores.jsonl")
        args = ScoreArguments(
            data=str(out.parent / "variants" / f"{variant}.jsonl"),
            output=str(tmp_path / f"{variant}.scores.jsonl"),
            plot=False,
        )
        scoring = ScoringArguments(score_max_length=256, shard_size=2)
        single = run_score(args, scoring, SRTModelConfig(), model=embedded_model, tokenizer=embedded_tokenizer).rows
        assert len(multi) == 6 and [r["row_index"] for r in multi] == [r["row_index"] for r in single]
        for m, s in zip(multi, single, strict=True):
            assert m["score_error"] == s["score_error"]
            for c in STAT_COLUMNS:
                assert (m[c] is None and s[c] is None) or m[c] == pytest.approx(s[c], rel=1e-5)
    selection = json.loads((out / "selection" / "selected.selection.json").read_text())
    kept = read_rows(out / "selection" / "selected.jsonl")
    assert selection["counts"]["rows"] == 6 and selection["counts"]["kept"] == len(kept) >= 1
    # one global batch of 4 = 1 per device × 2 accumulation × 2 processes
    summary = json.loads((out / "srt_train_summary.json").read_text())
    assert summary["global_batch_size"] == 4 and summary["global_step"] == 2 and summary["train_rows"] == len(kept)
    assert "global batch 1 × 2 × 2 = 4" in res.stdout
    for step in (1, 2):
        assert (out / f"checkpoint-{step}" / "selection" / "selected.selection.json").is_file()
    adapter = load_file(out / "adapter_model.safetensors")
    assert any(v.abs().max() > 0 for k, v in adapter.items() if "lora_B" in k)  # trained off the zero init


def test_saved_adapter_reloads_and_generates(two_process_run, embedded_dir, alpaca_rows):
    from peft import PeftModel

    from srt_trainer.generation import generate_answers
    from srt_trainer.models import load_student, load_tokenizer
    from srt_trainer.templates import get_template

    out, _ = two_process_run
    tokenizer = load_tokenizer(out)
    model = load_student(embedded_dir, device="cpu", adapter=out)
    assert isinstance(model, PeftModel)
    prompts = [get_template("vicuna").prompt(r["instruction"], r["input"]) for r in alpaca_rows[:2]]
    answers = generate_answers(model, tokenizer, prompts, max_new_tokens=8, progress=False)
    assert len(answers) == 2 and all(a.strip() for a in answers)


def test_cpu_flag_runs_the_recipe_in_one_process(two_process_run, tmp_path):
    out, _ = two_process_run
    res = _launch(
        "--output_dir",
        str(tmp_path / "one"),
        "--dataset",
        str(out / "selection" / "selected.jsonl"),
        "--ori_data",
        "null",
        "--max_steps",
        "1",
        "--max_length",
        "64",
        "--per_device_train_batch_size",
        "1",
        "--global_batch_size",
        "1",
        "--save_strategy",
        "no",
        launcher=["--cpu"],
    )
    assert "global batch 1 × 1 × 1 = 1" in res.stdout
    # the selection report of the given dataset travels with the run
    assert (tmp_path / "one" / "selection" / "selected.funnel.png").is_file()
    assert (tmp_path / "one" / "adapter_model.safetensors").is_file()
