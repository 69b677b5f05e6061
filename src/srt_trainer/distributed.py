"""accelerate's process state, set up so that a multi-process launch also works on machines without CUDA."""

from __future__ import annotations

from typing import Any


def get_state() -> Any:
    """The shared ``accelerate.PartialState``.

    accelerate forms a CPU process group (gloo) only when asked for CPU, and its ``--cpu`` launch flag starts a
    single process; so on a machine without CUDA we ask for CPU here, and ``accelerate launch --multi_gpu
    --num_processes N`` starts N CPU processes that share the work.
    """
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())
