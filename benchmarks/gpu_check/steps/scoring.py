"""The scoring steps: the release's one-sample loop against ``IFDScorer`` on the small student, and the scorer's
model-FLOPs utilization on a Llama-2-7B-shaped one (padded, packed under sdpa, packed under flex attention) with a
profile of where its time goes."""

from __future__ import annotations

import time
from typing import Any

from gpu_check.steps.base import StepContext, device, max_rel, random_llama, small_student

ENGINES = ("packed", "padded")
MAX_LENGTH = 2048  # the release's truncation length


def _views(tokenizer: Any, template: Any, rows: list[dict[str, Any]]) -> list[Any]:
    from srt_trainer.scoring.collator import DataCollatorForIFD

    return [v for sv in DataCollatorForIFD(tokenizer, template, MAX_LENGTH).views(rows) for v in sv.views]


def _engine_order(model: Any, tokenizer: Any) -> list[str]:
    """Both engines, the one ``auto`` picks (the headline) first."""
    from srt_trainer.scoring.scorer import IFDScorer

    default = IFDScorer(model, tokenizer, "vicuna").engine
    return [default, *(e for e in ENGINES if e != default)]


def step_scoring_small(ctx: StepContext) -> dict[str, Any]:
    """The release-style loop against the scorer on the small student in bf16, on the same real rows; the packed
    engine against the padded one in fp32; fp32 against bf16 ranks."""
    import bench_scoring as bench

    from srt_trainer.models.precision import float32_products_for
    from srt_trainer.scoring.scorer import IFDScorer
    from srt_trainer.templates import get_template

    s, on, template = ctx.sizes, device(), get_template("vicuna")
    rows = ctx.rows(s.scorer_rows, s.shortest_rows)
    model, tokenizer, weights = small_student(ctx.assets, "bfloat16", on)
    views = _views(tokenizer, template, rows)
    loop_rows = rows[: s.loop_rows]
    # on a CPU without bf16 kernels the loop's products run in fp32 on the bf16 values, as the scorer's do (a
    # no-op on a GPU); without this the loop takes minutes on such CPUs
    with float32_products_for(model):
        bench.release_loop(model, tokenizer, template, loop_rows[: s.warmup_rows], MAX_LENGTH, on)
        start = time.perf_counter()
        bench.release_loop(model, tokenizer, template, loop_rows, MAX_LENGTH, on)
        loop_rate = len(loop_rows) / (time.perf_counter() - start)
    engines = _engine_order(model, tokenizer)
    out: dict[str, Any] = {
        "weights": weights,
        "rows": len(rows),
        "loop_rows": len(loop_rows),
        "loop_samples_per_s": loop_rate,
        "default_engine": engines[0],
        "engines": {},
    }
    ctx.record(**out)
    bf16_scores = {}
    for engine in engines[: s.timed_engines]:
        r = bench.measure_scorer(model, tokenizer, template, rows, views, MAX_LENGTH, on, engine, None, s.warmup_rows)
        bf16_scores[engine] = r.pop("scores")
        rate = r["samples"] / r["seconds"]
        out["tokens"] = r["tokens"]
        out["engines"][engine] = {
            **r,
            "samples_per_s": rate,
            "tokens_per_s": r["tokens"] / r["seconds"],
            "ratio_vs_loop": rate / loop_rate,
        }
        out.setdefault("loop_ratio", out["engines"][engine]["ratio_vs_loop"])  # the default engine's
        ctx.record(**out)

    # fp32: the engines agree (exactness, on this device's kernels), and bf16 ranks the rows as fp32 does
    sub = rows[: s.fp32_rows]
    del model
    model32, _, _ = small_student(ctx.assets, "float32", on)
    fp32 = {e: IFDScorer(model32, tokenizer, template, max_length=MAX_LENGTH, engine=e).score(sub) for e in ENGINES}
    out["packed_vs_padded_fp32_max_rel"] = max_rel(fp32["packed"], fp32["padded"])
    if weights == "embedded weights":
        ifd32 = [r["ifd"] for r in fp32[engines[0]]]
        ifd16 = [r["ifd"] for r in bf16_scores[engines[0]][: len(sub)]]
        out["spearman_fp32_bf16"] = bench.spearman(ifd16, ifd32)
        out["spearman_rows"] = len(sub)
    else:
        out["spearman_fp32_bf16"] = None
        out["spearman_fp32_bf16_reason"] = (
            "the embedded weights (98 MB) cannot travel to the GPU machine; random weights give near-constant IFD, "
            "whose ranks mean nothing (measured on the CPU: benchmarks/RESULTS.md)"
        )
    return out


def step_scoring_7b(ctx: StepContext) -> dict[str, Any]:
    """The scorer on a Llama-2-7B-shaped student (random bf16 weights): tokens/s, peak memory and model-FLOPs
    utilization against a bf16 matmul measured in the same process, and a profile of where the time goes."""
    import bench_scoring as bench
    import torch

    from srt_trainer.models import load_tokenizer
    from srt_trainer.templates import get_template

    s, on, template = ctx.sizes, device(), get_template("vicuna")
    peak = bench.matmul_peak(torch.bfloat16, on, n=s.matmul_n, reps=s.matmul_reps)
    tokenizer = load_tokenizer(ctx.assets / "tok32k")
    start = time.perf_counter()
    model = random_llama(s.shape_7b, torch.bfloat16, on, tokenizer)
    out: dict[str, Any] = {
        "shape": s.shape_7b,
        "params": sum(p.numel() for p in model.parameters()),
        "build_seconds": time.perf_counter() - start,
        "matmul_peak_tflops": peak / 1e12,
        "engines": {},
    }
    rows = ctx.rows(s.rows_7b, s.shortest_rows)
    views = _views(tokenizer, template, rows)
    engines = _engine_order(model, tokenizer)
    out["default_engine"] = engines[0]
    for engine in engines:
        n = s.rows_7b if engine == engines[0] else min(s.padded_rows_7b, s.rows_7b)
        sub_views = [v for v in views if v.sample < n]
        r = bench.measure_scorer(
            model, tokenizer, template, rows[:n], sub_views, MAX_LENGTH, on, engine, None, s.warmup_rows
        )
        r.pop("scores")
        out["engines"][engine] = _rates(r, peak)
        if engine == engines[0]:
            out["mfu_7b"] = out["engines"][engine]["mfu"]
            out["tokens_per_s"] = out["engines"][engine]["tokens_per_s"]
            out["peak_memory_gib"] = out["engines"][engine]["peak_memory_gib"]
            if out["peak_memory_gib"] is None:
                out["peak_memory_gib_reason"] = "torch measures peak memory on CUDA devices only"
        ctx.record(**out)
    # where the default engine's time goes (what limits its MFU), on the first of the same rows
    try:
        out["profile"] = _profile(model, tokenizer, template, rows[: s.profile_rows_7b], engines[0])
    except Exception as e:  # the numbers above stand; the report says why there is no profile
        why = f"profiling failed: {type(e).__name__}: {e}"[:300]
        out["largest_part_reason"] = out["busy_share_reason"] = why
    else:
        out["largest_part"] = out["profile"]["largest_part"]
        out["busy_share"] = out["profile"]["busy_share"]
    ctx.record(**out)
    # last, since its first forwards compile: the packed engine under flex attention, whose BlockMask skips the
    # tiles between packed views that sdpa computes and masks
    try:
        flex = out["engines"]["packed_flex"] = _packed_flex(ctx, model, tokenizer, template, rows, views, peak)
    except Exception as e:  # the sdpa numbers above stand; the report says why flex has none
        out["mfu_7b_flex_reason"] = f"packed under flex attention failed: {type(e).__name__}: {e}"[:300]
    else:
        out["mfu_7b_flex"] = flex["mfu"]
        if "packed" in out["engines"]:
            out["flex_vs_sdpa_packed"] = flex["tokens_per_s"] / out["engines"]["packed"]["tokens_per_s"]
    ctx.record(**out)
    return out


def _rates(r: dict[str, Any], peak: float) -> dict[str, Any]:
    """A ``measure_scorer`` result with its samples/s, tokens/s and model-FLOPs utilization against ``peak``."""
    return {
        **r,
        "samples_per_s": r["samples"] / r["seconds"],
        "tokens_per_s": r["tokens"] / r["seconds"],
        "mfu": r["flops"] / r["seconds"] / peak,
    }


def _profile(model: Any, tokenizer: Any, template: Any, rows: list, engine: str) -> dict[str, Any]:
    """``profile_scoring`` of the scorer (warmed on the first rows) with ``engine``."""
    from gpu_check.profiling import profile_scoring
    from srt_trainer.scoring.scorer import IFDScorer

    scorer = IFDScorer(model, tokenizer, template, max_length=MAX_LENGTH, engine=engine)
    scorer.score(rows[:2])
    return {"engine": engine, **profile_scoring(scorer, rows, device())}


def _packed_flex(
    ctx: StepContext, model: Any, tokenizer: Any, template: Any, rows: list, views: list, peak: float
) -> dict[str, Any]:
    """The packed engine under flex attention on the first ``flex_rows_7b`` rows (warm-up first: it compiles), as
    the other engines are reported, with its time including the warm-up and the graphs compiled."""
    import bench_scoring as bench
    import torch._dynamo
    from torch._dynamo.utils import counters

    s, on = ctx.sizes, device()
    model.set_attn_implementation("flex_attention")
    n = min(s.flex_rows_7b, s.rows_7b)
    sub_views = [v for v in views if v.sample < n]
    compiles = counters["stats"]["unique_graphs"]
    start = time.perf_counter()
    limit = {} if s.flex_recompiles is None else {"recompile_limit": s.flex_recompiles}
    with torch._dynamo.config.patch(**limit):
        r = bench.measure_scorer(
            model, tokenizer, template, rows[:n], sub_views, MAX_LENGTH, on, "packed", None, max(1, s.warmup_rows)
        )
    r.pop("scores")
    return {
        **_rates(r, peak),
        "seconds_with_warmup": time.perf_counter() - start,
        "compiled_graphs": counters["stats"]["unique_graphs"] - compiles,
    }
