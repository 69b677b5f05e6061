"""The statistics from the student's losses: per-token cross-entropy at target positions (tiled over the
vocabulary so full logits are never held), and IFD / r-IFD from the four mean losses of a turn."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

LOSS_COLUMNS = ("loss_ins_alone", "loss_out_alone", "loss_ins_cond", "loss_out_cond")
STAT_COLUMNS = (*LOSS_COLUMNS, "ifd", "rifd", "ifd_loss", "rifd_loss")
# why a row has no statistics at all, and why each statistic is missing (None when it is there)
ERROR_COLUMNS = ("score_error", "ifd_error", "rifd_error")


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or den is None or den == 0 else num / den


def stats_from_losses(losses: Mapping[str, float | None]) -> dict[str, float | None]:
    """IFD, r-IFD and the loss ratios from the mean NLLs of one turn. Each statistic needs only its own two losses
    (IFD the response's, r-IFD the instruction's); it is None when one of them is missing (None or absent)."""
    out: dict[str, float | None] = {c: losses.get(c) for c in LOSS_COLUMNS}
    y_cond, y_alone = out["loss_out_cond"], out["loss_out_alone"]
    x_cond, x_alone = out["loss_ins_cond"], out["loss_ins_alone"]
    out["ifd"] = None if y_cond is None or y_alone is None else math.exp(y_cond - y_alone)
    out["rifd"] = None if x_cond is None or x_alone is None else math.exp(x_cond - x_alone)
    out["ifd_loss"] = _ratio(y_cond, y_alone)
    out["rifd_loss"] = _ratio(x_cond, x_alone)
    return out


def mean_over_turns(values: Sequence[float | None]) -> float | None:
    """The mean over turns, or None when a turn lacks the value."""
    return None if any(v is None for v in values) else float(np.mean(values))


def nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy; logsumexp reduces without writing a full log-softmax matrix back to memory."""
    return torch.logsumexp(logits, dim=-1) - logits.gather(-1, targets[:, None]).squeeze(-1)


def tiled_nll(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    rows: int | None = None,
    vocab: int | None = None,
) -> torch.Tensor:
    """Cross-entropy of ``hidden @ weight.T + bias`` at ``targets``, one (rows × vocab) tile of logits at a time.

    On a CPU a tile small enough to stay in cache (256 × 4096) is written by the matrix product, upcast and reduced
    while it is still there; full-vocabulary rows (49k-128k columns) would go to memory and back several times. On
    an accelerator, where each small tile costs kernel launches, tiles are 4096 rows × 32768 columns (512 MiB of
    fp32 logits at most). Each tile's log-sum-exp is combined exactly at the end, and the target logit is taken from
    the tile that holds it by a masked gather, with no device-to-host synchronization.
    """
    on_cpu = hidden.device.type == "cpu"
    rows = rows or (256 if on_cpu else 4096)
    vocab = vocab or (4096 if on_cpu else 32768)
    n, size = hidden.shape[0], weight.shape[0]
    starts = range(0, size, vocab)
    out = torch.empty(n, dtype=torch.float32, device=hidden.device)
    for r in range(0, n, rows):
        h, t = hidden[r : r + rows], targets[r : r + rows]
        parts = torch.empty(len(h), len(starts), dtype=torch.float32, device=hidden.device)
        picked = torch.zeros(len(h), dtype=torch.float32, device=hidden.device)
        for c, v in enumerate(starts):
            tile = torch.nn.functional.linear(h, weight[v : v + vocab], None if bias is None else bias[v : v + vocab])
            tile = tile.float()
            parts[:, c] = torch.logsumexp(tile, dim=-1)
            local = t - v
            inside = (local >= 0) & (local < tile.shape[1])
            at = tile.gather(1, local.clamp(0, tile.shape[1] - 1)[:, None]).squeeze(1)
            picked += torch.where(inside, at, torch.zeros_like(at))
        out[r : r + rows] = torch.logsumexp(parts, dim=-1) - picked
    return out
