"""The driver: each step in a process of its own under its time limit (``drive_step``), the steps in order under
the check's deadline (``run_check``), the report rewritten after every step; and the step process's entry
(``run_step``)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpu_check.config import DRY, GPU, REPO, Sizes
from gpu_check.report import build_report, device_info, write_report

BENCHMARKS = Path(__file__).resolve().parents[1]


def sizes_for(dry: bool) -> Sizes:
    """The dry run's sizes, or the GPU check's."""
    return DRY if dry else GPU


def run_step(name: str, assets: Path, work: Path, dry: bool) -> int:
    """Step-process entry: run one step and write its result (or its error, with what it measured before) as
    JSON."""
    from gpu_check.steps import STEP_FUNCTIONS, StepContext

    results = work / "results"
    ctx = StepContext(assets, work, sizes_for(dry), dry, results / f"{name}.partial.json")
    try:
        result = {"ok": True, **STEP_FUNCTIONS[name](ctx)}
    except Exception as e:  # the report says why; the driver goes on with the next step
        result = {
            **ctx.partial,
            "ok": False,
            "error": f"{type(e).__name__}: {e}"[-2000:],
            "traceback": traceback.format_exc()[-4000:],
        }
    (results / f"{name}.json").write_text(json.dumps(result, indent=2, default=float))
    return 0 if result["ok"] else 1


class MemorySampler:
    """Peak memory while a step runs: GPU memory in use (nvidia-smi) on a GPU machine, else the resident memory
    of the step's process tree."""

    def __init__(self, pid: int, gpu: bool, every: float = 0.5) -> None:
        self.pid, self.gpu, self.every, self.peak_gib = pid, gpu, every, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> float:
        if self.gpu:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
            return max(float(x) for x in out.split()) / 1024
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        total = 0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total / 2**30

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.peak_gib = max(self.peak_gib, self._sample())
            self._stop.wait(self.every)

    def stop(self) -> float:
        """Stop sampling; the peak seen, in GiB."""
        self._stop.set()
        self._thread.join()
        return self.peak_gib


def step_env() -> dict[str, str]:
    """The environment of a step process: this one's, with the check's package importable."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(BENCHMARKS), path) if p)}


def drive_step(name: str, assets: Path, work: Path, dry: bool, limit: float, gpu: bool) -> dict[str, Any]:
    """Run step ``name`` in its own process (session), killing it and everything it started at ``limit`` seconds;
    its result, or what it recorded before it was stopped."""
    log = work / "logs" / f"{name}.log"
    cmd = [sys.executable, "-m", "gpu_check", "_step", name, "--assets", str(assets), "--work", str(work)]
    if dry:
        cmd.append("--dry-run")
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO, env=step_env()
        )
        sampler = MemorySampler(proc.pid, gpu)
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the step and every process it launched
            proc.wait()
        peak = sampler.stop()
    seconds = time.perf_counter() - start
    result_file = work / "results" / f"{name}.json"
    partial_file = work / "results" / f"{name}.partial.json"
    partial = json.loads(partial_file.read_text()) if partial_file.is_file() else {}
    if result_file.is_file():
        result = json.loads(result_file.read_text())
    elif seconds >= limit:
        result = {**partial, "ok": False, "error": f"stopped at its time limit of {limit:.0f} s"}
    else:
        result = {**partial, "ok": False, "error": f"exited {proc.returncode} without a result: see {log.name}"}
    result["wall_seconds"] = seconds
    result["limit_seconds"] = limit
    result["peak_memory_gib_sampled"] = peak
    return result


def run_check(assets: Path, out: Path, work: Path, dry: bool, steps: Sequence[str]) -> dict[str, Any]:
    """Run ``steps`` in order, each in its own process under its time limit (never past the deadline), and write
    the report after each."""
    sizes = sizes_for(dry)
    started = time.perf_counter()
    deadline = started + sizes.deadline_s
    for folder in (out, work / "results", work / "logs"):
        folder.mkdir(parents=True, exist_ok=True)
    gpu = not dry and shutil.which("nvidia-smi") is not None
    device = device_info()
    results: dict[str, dict[str, Any]] = {}
    report = build_report(results, dry, 0.0, device, sizes.as_dict())
    for name in steps:
        left = deadline - time.perf_counter()
        if left < 10:
            continue
        results[name] = drive_step(name, assets, work, dry, min(sizes.limit(name), left), gpu)
        status = "ok" if results[name].get("ok") else f"FAILED: {results[name].get('error', '').splitlines()[0]}"
        print(f"[{time.perf_counter() - started:6.0f} s] {name}: {status}", flush=True)
        # written after every step: a check cut short by its caller still leaves what it measured
        report = build_report(results, dry, time.perf_counter() - started, device, sizes.as_dict())
        write_report(report, out, work)
    return report
