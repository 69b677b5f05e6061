"""The student's forwards for scoring: summed NLL of each view of a collated batch, behind a cached shared prefix.

The fast path runs the decoder and then the output layer at target positions only; it is checked once against the
model's own ``forward`` (a model whose logits need more, such as soft-capping, scaling or exotic heads, runs full
forwards instead). Packed rows go in under an explicit block-diagonal causal mask, which a second check proves the
model honours. A student that DeepSpeed ZeRO-3 partitioned is gathered around each forward (``zero3``).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from typing import Any

import numpy as np
import torch

from srt_trainer.models.precision import float32_products_for
from srt_trainer.scoring.collator import View
from srt_trainer.scoring.loss import nll, tiled_nll
from srt_trainer.zero3 import GATHER_MODES, Lockstep, ParameterFetcher, is_partitioned

logger = logging.getLogger(__name__)

# Attention implementations that use an explicit 4D mask as given: transformers' mask builders return a 4D
# ``attention_mask`` untouched (masking_utils._preprocess_mask_arguments), sdpa takes it as a boolean or additive
# mask, eager adds it to the scores. Flash kernels take no mask.
MASKED_ATTENTION = frozenset({"sdpa", "eager"})
# flex attention takes a BlockMask instead: a mask function plus, per 128 x 128 tile, whether the tile is empty,
# full or partial, so the kernel skips the tiles between packed views rather than computing and masking them.
BLOCK_MASK_ATTENTION = frozenset({"flex_attention"})
# Named ranges of a scoring forward under ``torch.profiler`` (no cost without one): the decoder, and the output layer
# with the loss at target positions, so that a profile splits the forward's time between them.
DECODER_RANGE = "srt::decoder"
OUTPUT_RANGE = "srt::output_layer"


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


def block_causal_block_mask(view_index: torch.Tensor, prefix_len: int = 0) -> Any:
    """``block_causal_mask`` as flex attention's ``BlockMask``: the same visibility, given as a mask function, so
    the empty tiles between the views of a row are skipped rather than computed."""
    from torch.nn.attention.flex_attention import create_block_mask

    rows, width = view_index.shape

    def visible(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        k = kv - prefix_len
        own = (k >= 0) & (q >= k) & (view_index[b, q] == view_index[b, k.clamp(min=0)])
        return (kv < prefix_len) | own

    return create_block_mask(visible, rows, None, width, prefix_len + width, device=view_index.device)


def unwrap(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (adapter layers stay active)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def batch_dependent(model: Any) -> bool:
    """Whether the model has layers whose arithmetic depends on the other rows of a batch (LLM.int8 outliers)."""
    return any(
        type(m).__name__ == "Linear8bitLt" and getattr(getattr(m, "state", None), "threshold", 0) > 0
        for m in model.modules()
    )


def has_sliding_window(config: Any) -> bool:
    layer_types = getattr(config, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types):
        return True
    return bool(getattr(config, "sliding_window", None)) and getattr(config, "use_sliding_window", True)


def _cache_keyword(forward: Any) -> str:
    """The name under which ``forward`` takes a KV cache: ``cache`` since transformers 5.24, ``past_key_values``
    before (and a deprecated alias after)."""
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


class ForwardEngine:
    """Runs a causal LM's scoring forwards: ``forward_nll`` of a collated batch, ``prefix_kv`` of a shared prefix.

    Args:
        model: a causal LM (``transformers``, optionally wrapped by PEFT), in eval mode.
        tokenizer: its tokenizer (for the self-checks' texts).
        logits_chunk: elements (target rows × vocabulary) of one logits chunk when the output layer is not a plain
            linear layer; a plain one is reduced in cache-sized tiles (``tiled_nll``).
        zero3_gather: for a student that DeepSpeed ZeRO-3 partitioned: ``layer`` gathers one unit at a time around
            its forward (every process then runs the same number of forwards: ``finish``), ``model`` the whole
            model once. ``close`` gives the parameters back.
    """

    def __init__(self, model: Any, tokenizer: Any, logits_chunk: int = 2**25, zero3_gather: str = "layer") -> None:
        if zero3_gather not in GATHER_MODES:
            raise ValueError(f"zero3_gather must be one of {GATHER_MODES}, not {zero3_gather!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.logits_chunk = logits_chunk
        inner = unwrap(model)
        self.config = inner.config
        self.batch_dependent = batch_dependent(inner)
        embeddings = inner.get_input_embeddings().weight
        self.device = embeddings.device
        self.dtype = embeddings.dtype if embeddings.dtype.is_floating_point else torch.float32
        self.attn = getattr(self.config, "_attn_implementation", None)
        self._fetch = ParameterFetcher(inner, whole=zero3_gather == "model") if is_partitioned(inner) else None
        self._lockstep = Lockstep(self.device) if self._fetch is not None and not self._fetch.whole else None
        if self._fetch is not None:
            how = "the whole model at once" if self._fetch.whole else "one decoder layer at a time"
            logger.info("the student is partitioned by DeepSpeed ZeRO-3: scoring gathers %s", how)
        self._decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else None
        self._head = inner.get_output_embeddings()
        # a plain linear head is reduced tile by tile; anything else (quantized, adapted) runs whole, in chunks
        self.tiled = type(self._head) is torch.nn.Linear

    @property
    def partitioned(self) -> bool:
        """Whether DeepSpeed ZeRO-3 partitioned the student (its forwards are then collective)."""
        return self._fetch is not None

    @property
    def lockstep(self) -> bool:
        """Whether every process must run the same forwards (per-unit ZeRO-3 gathering)."""
        return self._lockstep is not None

    # -- self-checks ---------------------------------------------------------------------------------------------

    @cached_property
    @torch.no_grad()
    def fast_path(self) -> bool:
        """Whether decoder + output layer give the model's own logits (checked once, on first use)."""
        if self._decoder is None or self._head is None:
            return False
        ids = torch.tensor([self.tokenizer("The quick brown fox jumps over the lazy dog.")["input_ids"]])
        ids = ids.to(self.device)
        try:
            with float32_products_for(self.model):
                reference = self.model(input_ids=ids).logits.float()
                fast = self._head(self._decoder(input_ids=ids).last_hidden_state).float()
        except Exception:  # any architecture whose decoder cannot be called alone
            self.release()
            return False
        return fast.shape == reference.shape and torch.allclose(fast, reference, rtol=1e-3, atol=1e-3)

    def packed_refusal(self, max_length: int) -> str | None:
        """Why packed rows under an explicit mask cannot be scored with this model, or None when they can."""
        if self.attn not in MASKED_ATTENTION | BLOCK_MASK_ATTENTION:
            return f"attention implementation {self.attn!r} takes no explicit 4D mask"
        other = set(getattr(self.config, "layer_types", None) or ()) - {"full_attention", "sliding_attention"}
        if other:
            return f"layers of type {sorted(other)}"
        window = getattr(self.config, "sliding_window", None) if has_sliding_window(self.config) else None
        if window and window < max_length:
            # the mask is used as given: it would have to carry the window of the sliding layers, and not of the rest
            return f"sliding-window attention ({window} tokens) narrower than max_length ({max_length})"
        return None

    @torch.no_grad()
    def packed_agrees(
        self, pack: Callable[[Sequence[Sequence[View]], int], Mapping[str, torch.Tensor]], share: bool
    ) -> bool:
        """Whether a text packed after another in one row (behind a cached prefix when ``share``) gets the final
        hidden states it gets alone rather than those it gets after the other, as a model that ignored or misread
        the mask would give: its distance to the former must be under a tenth of the distance between the two (a
        quarter in half precision, where kernels with and without a mask round differently; measured: 2e-6 in
        fp32, 0.05 in bf16, 0.02 for a 4-bit student). ``pack`` is the collator's."""
        prefix = self.tokenizer("A chat between a curious user and an assistant.")["input_ids"] if share else []
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
                kv = self.prefix_kv(prefix) if p else None
                kwargs = self._forward_kwargs(pack([pair], p), p, kv, packed=True)
                packed = self._decoder(**kwargs).last_hidden_state[0, len(first) :].float()
        except Exception:  # a decoder that rejects the mask or the position ids
            logger.debug("packed-engine check failed", exc_info=True)
            self.release()
            return False
        err, leak = float((packed - alone).norm()), float((after - alone).norm())
        logger.debug("packed-engine check: error %.2e, distance to the unmasked states %.2e", err, leak)
        return err < (0.1 if self.dtype == torch.float32 else 0.25) * leak

    # -- forwards ------------------------------------------------------------------------------------------------

    @cached_property
    def _cache_kw(self) -> str:
        return _cache_keyword((self._decoder if self.fast_path else self.model).forward)

    def _cache(self, prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] | None, batch: int) -> Any:
        if prefix_kv is None:
            return None
        from transformers import DynamicCache

        return DynamicCache(
            ddp_cache_data=[(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in prefix_kv]
        )

    @torch.no_grad()
    def prefix_kv(self, prefix: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Keys and values of every layer for ``prefix`` (one sequence), to be shared by the rows of a forward."""
        from transformers import DynamicCache

        self.begin_forward(True)
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
        with torch.profiler.record_function(DECODER_RANGE):
            out = self._decoder(**kwargs)
        with self._held_head():
            pass
        return out

    def _held_head(self) -> Any:
        return self._fetch.held([self._head]) if self._fetch is not None else contextlib.nullcontext()

    def begin_forward(self, working: bool) -> bool:
        """Under per-layer ZeRO-3 gathering, tell the other processes whether this one has a forward to run;
        whether any has (always True elsewhere)."""
        return self._lockstep.any_working(working) if self._lockstep is not None else working

    def _attention_mask(self, view_index: torch.Tensor, prefix_len: int) -> Any:
        """The packed rows' mask as the attention takes it: sdpa a boolean one (True: attend), eager an additive
        one, since it adds the mask to the scores, flex a ``BlockMask``."""
        if self.attn in BLOCK_MASK_ATTENTION:
            return block_causal_block_mask(view_index, prefix_len)
        mask = block_causal_mask(view_index, prefix_len)
        if self.attn == "eager":
            return torch.zeros(mask.shape, dtype=self.dtype, device=mask.device).masked_fill_(
                ~mask, torch.finfo(self.dtype).min
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
    def forward_nll(
        self, batch: Mapping[str, torch.Tensor], views: int, prefix_len: int, prefix_kv: Any, packed: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Summed NLL (float64) and target count of each of ``views`` views; ``batch["view_index"]`` names each
        token's view (the sums go by view, not by row: a packed row holds several)."""
        self.begin_forward(True)
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
            with torch.profiler.record_function(DECODER_RANGE):
                rows = self._decoder(**kwargs).last_hidden_state[:, :-1][keep]
            with self._held_head(), torch.profiler.record_function(OUTPUT_RANGE):
                if self.tiled:
                    losses = tiled_nll(rows, self._head.weight, self._head.bias, targets)
                else:
                    chunk = max(1, self.logits_chunk // self._head.weight.shape[0])
                    losses = torch.cat(
                        [
                            nll(self._head(rows[i : i + chunk]).float(), targets[i : i + chunk])
                            for i in range(0, len(rows), chunk)
                        ]
                    )
        else:
            losses = nll(self.model(**kwargs).logits[:, :-1][keep].float(), targets)
        sums = torch.zeros(views, dtype=torch.float64, device=self.device).index_add_(0, owner, losses.double())
        counts = torch.bincount(owner, minlength=views)
        return sums.cpu().numpy(), counts.cpu().numpy()

    # -- ZeRO-3 --------------------------------------------------------------------------------------------------

    def release(self) -> None:
        """Give back what a failed or finished group of forwards left gathered (a no-op without ZeRO-3)."""
        if self._fetch is not None:
            self._fetch.release()

    def finish(self) -> None:
        """Run empty forwards beside the other processes' real ones until none has work left: ZeRO-3 gathering
        is collective, so a process whose shards are done must still take part (a no-op without ZeRO-3)."""
        if self._lockstep is None:
            return
        empty = 0
        with torch.no_grad(), float32_products_for(self.model):
            while self.begin_forward(False):
                empty += 1
                self._forward_without_loss(
                    input_ids=torch.zeros(1, 1, dtype=torch.long, device=self.device), use_cache=False
                )
        if empty:
            logger.info("joined the other processes' scoring with %d empty forwards", empty)

    def close(self) -> None:
        """Give a ZeRO-3 student's gathered parameters back and remove the hooks, leaving the model as it was given
        (for the trainer's DeepSpeed engine). Every process calls it at the same point."""
        if self._fetch is not None:
            self._fetch.close()
            logger.info(
                "gathered at most %d of the student's %d parameters at once",
                self._fetch.peak_numel,
                self._fetch.total_numel,
            )
            self._fetch = self._lockstep = None
