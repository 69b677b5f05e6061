"""Which views go into which forward: length-sorted batches for the padded engine, rows of views laid back to
back for the packed engine, each forward within a token budget that out-of-memory errors halve.

The plans weigh real tokens against padding, row tails, masked attention and a fixed cost per forward; they read
only view lengths and a few model sizes, never the model.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

CPU_TOKEN_BUDGET = 4096
MAX_TOKEN_BUDGET = 65536  # beyond this a forward is already long enough to keep an accelerator busy
MIN_TOKEN_BUDGET = 256  # an out-of-memory error below this is final
# The fixed cost of one forward, in token-equivalents, that the plans weigh against padding and masked attention:
# on a CPU small matrix products; on a GPU some hundreds of kernel launches, which a small student streams through
# as fast as thousands of tokens.
CPU_BATCH_OVERHEAD = 64
GPU_BATCH_OVERHEAD = 2048


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by every sequence."""
    if not sequences:
        return 0
    first = sequences[0]
    n = min(len(s) for s in sequences)
    for s in sequences[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
        if n == 0:
            break
    return n


def pack_by_token_budget(
    lengths: Sequence[int], token_budget: int, max_batch_size: int, batch_overhead: int = 64
) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first, each within ``token_budget`` padded tokens.

    Over the length-sorted views, a dynamic program picks the split that minimizes padded tokens plus
    ``batch_overhead`` token-equivalents per batch (the fixed cost of a forward and of small matrix products), so
    padding stays small without falling back to one view per batch.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    n = len(order)
    best = [0.0] + [math.inf] * n  # best[i]: cost of packing the first i sorted views
    cut = [0] * (n + 1)
    for i in range(1, n + 1):
        for j in range(i - 1, max(-1, i - 1 - max_batch_size), -1):
            width = lengths[order[j]]  # the longest view of the batch order[j:i]
            if (i - j) * width > token_budget and i - j > 1:
                break
            cost = best[j] + (i - j) * width + batch_overhead
            if cost < best[i]:
                best[i], cut[i] = cost, j
    batches: list[list[int]] = []
    i = n
    while i > 0:
        batches.append(order[cut[i] : i])
        i = cut[i]
    return batches[::-1]


def _fill_rows(lengths: Sequence[int], order: Sequence[int], width: int) -> list[list[int]]:
    """Best-fit-decreasing: each view (``order`` is longest first) goes to the open row it leaves least room in."""
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free columns, row), sorted
    for i in order:
        k = bisect.bisect_left(room, (lengths[i], -1))
        if k < len(room):
            free, r = room.pop(k)
        else:
            free, r = width, len(rows)
            rows.append([])
        rows[r].append(i)
        if free > lengths[i]:
            bisect.insort(room, (free - lengths[i], r))
    return rows


def pack_rows(
    lengths: Sequence[int],
    token_budget: int,
    max_batch_size: int,
    context: int = 0,
    attention_weight: float = 0.0,
    batch_overhead: int = 64,
) -> list[list[list[int]]]:
    """Indices packed back to back into rows, rows grouped into forwards: ``forwards[f][r]`` lists row ``r``'s views.

    Over the views sorted longest first, a dynamic program cuts runs of consecutive views; a run is one forward
    whose rows are as wide as its longest view, filled best-fit-decreasing. A run costs its row tokens (tails
    included) plus ``batch_overhead`` token-equivalents. With an explicit mask attention still meets every key of a
    row and the ``context`` prefix columns, so each row token also costs ``attention_weight * (context + width)``
    (attention multiply-adds per key over linear-layer multiply-adds per token, see ``attention_weight``): without
    that term all short views would share the widest rows; with it they get narrower rows of their own. A run
    holds at most ``max_batch_size`` views and ``token_budget`` row tokens (a view over the budget runs alone).
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    n = len(order)
    best = [0.0] + [math.inf] * n  # best[i]: cost of the first i sorted views
    cut = [0] * (n + 1)
    for j in range(n):
        width = lengths[order[j]]
        row_cost = width * (1 + attention_weight * (context + width))
        room: list[int] = []  # free columns of the open rows, sorted
        rows = 0
        # growing the run one (shorter) view at a time is best-fit-decreasing itself: only the row count is kept
        for i in range(j, min(n, j + max_batch_size)):
            need = lengths[order[i]]
            k = bisect.bisect_left(room, need)
            if k < len(room):
                free = room.pop(k)
            else:
                free, rows = width, rows + 1
            if free > need:
                bisect.insort(room, free - need)
            if rows * width > token_budget and i > j:
                break
            cost = best[j] + rows * row_cost + batch_overhead
            if cost < best[i + 1]:
                best[i + 1], cut[i + 1] = cost, j
    forwards: list[list[list[int]]] = []
    i = n
    while i > 0:
        run = order[cut[i] : i]
        forwards.append(_fill_rows(lengths, run, lengths[run[0]]))
        i = cut[i]
    return forwards[::-1]


def attention_weight(config: Any) -> float:
    """Attention multiply-adds per key over linear-layer multiply-adds per token, in one decoder layer.

    Per token, the query / key / value / output projections and a gated MLP cost ``2·d·q + 2·d·kv + 3·d·ff``
    multiply-adds; attention costs ``2·q`` per key it meets (scores and weighted values). 1/4096 when the config
    lacks the sizes.
    """
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    try:
        d, heads = int(config.hidden_size), int(config.num_attention_heads)
        head_dim = int(getattr(config, "head_dim", None) or d // heads)
        kv = int(getattr(config, "num_key_value_heads", None) or heads) * head_dim
        ff = int(getattr(config, "intermediate_size", None) or 4 * d)
    except (AttributeError, TypeError, ValueError, ZeroDivisionError):
        return 1 / 4096
    q = heads * head_dim
    return 2 * q / (2 * d * q + 2 * d * kv + 3 * d * ff)


def activation_bytes_per_token(config: Any, dtype: torch.dtype, max_length: int, eager: bool = False) -> int:
    """A conservative estimate of the accelerator memory one token of a scoring forward holds at its peak.

    - In the compute dtype, at the peak of a decoder layer: the residual stream, its norm and the attention and
      output-projection results (6·d), queries, keys and values (q + 2·kv), keys and values repeated to every
      query head when a mask is given (2·q), and a gated MLP's gate, up, activation and product (4·ff).
    - The key/value cache of every layer, held until the forward ends when a shared prefix is used, counted twice
      since every row gets its own copy of the prefix's keys and values (2 · 2·layers·kv).
    - The packed engine's boolean mask, one byte per key (at most ``max_length``); with eager attention also the
      fp32 scores and probabilities of every head over every key (2 · 4·heads·max_length).
    """
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    d, heads = int(config.hidden_size), int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or d // heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads) * head_dim
    ff = int(getattr(config, "intermediate_size", None) or 4 * d)
    layers = int(config.num_hidden_layers)
    q = heads * head_dim
    size = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4
    transient = size * (6 * d + q + 2 * kv + 2 * q + 4 * ff)
    cache = 2 * size * 2 * layers * kv
    scores = 2 * 4 * heads * max_length if eager else 0
    return transient + cache + max_length + scores


def device_token_budget(free_bytes: int, bytes_per_token: int, fraction: float = 0.5) -> int:
    """Tokens per forward that fit in ``fraction`` of ``free_bytes``: a multiple of 256 between 1024 and
    ``MAX_TOKEN_BUDGET`` (out-of-memory errors still halve it while scoring)."""
    tokens = int(free_bytes * fraction) // max(1, bytes_per_token)
    return max(1024, min(MAX_TOKEN_BUDGET, tokens // 256 * 256))


@dataclass
class ForwardPlanner:
    """Plans the forwards of a group of views: ``plan`` for the packed or the padded engine, ``halve`` after an
    out-of-memory error.

    Args:
        token_budget: row tokens per forward (padding and row tails included).
        max_batch_size: views per forward at most.
        attention_weight: attention cost per key over linear-layer cost per token (``attention_weight``).
        batch_overhead: the fixed cost of one forward, in token-equivalents.
    """

    token_budget: int
    max_batch_size: int
    attention_weight: float = 0.0
    batch_overhead: int = CPU_BATCH_OVERHEAD

    def plan(self, lengths: Sequence[int], prefix_len: int = 0, packed: bool = True) -> list[list[list[int]]]:
        """Forwards for views of ``lengths`` tokens (after a ``prefix_len`` shared prefix): ``plan[f][r]`` lists the
        views of row ``r`` of forward ``f`` (one view per row when not ``packed``)."""
        if packed:
            return pack_rows(
                lengths, self.token_budget, self.max_batch_size, prefix_len, self.attention_weight, self.batch_overhead
            )
        batches = pack_by_token_budget(lengths, self.token_budget, self.max_batch_size, self.batch_overhead)
        return [[[i] for i in batch] for batch in batches]

    def halve(self, remaining: int) -> None:
        """Halve the token budget after an out-of-memory error, or raise when it would fall below
        ``MIN_TOKEN_BUDGET``; ``remaining`` views are left to re-plan."""
        if self.token_budget // 2 < MIN_TOKEN_BUDGET:
            raise RuntimeError(
                f"out of memory even at a token budget of {self.token_budget} tokens per forward: free accelerator "
                f"memory, lower max_length, or use a smaller (or quantized) student"
            )
        self.token_budget //= 2
        logger.warning(
            "out of memory: token budget halved to %d; re-packing the %d views left in this group",
            self.token_budget,
            remaining,
        )
