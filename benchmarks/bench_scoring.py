"""Scoring speed: the release's one-sample-at-a-time loop versus the batched scorer, in one process.

The loop is the released scorer's pattern: per sample, four ``model(input_ids, labels=...)`` calls (model loaded
with ``output_hidden_states=True``, as released). The scorer runs on the same samples and model in fp32 and
bf16. Prints samples/s, tokens/s, executed FLOP/s against this machine's measured matmul peak, the speed ratios,
and the agreement of the scores (max relative difference for fp32, Spearman of IFD for bf16).

Where vLLM is installed (``--vllm auto``), its engine is measured too, as a peer rather than a path of the package:
what a vLLM user would do to get IFD, the four views' prompt log-probabilities through ``LLM.generate`` with
``max_tokens=1`` and ``prompt_logprobs=0`` (the same token ids as the scorer's views), timed after the engine
started (its start is reported apart).

    python benchmarks/bench_scoring.py --n 200            # 2-core CPU, embedded student
    .venv-vllm/bin/python benchmarks/bench_scoring.py --n 64 --vllm on   # with the vLLM peer
    python benchmarks/bench_scoring.py --device cuda --model PATH --n 2000 --loop-n 200
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from srt_trainer.data import load_instruction_data
from srt_trainer.models import load_student, load_tokenizer
from srt_trainer.models.precision import float32_products, needs_float32_products
from srt_trainer.scoring import LOSS_COLUMNS, IFDScorer, stats_from_losses
from srt_trainer.scoring.collator import DataCollatorForIFD
from srt_trainer.templates import get_template

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cherry_alpaca_5_percent.json"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(dtype: torch.dtype, device: str, n: int = 2048, reps: int = 10) -> float:
    """Measured dense matmul rate (FLOP/s) of this machine for ``dtype``, computed as the scorer computes it (in
    fp32 on the half values where the CPU has no half-precision kernels)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    with float32_products(dtype, device):
        for _ in range(2):
            a @ b
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def model_flops(model, views, prefix: dict[str, int] | None, logits_for_all: bool) -> float:
    """Executed FLOPs: linear layers on computed tokens, the output projection on tokens that get logits, and
    causal attention scores and sums."""
    cfg = model.config
    hidden, vocab, layers = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
    body = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and "lm_head" not in n)
    total = 0.0
    for v in views:
        n = len(v.input_ids)
        p = (prefix or {}).get(v.kind, 0)
        computed = n - p
        logit_tokens = n if logits_for_all else v.num_targets
        attn = 4 * layers * hidden * (n * (n + 1) / 2 - p * (p + 1) / 2)
        total += 2 * body * computed + 2 * hidden * vocab * logit_tokens + attn
    return total


def release_loop(model, tokenizer, template, rows, max_length: int, device: str) -> list[dict]:
    """The released scorer's loop: four separate forward passes per sample, batch size one."""

    def whole(text: str, limit: int) -> float:
        ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=limit)["input_ids"].to(device)
        with torch.no_grad():
            return model(ids, labels=ids.contiguous(), output_hidden_states=True).loss.item()

    def part(text: str, context: str) -> float:
        ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)["input_ids"].to(device)
        labels = ids.clone()
        labels[0, : len(tokenizer(context)["input_ids"])] = -100
        with torch.no_grad():
            return model(ids, labels=labels, output_hidden_states=True).loss.item()

    out = []
    for r in rows:
        x, y = r["instruction"] + r["input"], r["output"]
        prompt, reverse = template.prompt(r["instruction"], r["input"]), template.reverse_prompt(y)
        losses = {
            "loss_ins_alone": whole(x, max_length - len(tokenizer(reverse)["input_ids"]) + 1),
            "loss_out_alone": whole(y, max_length - len(tokenizer(prompt)["input_ids"]) + 1),
            "loss_ins_cond": part(reverse + x, reverse),
            "loss_out_cond": part(prompt + y, prompt),
        }
        out.append(stats_from_losses(losses))
    sync(device)
    return out


def measure_scorer(
    model,
    tokenizer,
    template,
    rows: list[dict],
    views: list,
    max_length: int,
    device: str,
    engine: str = "auto",
    token_budget: int | None = None,
    warmup: int = 8,
) -> dict:
    """Time ``IFDScorer`` on ``rows`` (after a warm-up on the first ``warmup`` rows): seconds, samples, tokens,
    executed FLOPs, peak device memory (CUDA), the engine it ran and its scores."""
    kw = {"token_budget": token_budget} if token_budget else {}
    if engine != "auto":
        kw["engine"] = engine
    scorer = IFDScorer(model, tokenizer, template, max_length=max_length, **kw)
    if warmup:
        scorer.score(rows[:warmup])
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    scores = scorer.score(rows)
    sync(device)
    seconds = time.perf_counter() - start
    prefix = {k: scorer.shared_prefix_length([v for v in views if v.kind == k]) for k in ("out_cond", "ins_cond")}
    return {
        "engine": scorer.engine,
        "seconds": seconds,
        "samples": len(rows),
        "tokens": sum(len(v.input_ids) for v in views),
        "flops": model_flops(model, views, prefix, logits_for_all=False),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None,
        "token_budget": scorer.token_budget,
        "scores": scores,
    }


def vllm_engine(model: str, dtype: str, device: str, max_length: int, options: dict) -> tuple[object, float]:
    """A vLLM engine of ``model`` in ``dtype`` (eager with a 2 GiB KV cache on a CPU, unless ``options`` say
    otherwise) and the seconds it took to start."""
    from vllm import LLM

    from srt_trainer.models import resolve_model_path

    defaults = {"enforce_eager": True, "kv_cache_memory_bytes": 2 << 30} if device == "cpu" else {}
    start = time.perf_counter()
    llm = LLM(model=resolve_model_path(model), dtype=dtype, max_model_len=max_length, **{**defaults, **options})
    return llm, time.perf_counter() - start


def vllm_losses(llm, views: list) -> list[float]:
    """Each view's mean NLL over its targets (``input_ids[target_start:]``), from the prompt log-probabilities vLLM
    returns for a one-token generation."""
    from vllm import SamplingParams, TokensPrompt

    prompts = [TokensPrompt(prompt_token_ids=list(v.input_ids)) for v in views]
    outputs = llm.generate(prompts, SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0), use_tqdm=False)
    losses = []
    for v, out in zip(views, outputs, strict=True):
        logprobs = out.prompt_logprobs  # position i: {token id: Logprob} for input_ids[i] (None at 0)
        targets = range(v.target_start, len(v.input_ids))
        losses.append(-sum(logprobs[i][v.input_ids[i]].logprob for i in targets) / len(targets))
    return losses


def measure_vllm(llm, rows: list[dict], views: list, warmup: int = 8) -> dict:
    """Time the vLLM peer on ``views`` (after a warm-up on the first ``warmup`` rows' views) and turn its losses
    into the scorer's statistics."""
    if warmup:
        vllm_losses(llm, [v for v in views if v.sample < warmup])
    start = time.perf_counter()
    losses = vllm_losses(llm, views)
    seconds = time.perf_counter() - start
    per_sample: list[dict] = [{} for _ in rows]
    for v, loss in zip(views, losses, strict=True):
        per_sample[v.sample][f"loss_{v.kind}"] = loss  # one turn per Alpaca row
    return {
        "seconds": seconds,
        "samples": len(rows),
        "tokens": sum(len(v.input_ids) for v in views),
        "scores": [stats_from_losses(x) for x in per_sample],
    }


def spearman(a, b) -> float:
    ra = np.argsort(np.argsort(a))
    rb = np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--n", type=int, default=200, help="samples scored by the scorer")
    ap.add_argument("--loop-n", type=int, default=None, help="samples for the loop (default: --n)")
    ap.add_argument(
        "--loop-dtypes",
        default=None,
        help="default: float32, and bfloat16 where the device has bf16 kernels (without them the release loop in "
        "bf16 runs PyTorch's reference kernel, ~7x slower than fp32: hours for 200 samples)",
    )
    ap.add_argument("--scorer-dtypes", default="float32,bfloat16")
    ap.add_argument("--engines", default="auto", help="scorer engines to time: auto, packed, padded (comma-separated)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--token-budget", type=int, default=None)
    ap.add_argument(
        "--vllm",
        choices=["auto", "on", "off"],
        default="auto",
        help="the vLLM peer, in each scorer dtype: auto = where vllm is installed (its own environment, e.g. "
        ".venv-vllm made by `make setup-vllm`)",
    )
    ap.add_argument("--vllm-options", default="{}", help="further vllm.LLM arguments, as a JSON object")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    with_vllm = args.vllm == "on" or (args.vllm == "auto" and importlib.util.find_spec("vllm") is not None)
    if args.vllm == "on" and importlib.util.find_spec("vllm") is None:
        ap.error("--vllm on: vllm is not installed in this Python (run this script with .venv-vllm/bin/python)")
    loop_n = args.loop_n or args.n
    if args.loop_dtypes is None:
        args.loop_dtypes = "float32" if needs_float32_products(torch.bfloat16, args.device) else "float32,bfloat16"

    rows = load_instruction_data(args.data, limit=args.n).dataset.to_list()
    tokenizer = load_tokenizer(args.model)
    template = get_template("vicuna")
    views = [v for sv in DataCollatorForIFD(tokenizer, template, args.max_length).views(rows) for v in sv.views]
    tokens = sum(len(v.input_ids) for v in views)
    peaks = {d: matmul_peak(getattr(torch, d), args.device) for d in ("float32", "bfloat16")}
    print(
        f"device {args.device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads); "
        f"matmul peak fp32 {peaks['float32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bfloat16'] / 1e9:.0f} GFLOP/s"
    )
    print(f"{args.n} samples, {len(views)} views, {tokens} tokens (loop on {loop_n})")
    if needs_float32_products(torch.bfloat16, args.device):
        print("no bf16 matrix kernels on this CPU: the bf16 scorer runs its products in fp32 on the bf16 values")

    results = []
    reference = None
    for dtype in args.loop_dtypes.split(","):
        model = load_student(args.model, dtype=dtype, device=args.device)
        sub = rows[:loop_n]
        sub_views = [v for v in views if v.sample < loop_n]
        start = time.perf_counter()
        scores = release_loop(model, tokenizer, template, sub, args.max_length, args.device)
        dt = time.perf_counter() - start
        flops = model_flops(model, sub_views, None, logits_for_all=True)
        results.append(
            {
                "method": f"release loop {dtype}",
                "dtype": dtype,
                "seconds": dt,
                "samples": loop_n,
                "tokens": sum(len(v.input_ids) for v in sub_views),
                "flops": flops,
                "scores": scores,
            }
        )
        if dtype == "float32":
            reference = scores
    for dtype in args.scorer_dtypes.split(","):
        model = load_student(args.model, dtype=dtype, device=args.device)
        for engine in args.engines.split(","):
            r = measure_scorer(
                model, tokenizer, template, rows, views, args.max_length, args.device, engine, args.token_budget
            )
            results.append(
                {"method": f"scorer {dtype}" + (f" {r['engine']}" if engine != "auto" else ""), "dtype": dtype, **r}
            )
    if with_vllm:
        from vllm import __version__ as vllm_version

        # after our engines: vLLM's engine runs in processes of its own, which would compete with them for the cores
        for dtype in args.scorer_dtypes.split(","):
            llm, started = vllm_engine(args.model, dtype, args.device, args.max_length, json.loads(args.vllm_options))
            r = measure_vllm(llm, rows, views)
            # prompt log-probabilities take the output layer at every position, as the loop does
            r["flops"] = model_flops(model, views, None, logits_for_all=True)
            results.append({"method": f"vLLM {dtype}", "dtype": dtype, "engine_start_seconds": started, **r})
            print(f"vLLM {vllm_version} engine ({dtype}) started in {started:.1f} s")
            llm.llm_engine.engine_core.shutdown()
            del llm
    else:
        print("vLLM peer: not run (vllm is not installed in this Python; see --vllm)")
    base = next(r for r in results if r["method"] == "release loop float32")
    base_rate = base["samples"] / base["seconds"]
    header = f"{'method':<24}{'samples/s':>10}{'tokens/s':>10}{'GFLOP/s':>9}{'% peak':>8}{'× loop fp32':>12}  agreement"
    print(header)
    print("-" * len(header))
    for r in results:
        rate = r["samples"] / r["seconds"]
        gflops = r["flops"] / r["seconds"] / 1e9
        r["samples_per_s"], r["tokens_per_s"], r["gflops"] = rate, r["tokens"] / r["seconds"], gflops
        r["pct_peak"] = 100 * r["flops"] / r["seconds"] / peaks[r["dtype"]]
        r["ratio_vs_loop_fp32"] = rate / base_rate
        n = min(len(r["scores"]), len(reference))
        if r["dtype"] == "float32":
            rel = max(
                abs(a[k] - b[k]) / abs(b[k])
                for a, b in zip(r["scores"][:n], reference[:n], strict=True)
                for k in (*LOSS_COLUMNS, "ifd", "rifd")
            )
            r["agreement"] = f"max rel diff {rel:.1e}"
        else:
            ifd = [s["ifd"] for s in r["scores"][:n]]
            r["agreement"] = f"Spearman IFD {spearman(ifd, [s['ifd'] for s in reference[:n]]):.4f}"
        print(
            f"{r['method']:<24}{rate:>10.2f}{r['tokens_per_s']:>10.0f}{gflops:>9.0f}{r['pct_peak']:>7.0f}%"
            f"{r['ratio_vs_loop_fp32']:>11.2f}×  {r['agreement']}"
        )
    if args.json:
        for r in results:
            r.pop("scores")
        Path(args.json).write_text(json.dumps({"peaks": peaks, "results": results}, indent=2, default=float))
    assert all(math.isfinite(r["seconds"]) for r in results)


if __name__ == "__main__":
    main()
