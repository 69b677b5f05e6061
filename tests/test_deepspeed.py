"""The users' command under DeepSpeed, for real: ``accelerate launch --config_file accelerate_configs/<zero config>
recipes/sft_7b.py --config recipes/llama2-7b/sft/config_full.yaml`` with two CPU processes (DeepSpeed's CPU
accelerator over gloo) and a tiny random Llama as the student.

The GPU path of the README runs as written, in a folder laid out as a user's: ``srt reflect`` three times (the
embedded model as a local teacher), the ZeRO-3 launch (the student scores the variants while ZeRO-3 partitions it,
selects, trains, saves), ``srt eval generate`` on the saved model. Then: the launch's scores equal one process's to
1e-5, the processes with fewer forwards joined the others' (uneven shards, no hang), at most one unit of parameters
was gathered at a time, a killed launch resumes to the same weights, and ZeRO-2 and ZeRO-3 with parameter offload
score the same numbers.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from srt_trainer.io import read_rows
from tests.processes import kill_when
from tests.serving import free_port
from tests.test_training import write_variant_files

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STATS = ("loss_ins_alone", "loss_out_alone", "loss_ins_cond", "loss_out_cond", "ifd", "rifd")
OUT = "outputs/llama2-7b-srt-full"  # the recipe's output_dir
STEPS = 4

# The README's GPU path (test_the_readme_shows_this_gpu_path checks that it shows exactly these commands).
GPU_PATH = [
    "srt reflect --mode instruction --data data/alpaca_data.json --output outputs/reflect/q.jsonl "
    "--teacher openai --teacher_model gpt-4o-mini",
    "srt reflect --mode response --data data/alpaca_data.json --output outputs/reflect/a.jsonl "
    "--teacher openai --teacher_model gpt-4o-mini",
    "srt reflect --mode response --data outputs/reflect/q.jsonl --output outputs/reflect/qa.jsonl "
    "--teacher openai --teacher_model gpt-4o-mini",
    "accelerate launch --config_file accelerate_configs/deepspeed_zero3.yaml recipes/sft_7b.py "
    "--config recipes/llama2-7b/sft/config_full.yaml",
    f"srt eval generate --test_sets data/eval --output outputs/eval/tuned.jsonl --model {OUT}",
]


def _student_overrides(student: Path, output_dir: str) -> list[str]:
    """What a 2-core CPU needs instead of the recipe's 8 GPUs and Llama-2-7B; the recipe's data files stay."""
    return [
        *("--model_name_or_path", str(student), "--output_dir", output_dir),
        *("--bf16", "false", "--dtype", "float32", "--activation_checkpointing", "false"),
        *("--max_steps", str(STEPS), "--save_steps", "1", "--save_total_limit", "10"),
        *("--max_length", "256", "--per_device_train_batch_size", "1", "--global_batch_size", "2"),
        *("--learning_rate", "1e-3", "--warmup_steps", "0", "--report_to", "none", "--logging_steps", "1"),
        *("--seed", "0", "--full_determinism", "true", "--dataloader_num_workers", "0"),
        # three scoring shards of two rows over two processes: one process has fewer forwards than the other
        *("--shard_size", "2", "--score_max_length", "256"),
        # a random student accepts few rewrites: keep the winners the thresholds would cut, so training has rows
        *("--keep_unaccepted_winners", "true"),
    ]


def _launch_cmd(config: str, script_args: list[str]) -> list[str]:
    return [
        str(BIN / "accelerate"),
        "launch",
        *("--config_file", f"accelerate_configs/{config}.yaml"),
        *("--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port())),
        *script_args,
    ]


def _env() -> dict[str, str]:
    # DeepSpeed's CPU accelerator; without oneCCL it forms its process group over gloo
    return {**os.environ, "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def _run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=_env())
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    return res


@pytest.fixture(scope="module")
def project(tmp_path_factory, alpaca_rows, data_dir) -> Path:
    """A user's folder: the repository's recipes and launch configs, their source file and the eval sets."""
    root = tmp_path_factory.mktemp("user")
    for name in ("recipes", "accelerate_configs"):
        (root / name).symlink_to(REPO / name)
    (root / "data").mkdir()
    (root / "data" / "eval").symlink_to(data_dir / "eval")
    variants = write_variant_files(alpaca_rows, data_dir, tmp_path_factory.mktemp("variants"))
    rows = read_rows(variants["ori"])
    (root / "data" / "alpaca_data.json").write_text(json.dumps(rows, indent=4))  # a JSON list, as Alpaca ships
    return root


@pytest.fixture(scope="module")
def gpu_path(project, tiny_models, embedded_dir) -> dict:
    """The README's GPU path, each command as written plus the overrides a CPU test needs."""
    from srt_trainer.cli import main as srt

    student = tiny_models["llama"]
    teacher = ["--teacher", "transformers", "--teacher_model", str(embedded_dir), "--teacher_max_tokens", "32"]
    logs = {}
    cwd = os.getcwd()
    os.chdir(project)  # the commands' relative paths are the user's folder's
    try:
        for line in GPU_PATH:
            argv = shlex.split(line)
            if argv[0] == "srt" and argv[1] == "reflect":
                assert srt([*argv[1:], *teacher]) == 0
            elif argv[0] == "accelerate":
                cmd = _launch_cmd("deepspeed_zero3", argv[4:])
                res = _run([*cmd, *_student_overrides(student, OUT)], project)
                logs["launch"] = res.stdout + res.stderr
            else:
                assert srt([*argv[1:], "--limit", "2", "--max_new_tokens", "4"]) == 0
    finally:
        os.chdir(cwd)
    return logs


def _single_process_scores(data: Path, student: Path, tmp: Path) -> list[dict]:
    from srt_trainer.models.config import SRTModelConfig
    from srt_trainer.scoring import ScoreArguments, ScoringArguments, run_score

    args = ScoreArguments(data=str(data), output=str(tmp / f"{data.stem}.single.jsonl"), plot=False)
    model_args = SRTModelConfig(model_name_or_path=str(student))
    return run_score(args, ScoringArguments(score_max_length=256, shard_size=2), model_args).rows


def _max_rel(a: list[dict], b: list[dict]) -> float:
    assert [r["row_index"] for r in a] == [r["row_index"] for r in b]
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        for c in STATS:
            assert (x[c] is None) == (y[c] is None), (c, x, y)
            if x[c] is not None:
                worst = max(worst, abs(x[c] - y[c]) / max(abs(y[c]), 1e-12))
    return worst


VARIANT_DATA = {"ori": "data/alpaca_data.json", "q": "outputs/reflect/q.jsonl", "a": "outputs/reflect/a.jsonl"}
VARIANT_DATA["qa"] = "outputs/reflect/qa.jsonl"


def test_the_readme_shows_this_gpu_path():
    text = (REPO / "README.md").read_text()
    section = text[text.index("## The GPU path") :]
    block = section[section.index("```bash") + len("```bash") : section.index("```", section.index("```bash") + 7)]
    commands = [line.strip() for line in block.strip().splitlines() if not line.startswith("export ")]
    assert commands == GPU_PATH


def test_gpu_path_runs_as_the_readme_says(project, gpu_path):
    n = len(json.loads((project / "data" / "alpaca_data.json").read_text()))
    for name in ("q", "a", "qa"):
        rows = read_rows(project / "outputs" / "reflect" / f"{name}.jsonl")
        assert len(rows) == n and [r["source_index"] for r in rows] == list(range(n))
    out = project / OUT
    summary = json.loads((out / "srt_train_summary.json").read_text())
    counts = json.loads((out / "selection" / "selected.selection.json").read_text())["counts"]
    assert counts["rows"] == n and summary["train_rows"] == counts["kept"] >= 1
    assert summary["global_step"] == STEPS and "global batch 1 × 1 × 2 = 2" in gpu_path["launch"]
    answers = read_rows(project / "outputs" / "eval" / "tuned.jsonl")
    assert len(answers) >= 2 and all("output" in a for a in answers)


def test_zero3_scores_equal_one_process(project, gpu_path, tiny_models, tmp_path):
    launch = gpu_path["launch"]
    assert launch.count("partitioned by DeepSpeed ZeRO-3: scoring gathers one decoder layer at a time") == 8
    for name, data in VARIANT_DATA.items():
        zero3 = read_rows(project / OUT / "scores" / f"{name}.scores.jsonl")
        single = _single_process_scores(project / data, tiny_models["llama"], tmp_path)
        assert _max_rel(zero3, single) < 1e-5


def test_uneven_shards_join_the_other_process(gpu_path):
    launch = gpu_path["launch"]
    shares = [[int(n) for n in re.findall(rf"rank {r} of 2: (\d+) shards", launch)] for r in (0, 1)]
    assert all(sorted(pair) == [1, 2] for pair in zip(*shares, strict=True)), shares  # 3 shards, 2 + 1
    joined = [int(n) for n in re.findall(r"joined the other processes' scoring with (\d+) empty forwards", launch)]
    assert joined and min(joined) >= 1  # the process with less work ran empty forwards instead of hanging


def test_one_unit_of_parameters_gathered_at_a_time(gpu_path, tiny_models):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    # the units: a decoder layer, the input embeddings, the output layer (untied here), the final norm
    parts = [model.model.layers[0], model.get_input_embeddings(), model.get_output_embeddings(), model.model.norm]
    largest = max(sum(p.numel() for p in part.parameters()) for part in parts)
    total = sum(p.numel() for p in model.parameters())
    found = re.findall(r"gathered at most (\d+) of the student's (\d+)", gpu_path["launch"])
    peaks = [(int(a), int(b)) for a, b in found]
    assert len(peaks) == 8 and all(b == total for _, b in peaks)
    assert all(a == largest for a, _ in peaks) and largest < total / 2


def test_saved_model_is_trained_and_loads(project, gpu_path, tiny_models):
    from transformers import AutoModelForCausalLM

    out = project / OUT
    trained = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    initial = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32)
    moved = [(a - b).abs().max().item() for a, b in zip(trained.parameters(), initial.parameters(), strict=True)]
    assert max(moved) > 1e-4 and all(torch.isfinite(p).all() for p in trained.parameters())
    assert (out / "README.md").is_file() and (out / "tokenizer.json").is_file()


def test_killed_zero3_launch_resumes_to_the_same_weights(project, gpu_path, tiny_models):
    student = tiny_models["llama"]
    out = "outputs/resumed"
    args = _launch_cmd("deepspeed_zero3", ["recipes/sft_7b.py", "--config", "recipes/llama2-7b/sft/config_full.yaml"])
    cmd = [*args, *_student_overrides(student, out)]
    checkpoint = project / out / "checkpoint-2" / "trainer_state.json"
    kill_when(cmd, checkpoint.is_file, timeout=600, env=_env(), cwd=project)
    assert not (project / out / "model.safetensors").exists()  # killed before the end
    res = _run([*cmd, "--resume_from_checkpoint", "auto"], project)
    log = res.stdout + res.stderr
    assert log.count("resuming: 3 of 3 shards already scored") == 4  # every variant's scoring reused
    summary = json.loads((project / out / "srt_train_summary.json").read_text())
    resumed_at = int(re.search(r"checkpoint-(\d+)$", summary["resumed_from"]).group(1))
    assert 2 <= resumed_at < STEPS and summary["global_step"] == STEPS  # steps were left to train
    a, b = load_file(project / OUT / "model.safetensors"), load_file(project / out / "model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_zero2_recipe_scores_selects_and_trains(project, gpu_path, tiny_models, tmp_path):
    out = "outputs/zero2"
    args = ["recipes/sft_7b.py", "--config", "recipes/llama2-7b/sft/config_full.yaml"]
    overrides = [*_student_overrides(tiny_models["llama"], out), "--max_steps", "1"]
    _run([*_launch_cmd("deepspeed_zero2", args), *overrides], project)
    assert json.loads((project / out / "srt_train_summary.json").read_text())["global_step"] == 1
    for name, data in VARIANT_DATA.items():
        scores = read_rows(project / out / "scores" / f"{name}.scores.jsonl")
        assert _max_rel(scores, _single_process_scores(project / data, tiny_models["llama"], tmp_path)) < 1e-5


def test_srt_score_under_zero3_offload_gathering_the_whole_model(project, tiny_models, tmp_path):
    data = project / "data" / "alpaca_data.json"
    output = tmp_path / "offload.scores.jsonl"
    score = ["-m", "srt_trainer.cli", "score", "--data", str(data), "--output", str(output)]
    score += ["--model", str(tiny_models["llama"]), "--max-length", "256", "--shard_size", "2", "--plot", "false"]
    res = _run([*_launch_cmd("deepspeed_zero3_offload", score), "--zero3_gather", "model"], project)
    assert res.stderr.count("scoring gathers the whole model at once") == 2
    assert _max_rel(read_rows(output), _single_process_scores(data, tiny_models["llama"], tmp_path)) < 1e-5


def test_a_misspelled_variant_file_stops_every_process_before_the_student_loads(project, tiny_models, tmp_path):
    """The recipe's ZeRO-3 launch with a misspelled Q file: both processes stop with the file named, before the
    student is loaded or anything scored (the check runs on every process, so none waits for the other)."""
    out = tmp_path / "typo"
    args = ["recipes/sft_7b.py", "--config", "recipes/llama2-7b/sft/config_full.yaml"]
    cmd = [*_launch_cmd("deepspeed_zero3", args), *_student_overrides(tiny_models["llama"], str(out))]
    res = subprocess.run(
        [*cmd, "--q_data", "outputs/reflect/q_typo.jsonl"], capture_output=True, text=True, cwd=project, env=_env()
    )
    assert res.returncode != 0
    assert res.stderr.count("recipes/sft_7b.py: outputs/reflect/q_typo.jsonl: no such file or folder") == 2, res.stderr
    assert not (out / "scores").exists() and "partitioned by DeepSpeed ZeRO-3" not in res.stderr


def test_waiting_for_the_main_process_outlasts_the_process_group_timeout(project, tmp_path):
    """What ``srt run`` does while the main process reflects (``on_main_process``): the other process waits for it
    longer than its process-group time-out, and both go on together; at a barrier the same wait ends at the
    time-out. The short time-out holds on the waiting process around that wait only (tests/wait_probe.py), so no
    other collective of the launch depends on how fast a loaded machine runs it."""
    short = 4
    probe = [str(REPO / "tests" / "wait_probe.py"), str(tmp_path), str(short)]
    log = _run(_launch_cmd("deepspeed_zero3", probe), project).stdout
    waited = dict(re.findall(r"rank (\d): (?:done|None) after ([\d.]+) s", log))
    assert waited.keys() == {"0", "1"} and float(waited["1"]) > short, log
    assert log.count("2 processes went on together") == 2, log
    control = re.search(r"rank 1: the barrier ended: .*", log)
    assert control and f"Timed out waiting {short * 1000}ms" in control.group(), log  # gloo's own words


def test_srt_run_under_zero3(project, tiny_models, tmp_path):
    """``srt run`` reflects on the main process while the other waits (see the test above for a wait longer than the
    process group's time-out), then both score, select and train under ZeRO-3; the held-out answers come from the
    partitioned student (every process generating) and from the saved model."""
    from tests.serving import SlowTeacher

    teacher = SlowTeacher(0.5, SlowTeacher.reflection_reply)  # three reflections one after another: a real wait
    out = tmp_path / "run"
    job = ["-m", "srt_trainer.cli", "run", "--config", "recipes/smollm2-135m/run/config_cpu.yaml"]
    job += ["--data", "data/alpaca_data.json", "--teacher", "openai", "--teacher_model", "slow"]
    job += ["--base_url", teacher.base_url, "--use_peft", "false"]
    job += ["--held_out_max_new_tokens", "4", "--rifd_threshold", "10", "--ifd_threshold", "10"]
    overrides = _student_overrides(tiny_models["llama"], str(out))
    try:
        res = _run([*_launch_cmd("deepspeed_zero3", job), *overrides, "--max_steps", "1"], project)
    finally:
        teacher.close()
    assert len(teacher.requests) == 3 * 6  # Q and A of every row, then QA of every Q: each asked once
    summary = json.loads((out / "summary.json").read_text())
    assert summary["timings"]["reflect_s"] > 3 * 0.5 and summary["training"]["global_step"] == 1
    assert {v: summary["reflection"][v]["ok"] for v in ("Q", "A", "QA")} == {"Q": 6, "A": 6, "QA": 6}
    answers = read_rows(out / "answers.jsonl")
    assert len(answers) == summary["held_out_answers"] >= 1 and all("untuned_output" in a for a in answers)
    assert "partitioned by DeepSpeed ZeRO-3" in res.stderr
