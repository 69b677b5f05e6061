"""accelerate's process state, set up so that a multi-process launch also works on machines without CUDA."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def get_state() -> Any:
    """The shared ``accelerate.PartialState``.

    accelerate forms a CPU process group (gloo) only when asked for CPU, and its ``--cpu`` launch flag starts a
    single process; so on a machine without CUDA we ask for CPU here, and ``accelerate launch --multi_gpu
    --num_processes N`` starts N CPU processes that share the work.
    """
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def deepspeed_plugin_from_launch() -> Any:
    """The DeepSpeed plugin that ``accelerate launch --config_file <deepspeed config>`` describes in the processes'
    environment, or None outside such a launch."""
    import os

    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.environment import str_to_bool

    if not str_to_bool(os.environ.get("ACCELERATE_USE_DEEPSPEED", "false")):
        return None
    return DeepSpeedPlugin()


@contextlib.contextmanager
def zero3_init(dtype: str | None) -> Iterator[bool]:
    """Models loaded in the block are partitioned across the processes as they load (DeepSpeed's ``zero.Init``),
    as the trainer's are, when the launch's DeepSpeed config is ZeRO-3 with ``zero3_init_flag``: each process then
    holds only its slice, so a student larger than one device loads. Yields whether that is so. A no-op where
    transformers already has a DeepSpeed config (the trainer's arguments set one)."""
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config

    plugin = deepspeed_plugin_from_launch()
    if plugin is None or plugin.zero_stage != 3 or not plugin.zero3_init_flag or is_deepspeed_zero3_enabled():
        yield is_deepspeed_zero3_enabled()
        return
    get_state()  # the process group zero.Init partitions over
    plugin.set_mixed_precision({"bfloat16": "bf16", "float16": "fp16"}.get(str(dtype), "no"))
    plugin.set_deepspeed_weakref()  # what transformers' from_pretrained reads to load under zero.Init
    try:
        yield True
    finally:
        unset_hf_deepspeed_config()


class MainProcessFailedError(RuntimeError):
    """The main process failed in work the other processes were waiting for (its own error says why)."""


def on_main_process(work: Callable[[], T], marker: str | Path, poll: float = 1.0) -> T | None:
    """``work()`` on the main process while the others wait for it; its result there, None elsewhere.

    The others wait by watching ``marker`` (a file on storage every process sees, as output folders already must
    be), not at a barrier: a barrier ends at the process group's time-out (``ddp_timeout``, 30 minutes by
    default), and work like a teacher's reflection of a large file takes hours. A token broadcast first keeps a
    marker left by an earlier run from counting. If the main process dies, the launcher stops the others.
    """
    import json
    import time
    import uuid

    from accelerate.utils import broadcast_object_list

    state = get_state()
    if state.num_processes == 1:
        return work()
    token = broadcast_object_list([uuid.uuid4().hex if state.is_main_process else None])[0]
    marker = Path(marker)
    if state.is_main_process:
        from srt_trainer.io import write_text_atomic

        marker.parent.mkdir(parents=True, exist_ok=True)
        try:
            result = work()
        except BaseException as e:
            write_text_atomic(json.dumps({"token": token, "error": f"{type(e).__name__}: {e}"}), marker)
            raise
        write_text_atomic(json.dumps({"token": token, "error": None}), marker)
        return result
    while True:
        try:
            seen = json.loads(marker.read_text())
        except (OSError, ValueError):
            seen = {}
        if seen.get("token") == token:
            if seen["error"]:
                raise MainProcessFailedError(f"the main process failed: {seen['error']}")
            return None
        time.sleep(poll)
