"""Batched IFD / r-IFD scoring for any causal LM (full, PEFT adapter, bitsandbytes-quantized; fp32/bf16/fp16).

Work is cut, not only overhead:

- views are sorted by length and packed into batches by a padded-token budget;
- every conditioned view starts with the same template tokens (the system prompt and ``USER:``): their keys and
  values are computed once per call and reused for every batch, exactly, since a causal model's states at a
  position depend only on the tokens before it;
- the output projection runs only at target positions, in chunks, so memory stays bounded for 128k-vocabulary
  students and context tokens never get logits.

The fast path (decoder + output embeddings) is checked against the model's own ``forward`` once at start; a model
whose logits need more than that (soft-capping, scaling, exotic heads) falls back to batched full forwards.
"""

from __future__ import annotations

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

logger = logging.getLogger(__name__)

LOSS_COLUMNS = ("loss_ins_alone", "loss_out_alone", "loss_ins_cond", "loss_out_cond")
STAT_COLUMNS = (*LOSS_COLUMNS, "ifd", "rifd", "ifd_loss", "rifd_loss")
_KIND_COLUMN = {"out_alone": "loss_out_alone", "out_cond": "loss_out_cond",
                "ins_alone": "loss_ins_alone", "ins_cond": "loss_ins_cond"}  # fmt: skip
MIN_SHARED_PREFIX = 4  # below this, a shared prefix saves less than it costs


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


def stats_from_losses(losses: Mapping[str, float]) -> dict[str, float]:
    """IFD, r-IFD and the loss ratios from the four mean NLLs of one turn."""
    out = dict(losses)
    out["ifd"] = math.exp(losses["loss_out_cond"] - losses["loss_out_alone"])
    out["rifd"] = math.exp(losses["loss_ins_cond"] - losses["loss_ins_alone"])
    out["ifd_loss"] = losses["loss_out_cond"] / losses["loss_out_alone"]
    out["rifd_loss"] = losses["loss_ins_cond"] / losses["loss_ins_alone"]
    return out


def _nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy; logsumexp reduces without writing a full log-softmax matrix back to memory."""
    return torch.logsumexp(logits, dim=-1) - logits.gather(-1, targets[:, None]).squeeze(-1)


def tiled_nll(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    rows: int = 256,
    vocab: int = 4096,
) -> torch.Tensor:
    """Cross-entropy of ``hidden @ weight.T + bias`` at ``targets``, one (rows × vocab) tile of logits at a time.

    A tile small enough to stay in cache is written by the matrix product, upcast and reduced while it is still
    there; full-vocabulary rows (49k-128k columns) would go to memory and back several times. Each tile's
    log-sum-exp is combined exactly at the end, and the target logit is read from the tile that holds it.
    """
    n, size = hidden.shape[0], weight.shape[0]
    starts = range(0, size, vocab)
    out = torch.empty(n, dtype=torch.float32, device=hidden.device)
    for r in range(0, n, rows):
        h, t = hidden[r : r + rows], targets[r : r + rows]
        parts = torch.empty(len(h), len(starts), dtype=torch.float32, device=hidden.device)
        picked = torch.empty(len(h), dtype=torch.float32, device=hidden.device)
        for c, v in enumerate(starts):
            tile = torch.nn.functional.linear(h, weight[v : v + vocab], None if bias is None else bias[v : v + vocab])
            tile = tile.float()
            parts[:, c] = torch.logsumexp(tile, dim=-1)
            here = ((t >= v) & (t < v + vocab)).nonzero().squeeze(1)
            picked[here] = tile[here, t[here] - v]
        out[r : r + rows] = torch.logsumexp(parts, dim=-1) - picked
    return out


def _unwrap(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (adapter layers stay active)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _batch_dependent(model: Any) -> bool:
    """Whether the model has layers whose arithmetic depends on the other rows of a batch (LLM.int8 outliers)."""
    return any(type(m).__name__ == "Linear8bitLt" and getattr(getattr(m, "state", None), "threshold", 0) > 0
               for m in model.modules())  # fmt: skip


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
        token_budget: padded tokens per forward batch.
        max_batch_size: views per forward batch at most.
        share_prefix: compute the conditioned views' common prefix once.
        logits_chunk: elements (target rows × vocabulary) of one logits chunk when the output layer is not a
            plain linear layer; a plain one is reduced in cache-sized tiles (``tiled_nll``).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        template: str | PromptTemplate = "vicuna",
        max_length: int = 2048,
        token_budget: int = 4096,
        max_batch_size: int = 128,
        share_prefix: bool = True,
        logits_chunk: int = 2**25,
    ) -> None:
        if isinstance(template, str):
            template = get_template(template, tokenizer)
        self.model = model
        self.tokenizer = tokenizer
        self.collator = DataCollatorForIFD(tokenizer, template, max_length)
        self.token_budget = token_budget
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
        self.device = inner.get_input_embeddings().weight.device
        self._decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else None
        self._head = inner.get_output_embeddings()
        # a plain linear head is reduced tile by tile; anything else (quantized, adapted) runs whole, in chunks
        self._tiled = type(self._head) is torch.nn.Linear
        self.fast_path = self._decoder is not None and self._head is not None and self._fast_path_agrees()
        self._cache_kw = _cache_keyword((self._decoder if self.fast_path else self.model).forward)

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
            return False
        return fast.shape == reference.shape and torch.allclose(fast, reference, rtol=1e-3, atol=1e-3)

    def _project(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._head(hidden).float()

    def _cache(self, prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] | None, batch: int) -> Any:
        if prefix_kv is None:
            return None
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=[(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))
                                            for k, v in prefix_kv])  # fmt: skip

    @torch.no_grad()
    def _prefix_kv(self, prefix: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        from transformers import DynamicCache

        ids = torch.tensor([list(prefix)], device=self.device)
        target = self._decoder if self.fast_path else self.model
        out = target(input_ids=ids, use_cache=True, **{self._cache_kw: DynamicCache()})
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        return [(layer.keys, layer.values) for layer in cache.layers]

    @torch.no_grad()
    def _batch_nll(self, views: Sequence[View], prefix_len: int, prefix_kv: Any) -> tuple[np.ndarray, np.ndarray]:
        """Summed NLL (float64) and target count of each view."""
        batch = self.collator.pad(views, prefix_len)
        ids = batch["input_ids"].to(self.device)
        labels = batch["labels"].to(self.device)
        b, length = ids.shape
        # No attention mask: the views are right-padded, so under causal attention no real token sees a pad, and
        # the model can take its mask-free causal kernels (no padding mask to build, no key/value heads repeated).
        kwargs: dict[str, Any] = {"input_ids": ids, "use_cache": prefix_kv is not None}
        if prefix_kv is not None:
            kwargs[self._cache_kw] = self._cache(prefix_kv, b)
            kwargs["position_ids"] = torch.arange(prefix_len, prefix_len + length, device=self.device).expand(b, -1)
        targets = labels[:, 1:]
        keep = targets != -100
        owner = torch.arange(b, device=self.device)[:, None].expand(-1, length - 1)[keep]
        targets = targets[keep]
        if self.fast_path:
            rows = self._decoder(**kwargs).last_hidden_state[:, :-1][keep]
            if self._tiled:
                nll = tiled_nll(rows, self._head.weight, self._head.bias, targets)
            else:
                chunk = max(1, self.logits_chunk // self._head.weight.shape[0])
                nll = torch.cat([_nll(self._project(rows[i : i + chunk]), targets[i : i + chunk])
                                 for i in range(0, len(rows), chunk)])  # fmt: skip
        else:
            nll = _nll(self.model(**kwargs).logits[:, :-1][keep].float(), targets)
        sums = torch.zeros(b, dtype=torch.float64, device=self.device).index_add_(0, owner, nll.double())
        counts = torch.bincount(owner, minlength=b)
        return sums.cpu().numpy(), counts.cpu().numpy()

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
            if not members:
                continue
            lengths = [len(views[i].input_ids) - plen for i in members]
            for batch in pack_by_token_budget(lengths, self.token_budget, self.max_batch_size):
                idx = [members[j] for j in batch]
                sums, counts = self._batch_nll([views[i] for i in idx], plen, kv)
                losses[idx] = sums / counts
                if progress is not None:
                    progress(sum(len(views[i].input_ids) for i in idx))
        return losses

    def score(
        self, samples: Sequence[Mapping[str, Any]], progress: Callable[[int], None] | None = None
    ) -> list[dict[str, Any]]:
        """Statistics of each sample: ``STAT_COLUMNS`` (the mean over turns for conversations), ``score_error``
        (None, or why there are no statistics), ``num_turns``, and per-turn ``ifd_turns`` / ``rifd_turns``."""
        sample_views = self.collator.views(samples)
        views = [v for sv in sample_views for v in sv.views]
        losses = self.view_losses(views, progress)
        per_turn: list[dict[int, dict[str, float]]] = [{} for _ in samples]
        for v, loss in zip(views, losses, strict=True):
            per_turn[v.sample].setdefault(v.turn, {})[_KIND_COLUMN[v.kind]] = float(loss)
        results = []
        for sv, turns in zip(sample_views, per_turn, strict=True):
            row: dict[str, Any] = dict.fromkeys(STAT_COLUMNS)
            row.update(score_error=sv.error, num_turns=sv.num_turns, ifd_turns=None, rifd_turns=None)
            if sv.error is None:
                stats = [stats_from_losses(turns[k]) for k in sorted(turns)]
                for col in STAT_COLUMNS:
                    row[col] = float(np.mean([s[col] for s in stats]))
                row["ifd_turns"] = [s["ifd"] for s in stats]
                row["rifd_turns"] = [s["rifd"] for s in stats]
            results.append(row)
        return results
