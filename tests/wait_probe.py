"""Run by ``accelerate launch`` with two processes (tests/test_deepspeed.py): the main process works longer than the
other process's process-group time-out while the other waits for it in ``on_main_process``; then both meet in a
collective. The short time-out holds on the waiting process alone and around that wait only, so no other collective
of the launch (forming the group, the last ones) depends on how fast a loaded machine starts or schedules the two.

Then the control: the same wait at a barrier, which ends at the time-out.

    python tests/wait_probe.py FOLDER SECONDS
"""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.distributed_c10d import _set_pg_timeout

from srt_trainer.distributed import get_state, on_main_process

LONG = timedelta(minutes=30)


def main(folder: Path, seconds: float) -> None:
    state = get_state()
    rank = state.process_index

    def work() -> str:
        time.sleep(2 * seconds)
        return "done"

    # 1. the waiting process's time-out is short from just before the token broadcast that starts the wait
    entering = folder / "entering"
    state.wait_for_everyone()
    if state.is_main_process:
        entering.touch()  # about to send the token
    else:
        while not entering.exists():
            time.sleep(0.05)
        time.sleep(1)  # the token is sent by now: this process's receive does not wait
        _set_pg_timeout(timedelta(seconds=seconds))
    start = time.monotonic()
    result = on_main_process(work, folder / "work.done", poll=0.2)
    print(f"rank {rank}: {result} after {time.monotonic() - start:.1f} s", flush=True)
    _set_pg_timeout(LONG)
    total = torch.tensor([1.0])
    dist.all_reduce(total)
    print(f"rank {rank}: {int(total.item())} processes went on together", flush=True)

    # 2. the control: the same wait at a barrier (each process's time-out short; the main process arrives last)
    _set_pg_timeout(timedelta(seconds=seconds))
    if state.is_main_process:
        work()
    try:
        dist.barrier()
        print(f"rank {rank}: the barrier held", flush=True)
    except RuntimeError as e:
        print(f"rank {rank}: the barrier ended: {e}", flush=True)
    # the time-out left the group broken: tearing it down at exit can abort the process, so leave without that
    os._exit(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]), float(sys.argv[2]))
