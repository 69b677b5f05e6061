"""Batched IFD / r-IFD scoring for any causal LM (full, PEFT adapter, bitsandbytes-quantized; fp32/bf16/fp16).

Work is cut, not only overhead:

- the packed engine lays views back to back in rows, each view seeing only its own earlier tokens (an explicit
  block-diagonal causal mask, position ids restarting per view), so no work goes to padding beyond row tails; the
  padded engine (attention kernels that take no explicit mask) sorts views by length into right-padded batches
  (``planning``);
- forwards are sized by a token budget derived from free accelerator memory, halved on out-of-memory errors;
- every conditioned view starts with the same template tokens (the system prompt and ``USER:``): their keys and
  values are computed once per call and reused for every batch, exactly, since a causal model's states at a
  position depend only on the tokens before it;
- the output projection runs only at target positions, in tiles, so memory stays bounded for 128k-vocabulary
  students and context tokens never get logits (``engine``, ``loss``).

``IFDScorer`` ties these together: the collator's views, the planner's forwards, the engine's losses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from srt_trainer.models.precision import float32_products_for
from srt_trainer.scoring.collator import CONDITIONED, VIEW_KINDS, DataCollatorForIFD, View
from srt_trainer.scoring.engine import ForwardEngine, has_sliding_window
from srt_trainer.scoring.loss import STAT_COLUMNS, mean_over_turns, stats_from_losses
from srt_trainer.scoring.planning import (
    CPU_BATCH_OVERHEAD,
    CPU_TOKEN_BUDGET,
    GPU_BATCH_OVERHEAD,
    ForwardPlanner,
    activation_bytes_per_token,
    attention_weight,
    common_prefix_length,
    device_token_budget,
)
from srt_trainer.templates import PromptTemplate, get_template

logger = logging.getLogger(__name__)

__all__ = ["ENGINES", "IFDScorer"]

_KIND_COLUMN = {
    "out_alone": "loss_out_alone",
    "out_cond": "loss_out_cond",
    "ins_alone": "loss_ins_alone",
    "ins_cond": "loss_ins_cond",
}
MIN_SHARED_PREFIX = 4  # below this, a shared prefix saves less than it costs
ENGINES = ("auto", "packed", "padded")


class IFDScorer:
    """Compute the four mean NLLs and IFD / r-IFD of samples with a student.

    Args:
        model: a causal LM (``transformers``, optionally wrapped by PEFT), in eval mode.
        tokenizer: its tokenizer, with a pad token.
        template: a template name or ``PromptTemplate``.
        max_length: the release's truncation length.
        token_budget: tokens per forward (padding and row tails included). None: derived from free memory on
            CUDA (``activation_bytes_per_token``, at most ``MAX_TOKEN_BUDGET``), ``CPU_TOKEN_BUDGET`` elsewhere.
            Halved, and the rest of the group re-planned, on an out-of-memory error.
        max_batch_size: views per forward at most.
        share_prefix: compute the conditioned views' common prefix once.
        logits_chunk: elements (target rows × vocabulary) of one logits chunk when the output layer is not a
            plain linear layer; a plain one is reduced in cache-sized tiles (``tiled_nll``).
        engine: ``packed`` (views back to back in rows under a block-diagonal causal mask), ``padded``
            (right-padded batches, no mask) or ``auto``: packed where the attention implementation takes an
            explicit mask (``MASKED_ATTENTION``), the fast path is on and a check agrees; padded otherwise. The
            choice is ``self.engine``.
        rifd_target_start: where the r-IFD target starts (``DataCollatorForIFD``): ``reverse_prompt`` or
            ``release``.
        zero3_gather: for a student that DeepSpeed ZeRO-3 partitioned (``ForwardEngine``): ``layer`` or ``model``.
            Per layer, every process runs the same number of forwards: call ``finish`` when done, so a process out of
            work joins the others' forwards. ``close`` gives the parameters back.

    The engine's self-checks (fast path, packed mask) run forwards, so they run on first use (the first ``score``,
    ``plan`` or ``engine``), not here; under ZeRO-3, where every forward is collective, they run here, at the same
    point on every process.
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
        if isinstance(template, str):
            template = get_template(template, tokenizer)
        self.model = model
        self.tokenizer = tokenizer
        self.collator = DataCollatorForIFD(tokenizer, template, max_length, rifd_target_start)
        self.forwards = ForwardEngine(model, tokenizer, logits_chunk, zero3_gather)
        if self.forwards.batch_dependent:
            # LLM.int8() picks outlier columns from all rows of a product: a view's numbers would depend on the
            # other views in its batch (and on which prefix rows were cached). One whole view per forward.
            logger.warning("8-bit (LLM.int8) student: scoring one view per forward so scores do not depend on batching")
            max_batch_size, share_prefix = 1, False
        self.share_prefix = share_prefix and not has_sliding_window(self.forwards.config)
        self.device = self.forwards.device
        on_gpu = self.device.type == "cuda"
        self.planner = ForwardPlanner(
            token_budget if token_budget is not None else self._default_token_budget(),
            max_batch_size,
            attention_weight(self.forwards.config),
            GPU_BATCH_OVERHEAD if on_gpu else CPU_BATCH_OVERHEAD,
        )
        self._asked_engine = engine
        self._engine: str | None = None
        refusal = self.forwards.packed_refusal(max_length)
        if engine == "packed" and refusal is not None:
            raise ValueError(f"engine='packed' cannot score this model: {refusal}")
        if self.forwards.partitioned:
            self._engine = self._choose_engine()

    # -- engine and budget --------------------------------------------------------------------------------------

    @property
    def engine(self) -> str:
        """``packed`` or ``padded``: as asked, or, for ``auto``, chosen by the self-checks on first use."""
        if self._engine is None:
            self._engine = self._choose_engine()
        return self._engine

    @property
    def fast_path(self) -> bool:
        """Whether scoring runs the decoder and the output layer at target positions only (checked on first use)."""
        return self.forwards.fast_path

    @property
    def token_budget(self) -> int:
        return self.planner.token_budget

    @property
    def max_batch_size(self) -> int:
        return self.planner.max_batch_size

    def packed_refusal(self) -> str | None:
        """Why the packed engine cannot score with this model, or None when it can."""
        return self.forwards.packed_refusal(self.collator.max_length)

    def _choose_engine(self) -> str:
        self.forwards.fast_path  # noqa: B018 (the check runs forwards: first, at the same point on every process)
        if self._asked_engine != "auto":
            return self._asked_engine
        if self.packed_refusal() is not None or not self.fast_path or self.max_batch_size == 1:
            return "padded"
        if not self.forwards.packed_agrees(self.collator.pack, self.share_prefix):
            logger.warning("the model does not honour an explicit attention mask as expected: padded engine")
            return "padded"
        return "packed"

    def _default_token_budget(self) -> int:
        if self.device.type != "cuda":
            return CPU_TOKEN_BUDGET
        free, _ = torch.cuda.mem_get_info(self.device)
        # memory the caching allocator holds but no tensor uses is free to this process too
        free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        per_token = activation_bytes_per_token(
            self.forwards.config, self.forwards.dtype, self.collator.max_length, eager=self.forwards.attn == "eager"
        )
        return device_token_budget(free, per_token)

    def plan(self, lengths: Sequence[int], prefix_len: int = 0) -> list[list[list[int]]]:
        """Forwards of the engine for views of ``lengths`` tokens (after a ``prefix_len`` shared prefix):
        ``plan[f][r]`` lists the views of row ``r`` of forward ``f`` (one per row in the padded engine)."""
        return self.planner.plan(lengths, prefix_len, packed=self.engine == "packed")

    def finish(self) -> None:
        """Under ZeRO-3, join the other processes' forwards until none has work left (``ForwardEngine.finish``)."""
        self.engine  # noqa: B018 (a process with no shard still runs the self-checks, as the others did)
        self.forwards.finish()

    def close(self) -> None:
        """Give a ZeRO-3 student's parameters back and remove the hooks (``ForwardEngine.close``)."""
        self.forwards.close()

    def _batch_nll(
        self, rows: Sequence[Sequence[View]], prefix_len: int, prefix_kv: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """Summed NLL and target count of the views of one forward, in row order."""
        if self.engine == "packed":
            batch = self.collator.pack(rows, prefix_len)
        else:
            batch = self.collator.pad([v for row in rows for v in row], prefix_len)
            batch["view_index"] = torch.arange(len(rows))[:, None].expand_as(batch["input_ids"])
        return self.forwards.forward_nll(batch, sum(map(len, rows)), prefix_len, prefix_kv, self.engine == "packed")

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
        self.engine  # noqa: B018 (the self-checks run before the first forward of a group)
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
                groups.append((members, plen, self.forwards.prefix_kv(views[members[0]].input_ids[:plen])))
            else:
                rest += members
        groups.append((rest, 0, None))
        for members, plen, kv in groups:
            pending = self._score_group(views, members, plen, kv, losses, progress)
            while pending:
                # the failed forward's tensors are gone with its frames by now, so the cache can give them back
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self.planner.halve(len(pending))
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
            if self.forwards.lockstep:
                # the other processes are inside the same collective forward: they cannot re-plan with this one
                raise RuntimeError(
                    f"out of memory at a token budget of {self.token_budget} tokens per forward under ZeRO-3: set "
                    "a smaller --token_budget (every process must run the same forwards, so it cannot be halved "
                    "on the fly)"
                ) from None
            return [i for i in members if i not in done]
        finally:
            self.forwards.release()
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
                    row[col] = mean_over_turns([s[col] for s in stats])
                if sv.error is None:
                    row["ifd_turns"] = [s["ifd"] for s in stats]
                    row["rifd_turns"] = [s["rifd"] for s in stats]
            results.append(row)
        return results
