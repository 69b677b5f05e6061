"""Where a scoring run's time goes: one profiled ``IFDScorer.score`` call, its operators' own time summed by what
they compute, so that an MFU short of its target says what limits it.

Each operator's own (self) time is counted once: device time on CUDA (the kernels it launched), CPU time on the
CPU. The scorer's forward names two ranges (``srt::decoder``, ``srt::output_layer``); the parts are:

- ``attention``: the attention kernels in the decoder (sdpa's flash / memory-efficient / cuDNN ones, flex);
- ``linear layers``: the decoder's matrix products (projections and MLP);
- ``decoder, other``: the decoder's other operators (norms, rotary embeddings, activations, residual adds);
- ``output layer``: the target-only output layer and its loss (products, upcast, log-sum-exp, gather);
- ``outside the forward``: operators outside both ranges (the packed mask, copies to the device, the sums by view);
- ``host``: the wall time that no operator accounts for, i.e. the device idle while the host plans, collates,
  packs and launches (on the CPU: Python and the scorer's own work between operators).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from srt_trainer.scoring.engine import DECODER_RANGE, OUTPUT_RANGE

PARTS = ("attention", "linear layers", "decoder, other", "output layer", "outside the forward", "host")
_ATTENTION = ("scaled_dot_product", "flash", "efficient_attention", "cudnn_attention", "flex_attention", "fmha")
_MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::_addmm_activation")


def _range(event: Any) -> str | None:
    """The scorer's range an operator runs in (its nearest ancestor of the two), or None."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in (DECODER_RANGE, OUTPUT_RANGE):
            return parent.name
        parent = parent.cpu_parent
    return None


def op_part(name: str, in_range: str | None) -> str:
    """Which part an operator's time belongs to (see the module's docstring)."""
    if in_range == OUTPUT_RANGE:
        return "output layer"
    if in_range != DECODER_RANGE:
        return "outside the forward"
    low = name.lower()
    if any(k in low for k in _ATTENTION):
        return "attention"
    return "linear layers" if low in _MATMUL else "decoder, other"


def breakdown(events: Iterable[Any], wall_seconds: float, on_device: bool) -> dict[str, Any]:
    """The parts of a profile from its host-side operator ``events`` (``profiler.events()``): each part's seconds
    and share of ``wall_seconds``, the operators' busy share, the largest part, and the slowest operators."""
    seconds: dict[str, float] = defaultdict(float)
    ops: dict[str, float] = defaultdict(float)
    for e in events:
        if e.name in (DECODER_RANGE, OUTPUT_RANGE) or e.device_type.name != "CPU":
            continue  # a range's own time is Python between its operators; kernels count under their operator
        us = e.self_device_time_total if on_device else e.self_cpu_time_total
        if us <= 0:
            continue
        part = op_part(e.name, _range(e))
        seconds[part] += us / 1e6
        ops[f"{e.name} ({part})"] += us / 1e6
    busy = sum(seconds.values())
    seconds["host"] = max(wall_seconds - busy, 0.0)
    parts = {p: {"seconds": seconds.get(p, 0.0), "share": seconds.get(p, 0.0) / wall_seconds} for p in PARTS}
    largest = max(PARTS, key=lambda p: parts[p]["seconds"])
    slowest = sorted(ops.items(), key=lambda kv: -kv[1])[:8]
    return {
        "clock": "device" if on_device else "cpu",
        "wall_seconds": wall_seconds,
        "busy_share": min(busy / wall_seconds, 1.0),
        "parts": parts,
        "largest_part": f"{largest} {parts[largest]['share']:.0%}",
        "slowest_ops": [{"op": k, "seconds": v} for k, v in slowest],
    }


def profile_scoring(scorer: Any, rows: list[dict[str, Any]], device: str) -> dict[str, Any]:
    """Score ``rows`` once under ``torch.profiler`` (warm the scorer first) and return ``breakdown`` of it."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    on_device = device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_device else [])
    if on_device:
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        scorer.score(rows)
        if on_device:
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    out = breakdown(prof.events(), wall, on_device)
    return {"rows": len(rows), **out}
