"""Scoring under DeepSpeed ZeRO-3: per-layer gathering (the default) against a whole-model gather, with plain
data-parallel scoring (``multi_gpu.yaml``, a full copy per process) as the baseline, all in one run.

    python benchmarks/bench_zero3.py [--rows 64] [--processes 2] [--model embedded]

Each case is a real ``accelerate launch ... srt score`` of the same rows; the table gives wall seconds and the
largest resident memory of one worker process (sampled every 0.1 s). On a machine without CUDA, DeepSpeed runs on
its CPU accelerator (``DS_ACCELERATOR=cpu``, gloo), as the test suite does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CASES = {
    "multi_gpu (full copy per process)": ("multi_gpu", []),
    "ZeRO-3, per-layer gather": ("deepspeed_zero3", ["--zero3_gather", "layer"]),
    "ZeRO-3, whole-model gather": ("deepspeed_zero3", ["--zero3_gather", "model"]),
}


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_case(config: str, extra: list[str], data: Path, model: str, processes: int, work: Path) -> dict:
    output = work / f"{config}-{'-'.join(extra) or 'plain'}.jsonl"
    cmd = [str(BIN / "accelerate"), "launch", "--config_file", str(REPO / "accelerate_configs" / f"{config}.yaml")]
    cmd += ["--num_processes", str(processes), "--mixed_precision", "no", "-m", "srt_trainer.cli", "score"]
    cmd += ["--data", str(data), "--output", str(output), "--model", model, "--plot", "false", "--shard_size", "8"]
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"), "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        try:
            workers = psutil.Process(proc.pid).children(recursive=True)
            peak = max([peak, *(w.memory_info().rss for w in workers if "python" in w.name())])
        except psutil.Error:
            pass
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}\n{err[-3000:]}")
    return {"seconds": seconds, "peak_rss_gib": peak / 2**30, "output": output}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--data", default=str(REPO / "tests" / "data" / "alpaca_slice.json"))
    args = parser.parse_args()
    from srt_trainer.io import read_rows
    from srt_trainer.models import resolve_model_path

    model = resolve_model_path(args.model)
    rows = json.loads(Path(args.data).read_text())[: args.rows]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "rows.json"
        data.write_text(json.dumps(rows))
        results = {name: run_case(c, extra, data, model, args.processes, work) for name, (c, extra) in CASES.items()}
        base = read_rows(next(iter(results.values()))["output"])
        for r in results.values():
            other = read_rows(r["output"])
            r["max_rel_ifd"] = max(
                abs(a["ifd"] - b["ifd"]) / abs(b["ifd"]) for a, b in zip(other, base, strict=True) if b["ifd"]
            )
    print(f"CPU: {_cpu()}; {args.rows} rows, {args.processes} processes, student {Path(model).name}")
    print("| case | seconds | peak RSS per worker (GiB) | vs multi_gpu | max rel. IFD difference |")
    print("|---|---:|---:|---:|---:|")
    first = next(iter(results.values()))["seconds"]
    for name, r in results.items():
        print(
            f"| {name} | {r['seconds']:.1f} | {r['peak_rss_gib']:.2f} | {r['seconds'] / first:.2f}x | "
            f"{r['max_rel_ifd']:.1e} |"
        )


if __name__ == "__main__":
    main()
