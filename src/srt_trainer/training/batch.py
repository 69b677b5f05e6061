"""Global-batch arithmetic: the paper's batch of 128 holds on any number of processes.

global batch = per-device batch × gradient accumulation × number of processes, so the accumulation is derived
from the other three at start-up instead of being set by hand for every cluster size.
"""

from __future__ import annotations

import os

from srt_trainer.errors import SRTUserError


class GlobalBatchError(SRTUserError, ValueError):
    """The requested global batch cannot be split over the per-device batch and the processes."""


def world_size_from_env() -> int:
    """Number of processes of this launch as the launchers announce it (``accelerate``, ``torchrun``, DeepSpeed)."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def gradient_accumulation_for(global_batch_size: int, per_device_batch_size: int, world_size: int) -> int:
    """Accumulation steps that make ``per_device_batch_size × steps × world_size == global_batch_size``.

    Raises ``GlobalBatchError`` naming the numbers to change when no whole number of steps fits.
    """
    if global_batch_size < 1 or per_device_batch_size < 1 or world_size < 1:
        raise GlobalBatchError(
            f"global_batch_size ({global_batch_size}), per_device_train_batch_size ({per_device_batch_size}) and "
            f"the number of processes ({world_size}) must all be at least 1"
        )
    per_step = per_device_batch_size * world_size
    if global_batch_size % per_step:
        per_process = global_batch_size / world_size
        fits = (
            f"per_device_train_batch_size to a divisor of {global_batch_size // world_size} "
            f"({', '.join(map(str, _divisors(global_batch_size // world_size)))})"
            if per_process.is_integer()
            else f"the number of processes to a divisor of {global_batch_size}"
        )
        raise GlobalBatchError(
            f"global_batch_size={global_batch_size} cannot be met: per_device_train_batch_size="
            f"{per_device_batch_size} × {world_size} process(es) = {per_step} samples per step does not divide it. "
            f"Change {fits}, or --global_batch_size to a multiple of {per_step}."
        )
    return global_batch_size // per_step
