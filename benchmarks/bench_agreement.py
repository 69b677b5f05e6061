"""How far a cheaper scoring stands in for the student's own: the embedded student's fp32 scores against its bf16
scores of the same real rows, and against a smaller model of its family (its own first ``--proxy-layers`` decoder
layers, with its embeddings, final norm and head: real weights, half the depth), through `srt score` and
`srt agree` as a user runs them.

    python benchmarks/bench_agreement.py                   # the first 500 rows, bf16 and the 15-layer proxy
    python benchmarks/bench_agreement.py --rows 2000 --work /tmp/agree --dtypes float32 --proxy-layers 10

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
    ap.add_argument("--dtypes", default="float32,bfloat16", help="the student's dtypes (float32 first: the reference)")
    ap.add_argument("--proxy-layers", type=int, default=15, help="decoder layers of the proxy (0: no proxy)")
    args = ap.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-agree-"))
    work.mkdir(parents=True, exist_ok=True)
    seconds = {}
    runs = {dtype: ("embedded", dtype) for dtype in args.dtypes.split(",")}
    if args.proxy_layers:
        runs[f"proxy{args.proxy_layers}"] = (str(truncated_student(work / "proxy", args.proxy_layers)), "float32")
    for name, (model, dtype) in runs.items():
        out = work / f"ori.{name}.scores.jsonl"
        command = srt("score", "--data", args.data, "--limit", str(args.rows), "--output", str(out), "--dtype", dtype)
        command += ["--model", model]
        start = time.perf_counter()
        subprocess.run([*command, "--overwrite", "--plot", "false"], check=True, capture_output=True, text=True)
        seconds[name] = time.perf_counter() - start
    print(f"data: {Path(args.data).name}, first {args.rows} rows; embedded student; work {work}")
    print("srt score: " + ", ".join(f"{name} {s:.1f} s" for name, s in seconds.items()))
    reference, *others = runs
    results = {}
    for name in others:
        report = work / f"agreement.{name}.json"
        a, b = (str(work / f"ori.{n}.scores.jsonl") for n in (reference, name))
        got = subprocess.run(
            srt("agree", "--a", a, "--b", b, "--output", str(report), "--top_p", args.top_p),
            check=True,
            capture_output=True,
            text=True,
        )
        print(got.stdout)
        results[name] = {s["statistic"]: s for s in json.loads(report.read_text())["statistics"]}
    print(json.dumps({"seconds": seconds, "agreement": results}))


def truncated_student(folder: Path, layers: int) -> Path:
    """The embedded student cut to its first ``layers`` decoder layers (a smaller real model of its family)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from srt_trainer.models.embedded import ensure_embedded_model

    if (folder / "config.json").exists():
        return folder
    source = ensure_embedded_model()
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model.model.layers = model.model.layers[:layers]
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:layers]
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


if __name__ == "__main__":
    main()
