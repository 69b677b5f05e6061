"""Running the recipe as a user does (``accelerate launch recipes/sft_7b.py``) and reading what it logged."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gpu_check.config import REPO
from gpu_check.steps.base import StepContext

DEEPSPEED_WAIT_S = 240


def free_port() -> int:
    """A TCP port free on this machine now (for the launcher's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recipe_command(
    ctx: StepContext,
    config: str,
    accelerate_config: str,
    student: Path,
    out_dir: Path,
    processes: int,
    per_device: int,
    global_batch: int,
    extra: Sequence[str],
) -> list[str]:
    """``accelerate launch --config_file accelerate_configs/ACCELERATE_CONFIG recipes/sft_7b.py --config CONFIG``
    with the student, output, batch and the step's ``extra`` options (the dry run: fp32, no mixed precision)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    cmd += ["--config_file", str(REPO / "accelerate_configs" / accelerate_config)]
    cmd += ["--num_processes", str(processes), "--num_machines", "1", "--main_process_port", str(free_port())]
    cmd += ["--dynamo_backend", "no"]
    if ctx.dry:
        cmd += ["--mixed_precision", "no"]
    cmd += [str(REPO / "recipes" / "sft_7b.py"), "--config", str(REPO / config)]
    cmd += ["--model_name_or_path", str(student), "--output_dir", str(out_dir)]
    cmd += ["--per_device_train_batch_size", str(per_device), "--global_batch_size", str(global_batch)]
    cmd += ["--logging_steps", "1", "--report_to", "none", "--seed", "42"]
    if ctx.sizes.max_length:
        cmd += ["--max_length", str(ctx.sizes.max_length)]
    if ctx.dry:
        cmd += ["--bf16", "false", "--dtype", "float32"]
    return [*cmd, *extra]


def launch(cmd: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> None:
    """Run ``cmd`` with its output in ``log``; a failure raises with the log's tail."""
    full_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    full_env.update(env or {})
    with open(log, "w") as f:
        res = subprocess.run(list(cmd), stdout=f, stderr=subprocess.STDOUT, env=full_env, cwd=REPO)
    if res.returncode != 0:
        raise RuntimeError(f"exit {res.returncode}: {' '.join(cmd[:8])} ...\n{log.read_text()[-3000:]}")


def train_logs(out_dir: Path) -> list[dict[str, Any]]:
    """The training log entries (those with a loss) of the run's final state."""
    state = json.loads((out_dir / "trainer_state.json").read_text())
    return [e for e in state["log_history"] if "loss" in e]


def throughput(logs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean step time, tokens/s over the timed steps and peak memory, from the per-step training logs."""
    timed = [e for e in logs if "step_seconds" in e]
    out: dict[str, Any] = {"steps": len(logs), "final_loss": logs[-1]["loss"] if logs else None}
    if len(timed) >= 2:
        # the first step carries start-up work (allocations, kernel selection): time the rest
        steady = timed[1:]
        seconds = sum(e["step_seconds"] for e in steady)
        out["step_seconds"] = seconds / len(steady)
        out["tokens_per_s"] = (steady[-1]["num_tokens"] - timed[0]["num_tokens"]) / seconds
    else:
        out["step_seconds"] = out["tokens_per_s"] = None
        out["step_seconds_reason"] = out["tokens_per_s_reason"] = f"{len(timed)} timed step(s): 2 needed"
    out["max_memory_gib"] = max((e.get("max_memory_gib", 0.0) for e in logs), default=0.0) or None
    if out["max_memory_gib"] is None:
        out["max_memory_gib_reason"] = "the trainer logs peak memory on CUDA devices only"
    return out


def wait_for_deepspeed(work: Path, timeout: float = DEEPSPEED_WAIT_S) -> None:
    """The wrapper builds DeepSpeed in the background while the other steps run; wait for it (or its failure)."""
    marker = work / "deepspeed_install.rc"
    if not (work / "deepspeed_install.pending").exists():
        return
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"DeepSpeed was still building after {timeout:.0f} s")
        time.sleep(1)
    if marker.read_text().strip() != "0":
        log = work / "logs" / "deepspeed_install.log"
        raise RuntimeError(f"DeepSpeed did not install:\n{log.read_text()[-2000:] if log.is_file() else ''}")
