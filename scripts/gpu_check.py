"""The one-call GPU check: scoring speed, DeepSpeed / LoRA / QLoRA training with resume, and evaluation on CUDA.

Run through ``scripts/gpu_check.sh`` (which installs the carried wheels first). Every step runs in its own process
with a hard time limit, so one that fails or hangs leaves the others their time; each writes its numbers to
``WORK/results/STEP.json`` and the driver folds them into one report, ``OUT/gpu_report.json`` (machine-readable,
``null`` with a ``*_reason`` beside every number a step could not give) and ``OUT/gpu_report.md``.

    python scripts/gpu_check.py prepare --assets .gpu_check     # tokenizers, configs and real rows to carry
    python scripts/gpu_check.py run --assets .gpu_check --out DIR [--dry-run]

``--dry-run`` runs the same steps on the CPU with tiny shapes and few rows, so the check is exercised in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SRT_SHARED_DATA", REPO.parent / "shared" / "data"))
ALPACA = "cherry_alpaca_5_percent.json"
EVAL_SET = "vicuna_test_set.jsonl"
LLAMA2_VOCAB = 32000

# Llama-shaped students built with random weights on the GPU machine (no hub there): the 7B body is Llama-2-7B's,
# the 1B one TinyLlama-1.1B's (grouped-query attention); both with a 32k vocabulary, as Llama-2.
SHAPES: dict[str, dict[str, Any]] = {
    "llama2-7b": {
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
    },
    "llama-1b": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
    },
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
}


@dataclass(frozen=True)
class Sizes:
    """How much work each step does: the GPU check's sizes, or the dry run's."""

    loop_rows: int
    scorer_rows: int
    spearman_rows: int
    rows_7b: int
    padded_rows_7b: int
    shape_7b: str
    shape_1b: str
    zero3_steps: int
    zero3_save: int
    adapter_steps: int
    per_device_batch: int
    global_batch: int | None  # None: the recipe's (the paper's 128)
    max_length: int | None  # None: the recipe's (the paper's 2048)
    eval_items: int
    eval_new_tokens: int
    limits: dict[str, int]


GPU = Sizes(
    loop_rows=100,
    scorer_rows=1000,
    spearman_rows=200,
    rows_7b=2000,
    padded_rows_7b=200,
    shape_7b="llama2-7b",
    shape_1b="llama-1b",
    zero3_steps=10,
    zero3_save=6,
    adapter_steps=3,
    per_device_batch=16,
    global_batch=None,
    max_length=None,
    eval_items=32,
    eval_new_tokens=128,
    limits={
        "prepare": 45,
        "scoring_small": 90,
        "scoring_7b": 100,
        "train_lora": 60,
        "eval": 75,
        "train_qlora": 60,
        "train_zero3": 260,
    },
)
DRY = Sizes(
    loop_rows=4,
    scorer_rows=16,
    spearman_rows=16,
    rows_7b=12,
    padded_rows_7b=12,
    shape_7b="tiny",
    shape_1b="tiny",
    zero3_steps=4,
    zero3_save=3,
    adapter_steps=2,
    per_device_batch=2,
    global_batch=4,
    max_length=128,
    eval_items=4,
    eval_new_tokens=8,
    limits={
        "prepare": 300,
        "scoring_small": 400,
        "scoring_7b": 200,
        "train_zero3": 500,
        "train_lora": 300,
        "train_qlora": 300,
        "eval": 200,
    },
)
# Whole-check deadline: steps after it are skipped (reported as not run) so the call ends in time.
DEADLINE_S = {"gpu": 470, "dry": 2400}
# ZeRO-3 with resume (two launches, three checkpoints of a 1B student) is the longest: it goes last and gets what
# time is left, so a slow disk cannot cost the other steps their numbers.
STEPS = ("prepare", "scoring_small", "scoring_7b", "train_lora", "eval", "train_qlora", "train_zero3")
VERSIONED = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed", "bitsandbytes", "pyarrow")


# -- assets: what the GPU machine cannot fetch -------------------------------------------------------------------


def truncate_bpe(tokenizer_json: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    """A byte-level BPE tokenizer cut to its first ``vocab_size`` ids: a merge is kept only where its result keeps
    its id. BPE ids follow merge order, so every kept token is still reachable and the cut tokenizer is a real
    (slightly less compact) tokenizer of that vocabulary size."""
    out = json.loads(json.dumps(tokenizer_json))
    model = out["model"]
    model["vocab"] = {tok: i for tok, i in model["vocab"].items() if i < vocab_size}
    merges = []
    for merge in model["merges"]:
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        if left + right in model["vocab"]:
            merges.append(merge)
    model["merges"] = merges
    out["added_tokens"] = [t for t in out["added_tokens"] if t["id"] < vocab_size]
    return out


def prepare_assets(assets: Path, shared_data: Path = SHARED_DATA) -> Path:
    """Write what the check reads into ``assets``: the embedded student's tokenizer and config, a 32k cut of its
    tokenizer for the Llama-shaped students, the real Alpaca rows and one test set."""
    from srt_trainer.models import ensure_embedded_model

    src = ensure_embedded_model()
    small, tok32k, data = assets / "smollm2", assets / "tok32k", assets / "data"
    for folder in (small, tok32k, data):
        folder.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (src / name).is_file():
            shutil.copy(src / name, small / name)
    cut = truncate_bpe(json.loads((src / "tokenizer.json").read_text()), LLAMA2_VOCAB)
    (tok32k / "tokenizer.json").write_text(json.dumps(cut, ensure_ascii=False))
    shutil.copy(src / "tokenizer_config.json", tok32k / "tokenizer_config.json")
    shutil.copy(shared_data / ALPACA, data / ALPACA)
    shutil.copy(shared_data / "eval" / EVAL_SET, data / EVAL_SET)
    return assets


# -- helpers shared by the steps -------------------------------------------------------------------------------

_PARTIAL: dict[str, Any] = {}
_PARTIAL_FILE: list[Path] = []  # set by run_step in the step's process


def record(**values: Any) -> None:
    """Keep numbers a step has measured so far: a step stopped at its time limit still reports them."""
    _PARTIAL.update(values)
    if _PARTIAL_FILE:
        _PARTIAL_FILE[0].write_text(json.dumps(_PARTIAL, indent=2, default=float))


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _rows(assets: Path, n: int) -> list[dict[str, Any]]:
    rows = json.loads((assets / "data" / ALPACA).read_text())
    if n > len(rows):
        raise ValueError(f"{n} rows asked for, {assets / 'data' / ALPACA} has {len(rows)}")
    return rows[:n]


def random_llama(shape: str, dtype: Any, device: str, tokenizer: Any) -> Any:
    """A Llama-architecture causal LM of ``SHAPES[shape]`` with random weights, built directly on ``device``."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **SHAPES[shape],
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def small_student(assets: Path, dtype: str, device: str) -> tuple[Any, Any, str]:
    """The embedded student where its package is installed; else its architecture with random weights (its
    weights do not fit in what travels to the GPU machine). Returns (model, tokenizer, what)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from srt_trainer.models import load_student, load_tokenizer
    from srt_trainer.models.embedded import EmbeddedModelError, find_embedded_gguf

    try:
        find_embedded_gguf()
        return load_student("embedded", dtype=dtype, device=device), load_tokenizer("embedded"), "embedded weights"
    except EmbeddedModelError:
        tokenizer = load_tokenizer(assets / "smollm2")
        config = AutoConfig.from_pretrained(assets / "smollm2")
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype), attn_implementation="sdpa")
        return model.eval(), tokenizer, "random weights (embedded architecture)"


def _bench() -> Any:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_scoring

    return bench_scoring


def _engines() -> list[str]:
    import inspect

    from srt_trainer.scoring.scorer import IFDScorer

    # a scorer without the engine option has only the padded one, which "auto" gives
    return ["padded", "packed"] if "engine" in inspect.signature(IFDScorer).parameters else ["auto"]


def _max_rel(a: list[dict], b: list[dict], keys: tuple[str, ...] = ("ifd", "rifd")) -> float:
    return max(abs(x[k] - y[k]) / abs(y[k]) for x, y in zip(a, b, strict=True) for k in keys)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- steps: each runs in its own process and returns a JSON-able dict -------------------------------------------


def step_prepare(assets: Path, work: Path, sizes: Sizes, dry: bool) -> dict[str, Any]:
    """The ~1B student (random weights, saved once for the training steps) and the real rows they train on."""
    import torch

    from srt_trainer.models import load_tokenizer

    tokenizer = load_tokenizer(assets / "tok32k")
    dtype = torch.float32 if dry else torch.bfloat16
    start = time.perf_counter()
    model = random_llama(sizes.shape_1b, dtype, _device(), tokenizer)
    model.save_pretrained(work / "student_1b")
    tokenizer.save_pretrained(work / "student_1b")
    global_batch = sizes.global_batch or 128
    n = global_batch * sizes.zero3_steps + 8
    with open(work / "train_rows.jsonl", "w") as f:
        for row in _rows(assets, n):
            f.write(json.dumps(row) + "\n")
    return {
        "student_1b_params": sum(p.numel() for p in model.parameters()),
        "train_rows": n,
        "seconds": time.perf_counter() - start,
    }


def step_scoring_small(assets: Path, work: Path, sizes: Sizes, dry: bool) -> dict[str, Any]:
    """The release-style loop against the scorer on the small student in bf16, on the same real rows; the
    packed engine against the padded one in fp32; fp32 against bf16 scores."""
    from srt_trainer.models.precision import float32_products_for
    from srt_trainer.scoring.collator import DataCollatorForIFD
    from srt_trainer.templates import get_template

    bench, device = _bench(), _device()
    template = get_template("vicuna")
    rows = _rows(assets, sizes.scorer_rows)
    model, tokenizer, weights = small_student(assets, "bfloat16", device)
    views = [v for sv in DataCollatorForIFD(tokenizer, template, 2048).views(rows) for v in sv.views]
    loop_rows = rows[: sizes.loop_rows]
    # on a CPU without bf16 kernels the loop's products run in fp32 on the bf16 values, as the scorer's do (a
    # no-op on a GPU); without this the dry run's loop takes minutes on such CPUs
    with float32_products_for(model):
        bench.release_loop(model, tokenizer, template, loop_rows[:2], 2048, device)  # warm-up
        start = time.perf_counter()
        bench.release_loop(model, tokenizer, template, loop_rows, 2048, device)
        loop_rate = len(loop_rows) / (time.perf_counter() - start)
    default = _default_engine(model, tokenizer)
    out: dict[str, Any] = {
        "weights": weights,
        "rows": len(rows),
        "loop_rows": len(loop_rows),
        "tokens": 0,
        "loop_samples_per_s": loop_rate,
        "default_engine": default,
        "engines": {},
    }
    record(**out)
    bf16_scores = {}
    for engine in sorted(_engines(), key=lambda e: e not in (default, "auto")):  # the headline engine first
        r = bench.measure_scorer(model, tokenizer, template, rows, views, 2048, device, engine)
        engine = r["engine"]
        bf16_scores[engine] = r.pop("scores")
        rate = r["samples"] / r["seconds"]
        out["tokens"] = r["tokens"]
        out["engines"][engine] = {
            **r,
            "samples_per_s": rate,
            "tokens_per_s": r["tokens"] / r["seconds"],
            "ratio_vs_loop": rate / loop_rate,
        }
        if engine == default:
            out["loop_ratio"] = out["engines"][default]["ratio_vs_loop"]
        record(**out)

    # fp32: the engines agree (exactness, on this device's kernels) and bf16 ranks the rows as fp32 does
    sub = rows[: sizes.spearman_rows]
    sub_views = [v for v in views if v.sample < len(sub)]
    del model
    model32, _, _ = small_student(assets, "float32", device)
    fp32 = {}
    for engine in _engines():
        r = bench.measure_scorer(model32, tokenizer, template, sub, sub_views, 2048, device, engine)
        fp32[r["engine"]] = r["scores"]
    if "packed" in fp32:
        out["packed_vs_padded_fp32_max_rel"] = _max_rel(fp32["packed"], fp32["padded"])
    else:
        out["packed_vs_padded_fp32_max_rel"] = None
        out["packed_vs_padded_fp32_max_rel_reason"] = "this scorer has no packed engine"
    if weights == "embedded weights":
        ifd32 = [s["ifd"] for s in fp32[default]]
        ifd16 = [s["ifd"] for s in bf16_scores[default][: len(sub)]]
        out["spearman_fp32_bf16"] = bench.spearman(ifd16, ifd32)
    else:
        out["spearman_fp32_bf16"] = None
        out["spearman_fp32_bf16_reason"] = (
            "the embedded weights (98 MB) cannot travel to the GPU machine; random weights give near-constant IFD, "
            "whose ranks mean nothing (measured on the CPU: benchmarks/RESULTS.md)"
        )
    return out


def _default_engine(model: Any, tokenizer: Any) -> str:
    from srt_trainer.scoring.scorer import IFDScorer

    return getattr(IFDScorer(model, tokenizer, "vicuna"), "engine", "padded")


def step_scoring_7b(assets: Path, work: Path, sizes: Sizes, dry: bool) -> dict[str, Any]:
    """The scorer on a Llama-2-7B-shaped student (random bf16 weights): tokens/s, peak memory and model-FLOPs
    utilization against a bf16 matmul measured in the same process."""
    import torch

    from srt_trainer.models import load_tokenizer
    from srt_trainer.scoring.collator import DataCollatorForIFD
    from srt_trainer.templates import get_template

    bench, device = _bench(), _device()
    peak = bench.matmul_peak(torch.bfloat16, device, n=1024 if dry else 8192, reps=3 if dry else 20)
    tokenizer = load_tokenizer(assets / "tok32k")
    template = get_template("vicuna")
    start = time.perf_counter()
    model = random_llama(sizes.shape_7b, torch.bfloat16, device, tokenizer)
    built = time.perf_counter() - start
    rows = _rows(assets, sizes.rows_7b)
    views = [v for sv in DataCollatorForIFD(tokenizer, template, 2048).views(rows) for v in sv.views]
    out: dict[str, Any] = {
        "shape": sizes.shape_7b,
        "params": sum(p.numel() for p in model.parameters()),
        "build_seconds": built,
        "matmul_peak_tflops": peak / 1e12,
        "engines": {},
    }
    default = _default_engine(model, tokenizer)
    for engine in sorted(_engines(), key=lambda e: e not in (default, "auto")):  # the headline engine first
        n = sizes.rows_7b if engine in (default, "auto") else min(sizes.padded_rows_7b, sizes.rows_7b)
        sub_views = [v for v in views if v.sample < n]
        r = bench.measure_scorer(model, tokenizer, template, rows[:n], sub_views, 2048, device, engine)
        r.pop("scores")
        out["engines"][r["engine"]] = {
            **r,
            "samples_per_s": r["samples"] / r["seconds"],
            "tokens_per_s": r["tokens"] / r["seconds"],
            "mfu": r["flops"] / r["seconds"] / peak,
        }
        if r["engine"] == default:
            out["mfu_7b"] = out["engines"][default]["mfu"]
            out["tokens_per_s"] = out["engines"][default]["tokens_per_s"]
            out["peak_memory_gib"] = out["engines"][default]["peak_memory_gib"]
        record(default_engine=default, **out)
    out["default_engine"] = default
    return out


def _recipe_command(
    config: str, launcher: list[str], work: Path, out_dir: Path, sizes: Sizes, dry: bool, extra: list[str]
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *launcher,
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--main_process_port",
        str(_free_port()),
        "--dynamo_backend",
        "no",
    ]
    if dry:
        cmd += ["--mixed_precision", "no"]
    cmd += [
        str(REPO / "recipes" / "sft_7b.py"),
        "--config",
        str(REPO / config),
        "--model_name_or_path",
        str(work / "student_1b"),
        "--dataset",
        str(work / "train_rows.jsonl"),
        "--ori_data",
        "null",
        "--q_data",
        "null",
        "--a_data",
        "null",
        "--qa_data",
        "null",
        "--output_dir",
        str(out_dir),
        "--per_device_train_batch_size",
        str(sizes.per_device_batch),
        "--logging_steps",
        "1",
        "--report_to",
        "none",
        "--seed",
        "42",
    ]
    if sizes.global_batch:
        cmd += ["--global_batch_size", str(sizes.global_batch)]
    if sizes.max_length:
        cmd += ["--max_length", str(sizes.max_length)]
    if dry:  # bf16 training on a CPU runs reference kernels: slow, and not what the dry run checks
        cmd += ["--bf16", "false", "--dtype", "float32"]
    return cmd + extra


def _launch(cmd: list[str], log: Path) -> None:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    with open(log, "w") as f:
        res = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if res.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"exit {res.returncode}: {' '.join(cmd[:8])} ...\n{tail}")


def _train_logs(out_dir: Path) -> list[dict[str, Any]]:
    states = sorted(out_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    state = (
        json.loads((out_dir / "trainer_state.json").read_text())
        if (out_dir / "trainer_state.json").is_file()
        else json.loads(states[-1].read_text())
    )
    return [e for e in state["log_history"] if "loss" in e]


def _throughput(logs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean step time, tokens/s over the timed steps and peak memory, from the per-step training logs."""
    timed = [e for e in logs if "step_seconds" in e]
    out: dict[str, Any] = {"steps": len(logs), "final_loss": logs[-1]["loss"] if logs else None}
    if len(timed) >= 2:
        # the first step carries start-up work (allocations, kernel selection): time the rest
        steady = timed[1:]
        tokens = steady[-1]["num_tokens"] - timed[0]["num_tokens"]
        out["step_seconds"] = sum(e["step_seconds"] for e in steady) / len(steady)
        out["tokens_per_s"] = tokens / sum(e["step_seconds"] for e in steady)
    out["max_memory_gib"] = max((e.get("max_memory_gib", 0.0) for e in logs), default=None) or None
    if out["max_memory_gib"] is None:
        out["max_memory_gib_reason"] = "the trainer logs peak memory on CUDA devices only"
    return out


def step_train_zero3(assets: Path, work: Path, sizes: Sizes, dry: bool) -> dict[str, Any]:
    """``accelerate launch`` with the ZeRO-3 config and the full fine-tuning recipe, saving one checkpoint midway;
    then, with the run's final outputs removed (a run killed after that checkpoint), the same command with
    ``--resume_from_checkpoint auto``: the resumed steps must repeat the uninterrupted run's losses."""
    _wait_for_deepspeed(work)
    out_dir = work / "zero3"
    launcher = ["--config_file", str(REPO / "accelerate_configs" / "deepspeed_zero3.yaml")]
    extra = ["--max_steps", str(sizes.zero3_steps), "--save_steps", str(sizes.zero3_save), "--save_total_limit", "3"]
    cmd = _recipe_command("recipes/llama2-7b/sft/config_full.yaml", launcher, work, out_dir, sizes, dry, extra)
    start = time.perf_counter()
    _launch(cmd, work / "logs" / "train_zero3.run1.log")
    first_seconds = time.perf_counter() - start
    full = _train_logs(out_dir)
    out: dict[str, Any] = {
        "zero3_ok": len(full) == sizes.zero3_steps,
        **_throughput(full),
        "run_seconds": first_seconds,
    }
    record(**out)
    # the killed run: nothing after the midway checkpoint was written (the trainer also checkpoints the last step;
    # that one goes, the final model and state are kept aside for the comparison)
    shutil.rmtree(out_dir / f"checkpoint-{sizes.zero3_steps}", ignore_errors=True)
    uninterrupted = out_dir / "uninterrupted"
    uninterrupted.mkdir()
    for path in [out_dir / "trainer_state.json", *out_dir.glob("model*.safetensors*")]:
        if path.exists():
            path.rename(uninterrupted / path.name)
    _launch([*cmd, "--resume_from_checkpoint", "auto"], work / "logs" / "train_zero3.resume.log")
    # the resumed state carries the first run's logs up to the checkpoint; the steps after it are new
    resumed = [e for e in _train_logs(out_dir) if e["step"] > sizes.zero3_save]
    summary = json.loads((out_dir / "srt_train_summary.json").read_text())
    first_resumed = resumed[0]["step"] if resumed else None
    pairs = [(a["loss"], b["loss"]) for a in full for b in resumed if a["step"] == b["step"]]
    rel = max((abs(a - b) / max(abs(a), 1e-12) for a, b in pairs), default=math.inf)
    out.update(
        resumed_from=summary.get("resumed_from"),
        resumed_first_step=first_resumed,
        resumed_final_step=summary.get("global_step"),
        resume_loss_max_rel_diff=rel,
        resume_ok=bool(
            str(summary.get("resumed_from", "")).endswith(f"checkpoint-{sizes.zero3_save}")
            and first_resumed == sizes.zero3_save + 1
            and summary.get("global_step") == sizes.zero3_steps
            and len(pairs) == sizes.zero3_steps - sizes.zero3_save
            and rel < 1e-2  # bf16 kernels need not be bitwise deterministic across processes
        ),
    )
    from safetensors.torch import load_file

    diffs = []
    for path in sorted(uninterrupted.glob("model*.safetensors")):
        a, b = load_file(path), load_file(out_dir / path.name)
        diffs += [(a[k].float() - b[k].float()).abs().max().item() for k in a]
    out["resume_weights_max_abs_diff"] = max(diffs) if diffs else None
    return out


def _adapter_step(config: str, work: Path, sizes: Sizes, dry: bool, name: str) -> dict[str, Any]:
    out_dir = work / name
    launcher = ["--config_file", str(REPO / "accelerate_configs" / "multi_gpu.yaml")]
    extra = ["--max_steps", str(sizes.adapter_steps), "--save_strategy", "no"]
    start = time.perf_counter()
    _launch(_recipe_command(config, launcher, work, out_dir, sizes, dry, extra), work / "logs" / f"{name}.log")
    logs = _train_logs(out_dir)
    ok = len(logs) == sizes.adapter_steps and (out_dir / "adapter_model.safetensors").is_file()
    return {"ok": ok, **_throughput(logs), "run_seconds": time.perf_counter() - start}


def step_train_lora(assets: Path, work: Path, sizes: Sizes, dry: bool) -> dict[str, Any]:
    """The LoRA recipe (bf16 base, adapters on every linear layer) for a few steps; its adapter feeds ``eval``."""
    return _adapter_step("recipes/llama2-7b/sft/config_lora.yaml", work, sizes, dry, "train_lora")


def step_train_qlora(assets: Path, work: Path, sizes: Sizes, dry: bool) -> dict[str, Any]:
    """The QLoRA recipe (bitsandbytes 4-bit NF4 base) for a few steps."""
    return _adapter_step("recipes/llama2-7b/sft/config_qlora.yaml", work, sizes, dry, "train_qlora")


def step_eval(assets: Path, work: Path, sizes: Sizes, dry: bool) -> dict[str, Any]:
    """``srt eval generate`` from the LoRA adapter on a slice of a test set: generated tokens per second."""
    from srt_trainer.models import load_tokenizer

    adapter = work / "train_lora"
    if not (adapter / "adapter_model.safetensors").is_file():
        raise RuntimeError("no LoRA adapter: the train_lora step did not finish")
    output = work / "eval" / "answers.jsonl"
    batch = max(1, sizes.eval_items // 2)  # two shards: the log shows progress midway
    cmd = [
        sys.executable,
        "-m",
        "srt_trainer.cli",
        "eval",
        "generate",
        "--test_sets",
        str(assets / "data" / EVAL_SET),
        "--output",
        str(output),
        "--model",
        str(work / "student_1b"),
        "--adapter",
        str(adapter),
        "--limit",
        str(sizes.eval_items),
        "--batch_size",
        str(batch),
        "--shard_size",
        str(batch),
        "--max_new_tokens",
        str(sizes.eval_new_tokens),
        "--dtype",
        "float32" if dry else "bfloat16",
    ]
    _launch(cmd, work / "logs" / "eval.log")
    summary = json.loads(output.with_name("answers.summary.json").read_text())
    tokenizer = load_tokenizer(work / "student_1b")
    answers = [json.loads(line)["output"] for line in output.read_text().splitlines()]
    tokens = sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
    return {
        "ok": len(answers) == sizes.eval_items,
        "answers": len(answers),
        "generated_tokens": tokens,
        "seconds": summary["seconds"],
        "tokens_per_s": tokens / summary["seconds"],
    }


def _wait_for_deepspeed(work: Path, timeout: float = 240) -> None:
    """The wrapper builds DeepSpeed in the background while scoring runs; wait for it (or its failure)."""
    marker = work / "deepspeed_install.rc"
    if not (work / "deepspeed_install.pending").exists():
        return
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("DeepSpeed was still building after 240 s")
        time.sleep(1)
    if marker.read_text().strip() != "0":
        log = work / "logs" / "deepspeed_install.log"
        raise RuntimeError(f"DeepSpeed did not install:\n{log.read_text()[-2000:] if log.is_file() else ''}")


STEP_FUNCTIONS = {
    "prepare": step_prepare,
    "scoring_small": step_scoring_small,
    "scoring_7b": step_scoring_7b,
    "train_zero3": step_train_zero3,
    "train_lora": step_train_lora,
    "train_qlora": step_train_qlora,
    "eval": step_eval,
}


def run_step(name: str, assets: Path, work: Path, dry: bool) -> int:
    """Child-process entry: run one step and write its result (or its error) as JSON."""
    sizes = DRY if dry else GPU
    result_file = work / "results" / f"{name}.json"
    _PARTIAL_FILE.append(work / "results" / f"{name}.partial.json")
    try:
        result = {"ok": True, **STEP_FUNCTIONS[name](assets, work, sizes, dry)}
    except Exception as e:  # the report says why; the driver goes on with the next step
        import traceback

        result = {
            **_PARTIAL,
            "ok": False,
            "error": f"{type(e).__name__}: {e}"[-2000:],
            "traceback": traceback.format_exc()[-4000:],
        }
    result_file.write_text(json.dumps(result, indent=2, default=float))
    return 0 if result["ok"] else 1


# -- the driver ------------------------------------------------------------------------------------------------


class MemorySampler:
    """Peak memory while a step runs: GPU memory in use (nvidia-smi) on a GPU machine, else the resident memory
    of the step's process tree."""

    def __init__(self, pid: int, gpu: bool, every: float = 0.5) -> None:
        self.pid, self.gpu, self.every, self.peak_gib = pid, gpu, every, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> float:
        if self.gpu:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
            return max(float(x) for x in out.split()) / 1024
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        total = 0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total / 2**30

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.peak_gib = max(self.peak_gib, self._sample())
            self._stop.wait(self.every)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_gib


def _drive_step(name: str, assets: Path, work: Path, dry: bool, limit: float, gpu: bool) -> dict[str, Any]:
    log = work / "logs" / f"{name}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "_step", name, "--assets", str(assets), "--work", str(work)]
    if dry:
        cmd.append("--dry-run")
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
        sampler = MemorySampler(proc.pid, gpu)
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the step and every process it launched
            proc.wait()
        peak = sampler.stop()
    seconds = time.perf_counter() - start
    result_file = work / "results" / f"{name}.json"
    partial_file = work / "results" / f"{name}.partial.json"
    partial = json.loads(partial_file.read_text()) if partial_file.is_file() else {}
    if result_file.is_file():
        result = json.loads(result_file.read_text())
    elif seconds >= limit:
        result = {**partial, "ok": False, "error": f"stopped at its time limit of {limit:.0f} s"}
    else:
        result = {**partial, "ok": False, "error": f"exited {proc.returncode} without a result: see {log.name}"}
    result["wall_seconds"] = seconds
    result["peak_memory_gib_sampled"] = peak
    return result


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


@functools.cache
def _device_info() -> dict[str, Any]:
    """The machine, read without creating a CUDA context in the driver (it would hold memory all along)."""
    if shutil.which("nvidia-smi"):
        query = "name,memory.total,driver_version"
        res = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if res.returncode == 0 and res.stdout.strip():
            name, memory, driver = (x.strip() for x in res.stdout.splitlines()[0].split(","))
            return {"kind": "cuda", "name": name, "memory_gib": float(memory) / 1024, "driver": driver}
    return {"kind": "cpu", "name": platform.processor() or platform.machine(), "cores": os.cpu_count()}


def _value(results: dict[str, dict], step: str, *path: str) -> tuple[Any, str | None]:
    """A number from a step's result, or None with the reason it is missing."""
    r = results.get(step)
    if r is None:
        return None, f"step {step} did not run (the check's deadline passed)"
    failure = None if r.get("ok") else f"step {step} failed: {r.get('error', '?').splitlines()[0][:300]}"
    node: Any = r
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None, failure or f"step {step} gave no {'.'.join(path)}"
        node = node[key]
    if node is None:
        return None, failure or r.get(f"{path[-1]}_reason", f"step {step} gave no {'.'.join(path)}")
    # measured before the step failed: kept, with the failure beside it
    return node, failure and f"measured before {failure}"


def build_report(results: dict[str, dict], dry: bool, started: float) -> dict[str, Any]:
    """The report: headline numbers (each null with a ``*_reason`` beside it when missing) and every step's
    full result."""
    report: dict[str, Any] = {
        "device": "cpu" if dry else _device_info().get("name"),
        "device_info": _device_info(),
        "dry_run": dry,
        "versions": _versions(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "seconds": time.perf_counter() - started,
    }
    headline = {
        "scoring": {
            "loop_ratio": ("scoring_small", "loop_ratio"),
            "default_engine": ("scoring_small", "default_engine"),
            "packed_vs_padded_fp32_max_rel": ("scoring_small", "packed_vs_padded_fp32_max_rel"),
            "spearman_fp32_bf16": ("scoring_small", "spearman_fp32_bf16"),
            "mfu_7b": ("scoring_7b", "mfu_7b"),
            "tokens_per_s_7b": ("scoring_7b", "tokens_per_s"),
            "peak_memory_gib_7b": ("scoring_7b", "peak_memory_gib"),
            "matmul_peak_tflops": ("scoring_7b", "matmul_peak_tflops"),
        },
        "training": {
            "zero3_ok": ("train_zero3", "zero3_ok"),
            "resume_ok": ("train_zero3", "resume_ok"),
            "zero3_step_seconds": ("train_zero3", "step_seconds"),
            "zero3_tokens_per_s": ("train_zero3", "tokens_per_s"),
            "zero3_max_memory_gib": ("train_zero3", "max_memory_gib"),
            "lora_ok": ("train_lora", "ok"),
            "lora_step_seconds": ("train_lora", "step_seconds"),
            "lora_tokens_per_s": ("train_lora", "tokens_per_s"),
            "lora_max_memory_gib": ("train_lora", "max_memory_gib"),
            "qlora_ok": ("train_qlora", "ok"),
            "qlora_step_seconds": ("train_qlora", "step_seconds"),
            "qlora_tokens_per_s": ("train_qlora", "tokens_per_s"),
            "qlora_max_memory_gib": ("train_qlora", "max_memory_gib"),
        },
        "eval": {"ok": ("eval", "ok"), "tokens_per_s": ("eval", "tokens_per_s")},
    }
    for section, keys in headline.items():
        report[section] = {}
        for key, (step, path) in keys.items():
            value, reason = _value(results, step, path)
            report[section][key] = value
            if reason:
                report[section][f"{key}_reason"] = reason
    report["steps"] = results
    return report


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    """The report for people: one table per section, then each step's time and status."""
    lines = [
        f"# GPU check: {report['device']}",
        "",
        f"{report['date']}, {report['seconds']:.0f} s, dry run: {str(report['dry_run']).lower()}",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        "",
    ]
    for section in ("scoring", "training", "eval"):
        lines += [f"## {section}", "", "| measure | value | note |", "| --- | --- | --- |"]
        for key, value in report[section].items():
            if not key.endswith("_reason"):
                lines.append(f"| {key} | {_fmt(value)} | {report[section].get(key + '_reason', '')} |")
        lines.append("")
    lines += [
        "## steps",
        "",
        "| step | ok | seconds | peak memory GiB (sampled) | error |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in report["steps"].items():
        error = (r.get("error") or "").splitlines()[0][:200] if r.get("error") else ""
        lines.append(
            f"| {name} | {_fmt(r.get('ok'))} | {r.get('wall_seconds', 0):.0f} | "
            f"{r.get('peak_memory_gib_sampled', 0):.1f} | {error} |"
        )
    return "\n".join(lines) + "\n"


def run_check(assets: Path, out: Path, work: Path, dry: bool, steps: list[str]) -> dict[str, Any]:
    """Run ``steps`` in order, each in its own process under its time limit, and write the report."""
    sizes = DRY if dry else GPU
    started = time.perf_counter()
    deadline = started + DEADLINE_S["dry" if dry else "gpu"]
    for folder in (out, work / "results", work / "logs"):
        folder.mkdir(parents=True, exist_ok=True)
    gpu = not dry and shutil.which("nvidia-smi") is not None
    results: dict[str, dict] = {}
    report: dict[str, Any] = {}
    for name in steps:
        left = deadline - time.perf_counter()
        if left < 10:
            continue
        limit = min(sizes.limits[name], left)
        results[name] = _drive_step(name, assets, work, dry, limit, gpu)
        status = "ok" if results[name].get("ok") else f"FAILED: {results[name].get('error', '').splitlines()[0]}"
        print(f"[{time.perf_counter() - started:6.0f} s] {name}: {status}", flush=True)
        # written after every step: a check cut short by its caller still leaves what it measured
        report = _write_report(results, dry, started, out, work)
    return report


def _write_report(results: dict[str, dict], dry: bool, started: float, out: Path, work: Path) -> dict[str, Any]:
    report = build_report(results, dry, started)
    (out / "gpu_report.json").write_text(json.dumps(report, indent=2, default=float))
    (out / "gpu_report.md").write_text(markdown(report))
    with tarfile.open(out / "gpu_check_logs.tar.gz", "w:gz") as tar:
        tar.add(work / "logs", arcname="logs")
        tar.add(work / "results", arcname="results")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write the assets the GPU machine cannot fetch")
    p.add_argument("--assets", type=Path, required=True)
    r = sub.add_parser("run", help="run the check and write the report")
    r.add_argument("--assets", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True, help="where gpu_report.json / .md and the logs go")
    r.add_argument("--work", type=Path, default=None, help="scratch folder (default: OUT/../gpu_check_work)")
    r.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, few rows")
    r.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of: " + ", ".join(STEPS))
    s = sub.add_parser("_step")
    s.add_argument("name", choices=STEPS)
    s.add_argument("--assets", type=Path, required=True)
    s.add_argument("--work", type=Path, required=True)
    s.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    if args.command == "prepare":
        print(f"assets written to {prepare_assets(args.assets)}")
        return 0
    if args.command == "_step":
        return run_step(args.name, args.assets.resolve(), args.work.resolve(), args.dry_run)
    steps = [s for s in args.steps.split(",") if s]
    unknown = set(steps) - set(STEPS)
    if unknown:
        ap.error(f"unknown step(s): {', '.join(sorted(unknown))}")
    work = (args.work or args.out.resolve().parent / "gpu_check_work").resolve()
    report = run_check(args.assets.resolve(), args.out.resolve(), work, args.dry_run, steps)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
