"""The peers' step: vLLM's engine getting the four views' prompt log-probabilities (what a vLLM user would do for
IFD) against the scorer, on the same rows and small student in one process. A measured peer, not a path of the
package; it runs where vLLM is installed and otherwise records why it did not (the GPU machine has no vLLM, and a
CUDA build of it is far larger than what travels with the code)."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

from gpu_check.steps.base import StepContext, device, max_rel, small_student
from gpu_check.steps.scoring import MAX_LENGTH, _views

NOT_INSTALLED = (
    "vllm is not installed on this machine: the GPU machine has none (a CUDA build is several hundred MB, over what "
    "travels with the code), and the check's CPU dry run runs in the main environment; measured on the CPU in "
    "benchmarks/RESULTS.md (`.venv-vllm/bin/python benchmarks/bench_scoring.py`)"
)


def _folder(model: Any, tokenizer: Any, weights: str, work: Path) -> str:
    """A folder vLLM can load with the weights the scorer runs: the embedded student's cache, or the random
    weights saved once."""
    if weights == "embedded weights":
        from srt_trainer.models import resolve_model_path

        return resolve_model_path("embedded")
    folder = work / "smollm2_random"
    if not (folder / "config.json").is_file():
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return str(folder)


def step_scoring_vllm(ctx: StepContext) -> dict[str, Any]:
    """The scorer (its default engine) and vLLM's prompt log-probabilities on the same rows, student and dtype:
    tokens/s of each, their ratio, the engine's start, and how far vLLM's statistics are from the scorer's."""
    if importlib.util.find_spec("vllm") is None:
        return {
            "skipped": NOT_INSTALLED,
            "vllm_vs_scorer": None,
            "vllm_vs_scorer_reason": NOT_INSTALLED,
            "vllm_ifd_max_rel": None,
            "vllm_ifd_max_rel_reason": NOT_INSTALLED,
        }
    import bench_scoring as bench
    from vllm import __version__ as vllm_version

    from srt_trainer.templates import get_template

    s, on, template = ctx.sizes, device(), get_template("vicuna")
    rows = ctx.rows(s.scorer_rows, s.shortest_rows)
    model, tokenizer, weights = small_student(ctx.assets, ctx.dtype, on)
    views = _views(tokenizer, template, rows)
    out: dict[str, Any] = {"vllm": vllm_version, "weights": weights, "dtype": ctx.dtype, "rows": len(rows)}
    r = bench.measure_scorer(model, tokenizer, template, rows, views, MAX_LENGTH, on, "auto", None, s.warmup_rows)
    scores = r.pop("scores")
    out["tokens"] = r["tokens"]
    out["scorer"] = {"engine": r["engine"], "seconds": r["seconds"], "tokens_per_s": r["tokens"] / r["seconds"]}
    ctx.record(**out)

    folder = _folder(model, tokenizer, weights, ctx.work)
    del model
    # eager: the views are prompts alone (no decoding for graphs to speed up); on a GPU half its memory, since the
    # scorer's student was there first
    options = {"enforce_eager": True} | ({"gpu_memory_utilization": 0.5} if on == "cuda" else {})
    llm, started = bench.vllm_engine(folder, ctx.dtype, on, MAX_LENGTH, options)
    out["engine_start_seconds"] = started
    ctx.record(**out)
    start = time.perf_counter()
    v = bench.measure_vllm(llm, rows, views, s.warmup_rows)
    out["vllm_seconds_with_warmup"] = time.perf_counter() - start
    out["vllm_engine"] = {"seconds": v["seconds"], "tokens_per_s": v["tokens"] / v["seconds"]}
    out["vllm_vs_scorer"] = out["vllm_engine"]["tokens_per_s"] / out["scorer"]["tokens_per_s"]
    out["vllm_ifd_max_rel"] = max_rel(v["scores"], scores)
    if weights == "embedded weights":
        out["vllm_spearman_ifd"] = bench.spearman([x["ifd"] for x in v["scores"]], [x["ifd"] for x in scores])
    ctx.record(**out)
    llm.llm_engine.engine_core.shutdown()
    return out
