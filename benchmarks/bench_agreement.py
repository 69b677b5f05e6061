"""How far a cheaper scoring stands in for the student's own: the embedded student's fp32 scores against its bf16
scores of the same real rows, through `srt score` and `srt agree` as a user runs them.

    python benchmarks/bench_agreement.py                   # the first 500 rows
    python benchmarks/bench_agreement.py --rows 2000 --work /tmp/agree

Data: ``--data``, else ``$SRT_BENCH_DATA``, else ``tests/data/alpaca_slice.json``. Prints the seconds of each
scoring and the agreement table; the report and its scatter plot stay in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FALLBACK_DATA = REPO / "tests" / "data" / "alpaca_slice.json"


def srt(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("srt")), *args]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("SRT_BENCH_DATA") or str(FALLBACK_DATA))
    ap.add_argument("--rows", type=int, default=500)
    ap.add_argument("--work", default=None, help="folder for the score files and the report (default: temporary)")
    ap.add_argument("--top-p", default="0.1")
    args = ap.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-agree-"))
    work.mkdir(parents=True, exist_ok=True)
    seconds = {}
    for dtype in ("float32", "bfloat16"):
        out = work / f"ori.{dtype}.scores.jsonl"
        command = srt("score", "--data", args.data, "--limit", str(args.rows), "--output", str(out), "--dtype", dtype)
        start = time.perf_counter()
        subprocess.run([*command, "--overwrite", "--plot", "false"], check=True, capture_output=True, text=True)
        seconds[dtype] = time.perf_counter() - start
    report = work / "agreement.json"
    a, b = (str(work / f"ori.{d}.scores.jsonl") for d in ("float32", "bfloat16"))
    got = subprocess.run(
        srt("agree", "--a", a, "--b", b, "--output", str(report), "--top_p", args.top_p),
        check=True,
        capture_output=True,
        text=True,
    )
    print(f"data: {Path(args.data).name}, first {args.rows} rows; embedded student; work {work}")
    print(f"srt score: fp32 {seconds['float32']:.1f} s, bf16 {seconds['bfloat16']:.1f} s")
    print(got.stdout)
    stats = {s["statistic"]: s for s in json.loads(report.read_text())["statistics"]}
    print(json.dumps({"seconds": seconds, "statistics": stats}))


if __name__ == "__main__":
    main()
