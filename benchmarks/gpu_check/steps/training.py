"""The training steps, each through ``recipes/sft_7b.py`` under ``accelerate launch``: the students they train
(``prepare``), LoRA and QLoRA for a few steps, and DeepSpeed ZeRO-3 on the recipe's whole path (variant files →
scored under ZeRO-3 → selected → trained → killed after a checkpoint → resumed)."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from gpu_check.assets import VARIANTS, pick, read_rows, variant_file, write_jsonl
from gpu_check.steps.base import StepContext, device, max_rel, random_llama
from gpu_check.steps.launch import launch, recipe_command, throughput, train_logs, wait_for_deepspeed

FULL = "recipes/llama2-7b/sft/config_full.yaml"
LORA = "recipes/llama2-7b/sft/config_lora.yaml"
QLORA = "recipes/llama2-7b/sft/config_qlora.yaml"
# what a run writes before its first checkpoint: the scores and the selection (see training/trainer.py)
BEFORE_TRAINING = ("scores", "selection")


def step_prepare(ctx: StepContext) -> dict[str, Any]:
    """The students the training steps start from (random weights, saved once), the real rows the adapters train
    on and the variant files ZeRO-3 scores."""
    import torch

    from srt_trainer.models import load_tokenizer

    s = ctx.sizes
    tokenizer = load_tokenizer(ctx.assets / "tok32k")
    start = time.perf_counter()
    params = {}
    for name, shape in (("student_1b", s.shape_1b), ("student_zero3", s.shape_zero3)):
        model = random_llama(shape, getattr(torch, ctx.dtype), device(), tokenizer)
        model.save_pretrained(ctx.work / name)
        tokenizer.save_pretrained(ctx.work / name)
        params[name] = sum(p.numel() for p in model.parameters())
        del model
    train_rows = ctx.rows(s.adapter_global * s.adapter_steps)
    write_jsonl(train_rows, ctx.work / "train_rows.jsonl")
    carried = {v: read_rows(variant_file(ctx.assets, v)) for v in VARIANTS}
    picked = pick(carried["ori"], s.zero3_rows, s.shortest_rows)
    for v, rows in carried.items():
        # source_index is the row's index in the new ori file: selection checks the variants' alignment by it
        subset = [
            {**rows[i], "source_index": j} if "source_index" in rows[i] else rows[i] for j, i in enumerate(picked)
        ]
        write_jsonl(subset, _variant(ctx, v))
    return {
        "student_1b_params": params["student_1b"],
        "student_zero3_params": params["student_zero3"],
        "train_rows": len(train_rows),
        "variant_rows": s.zero3_rows,
        "seconds": time.perf_counter() - start,
    }


def _variant(ctx: StepContext, variant: str) -> Path:
    return ctx.work / "variants" / f"{variant.lower()}.jsonl"


def _adapter_step(ctx: StepContext, config: str, name: str) -> dict[str, Any]:
    s, out_dir = ctx.sizes, ctx.work / name
    extra = ["--dataset", str(ctx.work / "train_rows.jsonl")]
    extra += ["--ori_data", "null", "--q_data", "null", "--a_data", "null", "--qa_data", "null"]
    extra += ["--max_steps", str(s.adapter_steps), "--save_strategy", "no"]
    cmd = recipe_command(
        ctx,
        config,
        "multi_gpu.yaml",
        ctx.work / "student_1b",
        out_dir,
        1,
        s.adapter_per_device,
        s.adapter_global,
        extra,
    )
    start = time.perf_counter()
    launch(cmd, ctx.work / "logs" / f"{name}.log")
    logs = train_logs(out_dir)
    ok = len(logs) == s.adapter_steps and (out_dir / "adapter_model.safetensors").is_file()
    return {"ok": ok, **throughput(logs), "run_seconds": time.perf_counter() - start}


def step_train_lora(ctx: StepContext) -> dict[str, Any]:
    """The LoRA recipe (adapters on every linear layer) for a few steps; its adapter feeds ``eval``."""
    return _adapter_step(ctx, LORA, "train_lora")


def step_train_qlora(ctx: StepContext) -> dict[str, Any]:
    """The QLoRA recipe (bitsandbytes 4-bit NF4 base) for a few steps."""
    return _adapter_step(ctx, QLORA, "train_qlora")


def _shards(scores: Path) -> dict[str, tuple[int, str]]:
    """Every finished scoring shard under ``scores``: its modification time and content hash."""
    return {
        str(p.relative_to(scores)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(scores.rglob("shard-*.jsonl"))
    }


def _one_process_scores(ctx: StepContext, student: Path) -> dict[str, list[dict[str, Any]]]:
    """The variant files scored by the same student in this one process (no launcher, no DeepSpeed), with the
    launch's scoring settings."""
    import torch

    from srt_trainer.models import load_tokenizer
    from srt_trainer.models.config import SRTModelConfig
    from srt_trainer.models.loading import load_configured_student
    from srt_trainer.scoring import ScoreArguments, ScoringArguments, run_score

    s = ctx.sizes
    model_args = SRTModelConfig(model_name_or_path=str(student), dtype=ctx.dtype, attn_implementation="sdpa")
    model = load_configured_student(model_args, device=device())
    tokenizer = load_tokenizer(student)
    scoring = ScoringArguments(shard_size=s.zero3_shard_size, token_budget=s.zero3_token_budget)
    out = {}
    for v in VARIANTS:
        args = ScoreArguments(
            data=str(_variant(ctx, v)), output=str(ctx.work / "one_process" / f"{v.lower()}.scores.jsonl"), plot=False
        )
        out[v] = run_score(args, scoring, model_args, model=model, tokenizer=tokenizer).rows
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the resumed launch needs the memory
    return out


def _max_abs_weight_diff(a_dir: Path, b_dir: Path) -> float | None:
    from safetensors.torch import load_file

    diffs = []
    for path in sorted(a_dir.glob("model*.safetensors")):
        a, b = load_file(path), load_file(b_dir / path.name)
        diffs += [(a[k].float() - b[k].float()).abs().max().item() for k in a]
    return max(diffs) if diffs else None


def step_train_zero3(ctx: StepContext) -> dict[str, Any]:
    """The recipe's whole path under ``accelerate launch`` with the ZeRO-3 config and the full fine-tuning recipe:
    the four variant files scored by the student that will be trained (ZeRO-3-sharded, rows shared by the
    processes), selected, trained with a checkpoint midway, saved; those scores against one process scoring the
    same student; then, with everything after the midway checkpoint removed (a run killed there), the same command
    with ``--resume_from_checkpoint auto``: it must reuse every scoring shard, select the same rows, and repeat the
    uninterrupted run's losses and final weights."""
    wait_for_deepspeed(ctx.work)
    s = ctx.sizes
    out_dir, student = ctx.work / "zero3", ctx.work / "student_zero3"
    extra = [arg for v in VARIANTS for arg in (f"--{v.lower()}_data", str(_variant(ctx, v)))]
    # random weights put IFD and r-IFD near 1, where the paper's thresholds keep a random part of the rows; with
    # thresholds no row reaches and every branch keeping its winner, each source row gives one training row
    extra += ["--keep_unaccepted_winners", "true", "--ifd_threshold", "1e9", "--rifd_threshold", "1e9"]
    extra += ["--shard_size", str(s.zero3_shard_size), "--token_budget", str(s.zero3_token_budget), "--plot", "false"]
    extra += ["--max_steps", str(s.zero3_steps), "--save_steps", str(s.zero3_save), "--save_total_limit", "3"]
    cmd = recipe_command(
        ctx,
        FULL,
        "deepspeed_zero3.yaml",
        student,
        out_dir,
        s.zero3_processes,
        s.zero3_per_device,
        s.zero3_global,
        extra,
    )
    env = {"DS_ACCELERATOR": "cpu"} if ctx.dry else {}  # DeepSpeed's CPU accelerator (gloo) in the dry run
    start = time.perf_counter()
    launch(cmd, ctx.work / "logs" / "train_zero3.run1.log", env)
    full = train_logs(out_dir)
    summary = json.loads((out_dir / "srt_train_summary.json").read_text())
    selected = read_rows(out_dir / "selection" / "selected.jsonl")
    scores = {v: read_rows(out_dir / "scores" / f"{v.lower()}.scores.jsonl") for v in VARIANTS}
    out: dict[str, Any] = {
        "zero3_ok": len(full) == s.zero3_steps
        and summary["global_step"] == s.zero3_steps
        and all(len(rows) == s.zero3_rows for rows in scores.values())
        and len(selected) == s.zero3_rows,
        "processes": s.zero3_processes,
        "scored_rows": {v: len(rows) for v, rows in scores.items()},
        "selected_rows": len(selected),
        "selected_variants": dict(Counter(r["variant"] for r in selected)),
        **throughput(full),
        "run_seconds": time.perf_counter() - start,
    }
    ctx.record(**out)

    one = _one_process_scores(ctx, student)
    tolerance = 1e-5 if ctx.dry else 1e-2  # fp32 on the CPU; bf16 kernels of other shapes round differently
    rel = max(max_rel(scores[v], one[v]) for v in VARIANTS)
    out.update(scores_vs_one_process_max_rel=rel, scores_tolerance=tolerance, scores_equal=rel <= tolerance)
    ctx.record(**out)

    # the killed run: what was written after the midway checkpoint goes (the final model and state are kept aside
    # for the comparison, the last checkpoint deleted)
    shards = _shards(out_dir / "scores")
    uninterrupted = ctx.work / "zero3_uninterrupted"
    uninterrupted.mkdir()
    shutil.rmtree(out_dir / f"checkpoint-{s.zero3_steps}")
    for path in out_dir.iterdir():
        if path.name not in (*BEFORE_TRAINING, f"checkpoint-{s.zero3_save}"):
            path.rename(uninterrupted / path.name)
    start = time.perf_counter()
    launch([*cmd, "--resume_from_checkpoint", "auto"], ctx.work / "logs" / "train_zero3.resume.log", env)
    after = _shards(out_dir / "scores")
    reused = sum(1 for name, state in shards.items() if after.get(name) == state)
    resumed_summary = json.loads((out_dir / "srt_train_summary.json").read_text())
    # the resumed state carries the first run's logs up to the checkpoint; the steps after it are new
    resumed = [e for e in train_logs(out_dir) if e["step"] > s.zero3_save]
    pairs = [(a["loss"], b["loss"]) for a in full for b in resumed if a["step"] == b["step"]]
    loss_rel = max((abs(a - b) / max(abs(a), 1e-12) for a, b in pairs), default=float("inf"))
    out.update(
        resume_seconds=time.perf_counter() - start,
        resumed_from=resumed_summary.get("resumed_from"),
        resumed_first_step=resumed[0]["step"] if resumed else None,
        resumed_final_step=resumed_summary["global_step"],
        resume_score_shards=len(shards),
        resume_reused_score_shards=reused,
        resume_rescored_shards=len(after) - reused,
        resume_same_selection=read_rows(out_dir / "selection" / "selected.jsonl") == selected,
        resume_loss_max_rel_diff=loss_rel,
        resume_weights_max_abs_diff=_max_abs_weight_diff(uninterrupted, out_dir),
    )
    out["resume_ok"] = bool(
        str(out["resumed_from"]).endswith(f"checkpoint-{s.zero3_save}")
        and out["resumed_first_step"] == s.zero3_save + 1
        and out["resumed_final_step"] == s.zero3_steps
        and len(pairs) == s.zero3_steps - s.zero3_save
        and reused == len(shards) > 0
        and out["resume_rescored_shards"] == 0
        and out["resume_same_selection"]
        and loss_rel < (1e-6 if ctx.dry else 1e-2)  # bf16 kernels need not be bitwise deterministic across runs
    )
    return out
