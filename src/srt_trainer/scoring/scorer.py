"""Batched IFD / r-IFD scoring for any causal LM (full, PEFT adapter, bitsandbytes-quantized; fp32/bf16/fp16).

Work is cut, not only overhead:

- the packed engine lays views back to back in rows, each view seeing only its own earlier tokens (an explicit
  block-diagonal causal mask, position ids restarting per view), so no work goes to padding beyond row tails; the
  padded engine (attention kernels that take no explicit mask) sorts views by length into right-padded batches;
- forwards are sized by a token budget derived from free accelerator memory, halved on out-of-memory errors;
- every conditioned view starts with the same template tokens (the system prompt and ``USER:``): their keys and
  values are computed once per call and reused for every batch, exactly, since a causal model's states at a
  position depend only on the tokens before it;
- the output projection runs only at target positions, in chunks, so memory stays bounded for 128k-vocabulary
  students and context tokens never get logits.

The fast path (decoder + output embeddings) is checked against the model's own ``forward`` once at start; a model
whose logits need more than that (soft-capping, scaling, exotic heads) falls back to batched full forwards.
"""

from __future__ import annotations

import bisect
import contextlib
import inspect
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from srt_trainer.models.precision import float32_products_for
from srt_trainer.scoring.collator import CONDITIONED, VIEW_KINDS, DataCollatorForIFD, View
from srt_trainer.templates import PromptTemplate, get_template
from srt_trainer.zero3 import GATHER_MODES, Lockstep, ParameterFetcher, is_partitioned

logger = logging.getLogger(__name__)

LOSS_COLUMNS = ("loss_ins_alone", "loss_out_alone", "loss_ins_cond", "loss_out_cond")
STAT_COLUMNS = (*LOSS_COLUMNS, "ifd", "rifd", "ifd_loss", "rifd_loss")
# why a row has no statistics at all, and why each statistic is missing (None when it is there)
ERROR_COLUMNS = ("score_error", "ifd_error", "rifd_error")
_KIND_COLUMN = {
    "out_alone": "loss_out_alone",
    "out_cond": "loss_out_cond",
    "ins_alone": "loss_ins_alone",
    "ins_cond": "loss_ins_cond",
}
MIN_SHARED_PREFIX = 4  # below this, a shared prefix saves less than it costs
ENGINES = ("auto", "packed", "padded")
# Attention implementations that use an explicit 4D mask as given: transformers' mask builders return a 4D
# ``attention_mask`` untouched (masking_utils._preprocess_mask_arguments), sdpa takes it as a boolean or additive
# mask, eager adds it to the scores. Flash kernels take no mask; flex wants a BlockMask.
MASKED_ATTENTION = frozenset({"sdpa", "eager"})
CPU_TOKEN_BUDGET = 4096
MAX_TOKEN_BUDGET = 65536  # beyond this a forward is already long enough to keep an accelerator busy
MIN_TOKEN_BUDGET = 256  # an out-of-memory error below this is final
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


def block_causal_mask(view_index: torch.Tensor, prefix_len: int = 0) -> torch.Tensor:
    """Boolean attention mask ``[rows, 1, width, prefix_len + width]`` of packed rows: a token sees every prefix
    column and the earlier tokens of its own view (``view_index``: the view of each token, ``-1`` on the unused
    tail of a row, which sees only itself and so never gives a row of scores with no key)."""
    rows, width = view_index.shape
    causal = torch.ones(width, width, dtype=torch.bool, device=view_index.device).tril()
    mask = (view_index[:, :, None] == view_index[:, None, :]) & causal
    if prefix_len:
        mask = torch.cat([mask.new_ones(rows, width, prefix_len), mask], dim=-1)
    return mask[:, None]


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


def _mean(values: Sequence[float | None]) -> float | None:
    """The mean over turns, or None when a turn lacks the value."""
    return None if any(v is None for v in values) else float(np.mean(values))


def _nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
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


def _unwrap(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (adapter layers stay active)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _batch_dependent(model: Any) -> bool:
    """Whether the model has layers whose arithmetic depends on the other rows of a batch (LLM.int8 outliers)."""
    return any(
        type(m).__name__ == "Linear8bitLt" and getattr(getattr(m, "state", None), "threshold", 0) > 0
        for m in model.modules()
    )


def _cache_keyword(forward: Any) -> str:
    """The name under which ``forward`` takes a KV cache: ``cache`` since transformers 5.24, ``past_key_values``
    before (and a deprecated alias after)."""
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def _has_sliding_window(config: Any) -> bool:
    layer_types = getattr(config, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types):
        return True
    return bool(getattr(config, "sliding_window", None)) and getattr(config, "use_sliding_window", True)


class IFDScorer:
    """Compute the four mean NLLs and IFD / r-IFD of samples with a student.

    Args:
        model: a causal LM (``transformers``, optionally wrapped by PEFT), in eval mode.
        tokenizer: its tokenizer, with a pad token.
        template: a template name or ``PromptTemplate``.
        max_length: the release's truncation length.
        token_budget: tokens per forward (padding and row tails included). None: derived from free memory on
            CUDA (``activation_bytes_per_token``, at most ``MAX_TOKEN_BUDGET``), ``CPU_TOKEN_BUDGET`` elsewhere.
            Halved, and the rest of the group re-packed, on an out-of-memory error.
        max_batch_size: views per forward at most.
        share_prefix: compute the conditioned views' common prefix once.
        logits_chunk: elements (target rows × vocabulary) of one logits chunk when the output layer is not a
            plain linear layer; a plain one is reduced in cache-sized tiles (``tiled_nll``).
        engine: ``packed`` (views back to back in rows under a block-diagonal causal mask), ``padded``
            (right-padded batches, no mask) or ``auto``: packed where the attention implementation takes an
            explicit mask (``MASKED_ATTENTION``), the fast path is on and a check at start agrees; padded
            otherwise. The choice is ``self.engine``.
        rifd_target_start: where the r-IFD target starts (``DataCollatorForIFD``): ``reverse_prompt`` or
            ``release``.
        zero3_gather: for a student that DeepSpeed ZeRO-3 partitioned (``zero3.ParameterFetcher``): ``layer``
            gathers one decoder layer at a time around its forward (every process then runs the same number of
            forwards: call ``finish`` when done, so a process out of work joins the others' forwards), ``model``
            gathers the whole model once (no gathering per forward, where a full copy fits). ``close`` gives the
            parameters back.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        template: str | PromptTemplate = "vicuna",
        max_length: int = 2048,
        token_budget: int | None = None,
        max_batch_size: int = 128,
        share_prefix: bool = True,
        logits_chunk: int = 2**25,
        engine: str = "auto",
        rifd_target_start: str = "reverse_prompt",
        zero3_gather: str = "layer",
    ) -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
        if zero3_gather not in GATHER_MODES:
            raise ValueError(f"zero3_gather must be one of {GATHER_MODES}, not {zero3_gather!r}")
        if isinstance(template, str):
            template = get_template(template, tokenizer)
        self.model = model
        self.tokenizer = tokenizer
        self.collator = DataCollatorForIFD(tokenizer, template, max_length, rifd_target_start)
        self.logits_chunk = logits_chunk
        inner = _unwrap(model)
        self._config = inner.config
        if _batch_dependent(inner):
            # LLM.int8() picks outlier columns from all rows of a product: a view's numbers would depend on the
            # other views in its batch (and on which prefix rows were cached). One whole view per forward.
            logger.warning("8-bit (LLM.int8) student: scoring one view per forward so scores do not depend on batching")
            max_batch_size, share_prefix = 1, False
        self.max_batch_size = max_batch_size
        self.share_prefix = share_prefix and not _has_sliding_window(self._config)
        embeddings = inner.get_input_embeddings().weight
        self.device = embeddings.device
        self._dtype = embeddings.dtype if embeddings.dtype.is_floating_point else torch.float32
        self._fetch = ParameterFetcher(inner, whole=zero3_gather == "model") if is_partitioned(inner) else None
        self._lockstep = Lockstep(self.device) if self._fetch is not None and not self._fetch.whole else None
        if self._fetch is not None:
            how = "the whole model at once" if self._fetch.whole else "one decoder layer at a time"
            logger.info("the student is partitioned by DeepSpeed ZeRO-3: scoring gathers %s", how)
        self._decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else None
        self._head = inner.get_output_embeddings()
        # a plain linear head is reduced tile by tile; anything else (quantized, adapted) runs whole, in chunks
        self._tiled = type(self._head) is torch.nn.Linear
        self.fast_path = self._decoder is not None and self._head is not None and self._fast_path_agrees()
        self._cache_kw = _cache_keyword((self._decoder if self.fast_path else self.model).forward)
        self._attn = getattr(self._config, "_attn_implementation", None)
        self._attention_weight = attention_weight(self._config)
        self.engine = self._choose_engine(engine)
        self.token_budget = token_budget if token_budget is not None else self._default_token_budget()
        # The fixed cost of one forward, in token-equivalents, that the plans weigh against padding and masked
        # attention: on a CPU small matrix products; on a GPU some hundreds of kernel launches, which a small
        # student streams through as fast as thousands of tokens.
        self.batch_overhead = GPU_BATCH_OVERHEAD if self.device.type == "cuda" else CPU_BATCH_OVERHEAD

    # -- engine and budget --------------------------------------------------------------------------------------

    def packed_refusal(self) -> str | None:
        """Why the packed engine cannot score with this model, or None when it can."""
        if self._attn not in MASKED_ATTENTION:
            return f"attention implementation {self._attn!r} takes no explicit 4D mask"
        other = set(getattr(self._config, "layer_types", None) or ()) - {"full_attention", "sliding_attention"}
        if other:
            return f"layers of type {sorted(other)}"
        window = getattr(self._config, "sliding_window", None) if _has_sliding_window(self._config) else None
        if window and window < self.collator.max_length:
            # the mask is used as given: it would have to carry the window of the sliding layers, and not of the rest
            return f"sliding-window attention ({window} tokens) narrower than max_length ({self.collator.max_length})"
        return None

    def _choose_engine(self, engine: str) -> str:
        refusal = self.packed_refusal()
        if engine == "packed" and refusal is not None:
            raise ValueError(f"engine='packed' cannot score this model: {refusal}")
        if engine != "auto":
            return engine
        if refusal is not None or not self.fast_path or self.max_batch_size == 1:
            return "padded"
        if not self._packed_agrees():
            logger.warning("the model does not honour an explicit attention mask as expected: padded engine")
            return "padded"
        return "packed"

    @torch.no_grad()
    def _packed_agrees(self) -> bool:
        """Whether a text packed after another in one row (behind a cached prefix when prefixes are shared) gets
        the final hidden states it gets alone rather than those it gets after the other, as a model that ignored
        or misread the mask would give: its distance to the former must be under a tenth of the distance between
        the two (a quarter in half precision, where kernels with and without a mask round differently; measured:
        2e-6 in fp32, 0.05 in bf16, 0.02 for a 4-bit student)."""
        prefix = self.tokenizer("A chat between a curious user and an assistant.")["input_ids"]
        prefix = prefix if self.share_prefix else []
        p = len(prefix)
        texts = ("The quick brown fox jumps over the lazy dog.", "A stitch in time saves nine, they said.")
        first, second = (self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts)
        pair = [View(0, 0, "out_cond", prefix + ids, p + 1) for ids in (first, second)]

        def hidden(ids: list[int]) -> torch.Tensor:
            return self._decoder(input_ids=torch.tensor([ids], device=self.device)).last_hidden_state[0].float()

        try:
            with float32_products_for(self.model):
                alone = hidden(prefix + second)[p:]
                after = hidden(prefix + first + second)[p + len(first) :]
                kv = self._prefix_kv(prefix) if p else None
                kwargs = self._forward_kwargs(self.collator.pack([pair], p), p, kv, packed=True)
                packed = self._decoder(**kwargs).last_hidden_state[0, len(first) :].float()
        except Exception:  # a decoder that rejects the mask or the position ids
            logger.debug("packed-engine check failed", exc_info=True)
            if self._fetch is not None:
                self._fetch.release()
            return False
        err, leak = float((packed - alone).norm()), float((after - alone).norm())
        logger.debug("packed-engine check: error %.2e, distance to the unmasked states %.2e", err, leak)
        return err < (0.1 if self._dtype == torch.float32 else 0.25) * leak

    def _default_token_budget(self) -> int:
        if self.device.type != "cuda":
            return CPU_TOKEN_BUDGET
        free, _ = torch.cuda.mem_get_info(self.device)
        # memory the caching allocator holds but no tensor uses is free to this process too
        free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        per_token = activation_bytes_per_token(
            self._config, self._dtype, self.collator.max_length, eager=self._attn == "eager"
        )
        return device_token_budget(free, per_token)

    def _halve_budget(self, remaining: int) -> None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
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

    # -- model plumbing -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def _fast_path_agrees(self) -> bool:
        ids = torch.tensor([self.tokenizer("The quick brown fox jumps over the lazy dog.")["input_ids"]])
        ids = ids.to(self.device)
        try:
            with float32_products_for(self.model):
                reference = self.model(input_ids=ids).logits.float()
                fast = self._project(self._decoder(input_ids=ids).last_hidden_state)
        except Exception:  # any architecture whose decoder cannot be called alone
            if self._fetch is not None:
                self._fetch.release()
            return False
        return fast.shape == reference.shape and torch.allclose(fast, reference, rtol=1e-3, atol=1e-3)

    def _project(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._head(hidden).float()

    def _cache(self, prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] | None, batch: int) -> Any:
        if prefix_kv is None:
            return None
        from transformers import DynamicCache

        return DynamicCache(
            ddp_cache_data=[(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in prefix_kv]
        )

    @torch.no_grad()
    def _prefix_kv(self, prefix: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        from transformers import DynamicCache

        self._begin_forward(True)
        ids = torch.tensor([list(prefix)], device=self.device)
        out = self._forward_without_loss(input_ids=ids, use_cache=True, **{self._cache_kw: DynamicCache()})
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _forward_without_loss(self, **kwargs: Any) -> Any:
        """The decoder's forward (the model's off the fast path) where no loss is taken. Under ZeRO-3 the output
        layer is still gathered after it, so that every forward of every process gathers the same units in the same
        order as a scoring forward does (see ``finish``)."""
        if not self.fast_path:
            return self.model(**kwargs)
        out = self._decoder(**kwargs)
        with self._held_head():
            pass
        return out

    def _held_head(self) -> Any:
        return self._fetch.held([self._head]) if self._fetch is not None else contextlib.nullcontext()

    def _begin_forward(self, working: bool) -> bool:
        """Under per-layer ZeRO-3 gathering, tell the other processes whether this one has a forward to run;
        whether any has (always True elsewhere)."""
        return self._lockstep.any_working(working) if self._lockstep is not None else working

    def finish(self) -> None:
        """Run empty forwards beside the other processes' real ones until none has work left: ZeRO-3 gathering
        is collective, so a process whose shards are done must still take part (a no-op without ZeRO-3)."""
        if self._lockstep is None:
            return
        empty = 0
        with torch.no_grad(), float32_products_for(self.model):
            while self._begin_forward(False):
                empty += 1
                self._forward_without_loss(
                    input_ids=torch.zeros(1, 1, dtype=torch.long, device=self.device), use_cache=False
                )
        if empty:
            logger.info("joined the other processes' scoring with %d empty forwards", empty)

    def close(self) -> None:
        """Give a ZeRO-3 student's gathered parameters back and remove the scorer's hooks, leaving the model as it
        was given (for the trainer's DeepSpeed engine). Every process calls it at the same point."""
        if self._fetch is not None:
            self._fetch.close()
            logger.info(
                "gathered at most %d of the student's %d parameters at once",
                self._fetch.peak_numel,
                self._fetch.total_numel,
            )
            self._fetch = self._lockstep = None

    def _attention_mask(self, view_index: torch.Tensor, prefix_len: int) -> torch.Tensor:
        """The packed rows' mask as the attention takes it: sdpa a boolean one (True: attend), eager an additive
        one, since it adds the mask to the scores."""
        mask = block_causal_mask(view_index, prefix_len)
        if self._attn == "eager":
            return torch.zeros(mask.shape, dtype=self._dtype, device=mask.device).masked_fill_(
                ~mask, torch.finfo(self._dtype).min
            )
        return mask

    def _forward_kwargs(
        self, batch: Mapping[str, torch.Tensor], prefix_len: int, prefix_kv: Any, packed: bool
    ) -> dict[str, Any]:
        ids = batch["input_ids"].to(self.device)
        b, length = ids.shape
        kwargs: dict[str, Any] = {"input_ids": ids, "use_cache": prefix_kv is not None}
        if prefix_kv is not None:
            kwargs[self._cache_kw] = self._cache(prefix_kv, b)
        if packed:
            kwargs["position_ids"] = batch["position_ids"].to(self.device)
            kwargs["attention_mask"] = self._attention_mask(batch["view_index"].to(self.device), prefix_len)
        # Padded: no attention mask. The views are right-padded, so under causal attention no real token sees a pad,
        # and the model can take its mask-free causal kernels (no mask to build, no key/value heads repeated).
        elif prefix_kv is not None:
            kwargs["position_ids"] = torch.arange(prefix_len, prefix_len + length, device=self.device).expand(b, -1)
        return kwargs

    @torch.no_grad()
    def _forward_nll(
        self, batch: Mapping[str, torch.Tensor], views: int, prefix_len: int, prefix_kv: Any, packed: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Summed NLL (float64) and target count of each of ``views`` views; ``batch["view_index"]`` names each
        token's view (the sums go by view, not by row: a packed row holds several)."""
        self._begin_forward(True)
        kwargs = self._forward_kwargs(batch, prefix_len, prefix_kv, packed)
        labels = batch["labels"].to(self.device)
        owner = batch["view_index"].to(self.device)
        # the state at a token predicts the next one; a view's first token is never a target, so the state at the
        # end of one packed view is never charged to the next
        targets = labels[:, 1:]
        keep = targets != -100
        owner = owner[:, 1:][keep]
        targets = targets[keep]
        if self.fast_path:
            rows = self._decoder(**kwargs).last_hidden_state[:, :-1][keep]
            with self._held_head():
                if self._tiled:
                    nll = tiled_nll(rows, self._head.weight, self._head.bias, targets)
                else:
                    chunk = max(1, self.logits_chunk // self._head.weight.shape[0])
                    nll = torch.cat(
                        [
                            _nll(self._project(rows[i : i + chunk]), targets[i : i + chunk])
                            for i in range(0, len(rows), chunk)
                        ]
                    )
        else:
            nll = _nll(self.model(**kwargs).logits[:, :-1][keep].float(), targets)
        sums = torch.zeros(views, dtype=torch.float64, device=self.device).index_add_(0, owner, nll.double())
        counts = torch.bincount(owner, minlength=views)
        return sums.cpu().numpy(), counts.cpu().numpy()

    def _batch_nll(
        self, rows: Sequence[Sequence[View]], prefix_len: int, prefix_kv: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """Summed NLL and target count of the views of one forward, in row order."""
        if self.engine == "packed":
            batch = self.collator.pack(rows, prefix_len)
        else:
            batch = self.collator.pad([v for row in rows for v in row], prefix_len)
            batch["view_index"] = torch.arange(len(rows))[:, None].expand_as(batch["input_ids"])
        return self._forward_nll(batch, sum(map(len, rows)), prefix_len, prefix_kv, self.engine == "packed")

    def plan(self, lengths: Sequence[int], prefix_len: int = 0) -> list[list[list[int]]]:
        """Forwards of the engine for views of ``lengths`` tokens (after a ``prefix_len`` shared prefix):
        ``plan[f][r]`` lists the views of row ``r`` of forward ``f`` (one per row in the padded engine)."""
        if self.engine == "packed":
            return pack_rows(
                lengths, self.token_budget, self.max_batch_size, prefix_len, self._attention_weight, self.batch_overhead
            )
        batches = pack_by_token_budget(lengths, self.token_budget, self.max_batch_size, self.batch_overhead)
        return [[[i] for i in batch] for batch in batches]

    # -- public API ---------------------------------------------------------------------------------------------

    def shared_prefix_length(self, views: Sequence[View]) -> int:
        """Tokens at the start of every view in ``views`` whose keys and values can be computed once."""
        if not views or not self.share_prefix:
            return 0
        plen = common_prefix_length([v.input_ids for v in views])
        # the state that predicts the first target must be computed in the batch, not taken from the cache
        return min(plen, min(v.target_start for v in views) - 1)

    def view_losses(self, views: Sequence[View], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Mean target NLL of each view (float64)."""
        # a half-precision student on a CPU without half-precision kernels: its products run in fp32 on its values
        with float32_products_for(self.model):
            return self._view_losses(views, progress)

    def _view_losses(self, views: Sequence[View], progress: Callable[[int], None] | None) -> np.ndarray:
        losses = np.full(len(views), np.nan)
        # Each conditioned kind has its own shared prefix: the system prompt and "USER:" for out_cond, and the
        # whole constant r-IFD instruction up to the response for ins_cond.
        groups: list[tuple[list[int], int, Any]] = []
        rest: list[int] = []
        for kind in VIEW_KINDS:
            members = [i for i, v in enumerate(views) if v.kind == kind]
            plen = self.shared_prefix_length([views[i] for i in members]) if kind in CONDITIONED else 0
            if plen >= MIN_SHARED_PREFIX:
                groups.append((members, plen, self._prefix_kv(views[members[0]].input_ids[:plen])))
            else:
                rest += members
        groups.append((rest, 0, None))
        for members, plen, kv in groups:
            pending = self._score_group(views, members, plen, kv, losses, progress)
            while pending:
                # the failed forward's tensors are gone with its frames by now, so the cache can give them back
                self._halve_budget(len(pending))
                pending = self._score_group(views, pending, plen, kv, losses, progress)
        return losses

    def _score_group(
        self,
        views: Sequence[View],
        members: Sequence[int],
        plen: int,
        kv: Any,
        losses: np.ndarray,
        progress: Callable[[int], None] | None,
    ) -> list[int]:
        """Score ``members`` (views sharing ``plen`` prefix tokens) into ``losses``; the views left unscored when a
        forward ran out of accelerator memory (none when all went through)."""
        done: set[int] = set()
        try:
            for forward in self.plan([len(views[i].input_ids) - plen for i in members], plen):
                idx = [members[j] for row in forward for j in row]
                sums, counts = self._batch_nll([[views[members[j]] for j in row] for row in forward], plen, kv)
                losses[idx] = sums / counts
                done.update(idx)
                if progress is not None:
                    progress(sum(len(views[i].input_ids) for i in idx))
        except torch.cuda.OutOfMemoryError:
            if self._lockstep is not None:
                # the other processes are inside the same collective forward: they cannot re-plan with this one
                raise RuntimeError(
                    f"out of memory at a token budget of {self.token_budget} tokens per forward under ZeRO-3: set "
                    "a smaller --token_budget (every process must run the same forwards, so it cannot be halved "
                    "on the fly)"
                ) from None
            return [i for i in members if i not in done]
        finally:
            if self._fetch is not None:
                self._fetch.release()
        return []

    def score(
        self, samples: Sequence[Mapping[str, Any]], progress: Callable[[int], None] | None = None
    ) -> list[dict[str, Any]]:
        """Statistics of each sample: ``STAT_COLUMNS`` (the mean over turns for conversations), ``score_error``
        (None, or why the sample has no statistics at all), ``ifd_error`` / ``rifd_error`` (None, or why that
        statistic is missing), ``num_turns``, and per-turn ``ifd_turns`` / ``rifd_turns``.

        Each of IFD and r-IFD is given whenever its two views have targets, as in the released scorer: a response
        whose reverse prompt fills ``max_length`` still has an IFD, a one-token response still has an r-IFD. A loss
        column is given whenever its view has targets.
        """
        sample_views = self.collator.views(samples)
        views = [v for sv in sample_views for v in sv.views]
        losses = self.view_losses(views, progress)
        per_turn: list[dict[int, dict[str, float]]] = [{} for _ in samples]
        for v, loss in zip(views, losses, strict=True):
            per_turn[v.sample].setdefault(v.turn, {})[_KIND_COLUMN[v.kind]] = float(loss)
        results = []
        for sv, turns in zip(sample_views, per_turn, strict=True):
            row: dict[str, Any] = dict.fromkeys(STAT_COLUMNS)
            row.update(
                score_error=sv.error,
                ifd_error=sv.stat_errors.get("ifd"),
                rifd_error=sv.stat_errors.get("rifd"),
                num_turns=sv.num_turns,
                ifd_turns=None,
                rifd_turns=None,
            )
            if turns:  # even without statistics, a view with targets gives its loss, as in the release
                stats = [stats_from_losses(turns.get(k, {})) for k in range(sv.num_turns)]
                for col in STAT_COLUMNS:
                    row[col] = _mean([s[col] for s in stats])
                if sv.error is None:
                    row["ifd_turns"] = [s["ifd"] for s in stats]
                    row["rifd_turns"] = [s["rifd"] for s in stats]
            results.append(row)
        return results
