"""Per-step wall time and peak accelerator memory in the training logs.

TRL and transformers log loss, learning rate and token counts, but not how long an optimizer step took or how much
memory it needed; both are what one compares between ZeRO stages, LoRA and QLoRA. ``StepTimeCallback`` times each
optimizer step (forward, backward and optimizer over the accumulated micro-batches; saving and logging excluded),
and ``SRTSFTTrainer.log`` adds ``step_seconds`` (mean since the last log) and ``max_memory_gib`` to every training
log, so they reach the trainer state and every logger the run reports to.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import TrainerCallback


def _synchronize() -> None:
    # kernels run asynchronously: without a sync the step would be timed at its launch, not its end
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class StepTimeCallback(TrainerCallback):
    """Collects the wall time of each optimizer step until ``pop`` takes them."""

    def __init__(self) -> None:
        self._start: float | None = None
        self._seconds: list[float] = []

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        _synchronize()
        self._start = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._start is not None:
            _synchronize()
            self._seconds.append(time.perf_counter() - self._start)
            self._start = None

    def pop(self) -> list[float]:
        """The step times recorded since the last call."""
        seconds, self._seconds = self._seconds, []
        return seconds


def step_metrics(timer: StepTimeCallback) -> dict[str, float]:
    """``step_seconds`` (mean over the steps since the last log) and ``max_memory_gib`` (peak allocated on this
    process's CUDA device since the start), where there is something to report."""
    out: dict[str, float] = {}
    seconds = timer.pop()
    if seconds:
        out["step_seconds"] = sum(seconds) / len(seconds)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out
