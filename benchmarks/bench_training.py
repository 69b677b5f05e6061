"""Training speed: padded batches (TRL's default) versus padding-free batches, same rows, model and settings.

Both runs train the same student from the same weights on the same real Alpaca rows (the paper's prompt /
response loss, truncation at ``--max-length``) with ``SRTSFTTrainer``; only ``padding_free`` differs. Padded batches
are as long as their longest sample; padding-free ones lay the samples back to back in one row. Prints the mean
optimizer-step time (the first step left out), the trained tokens per second, the share of padding in the padded
batches, the ratio, and the first steps' losses of both runs (the same samples, so they agree closely).

    python benchmarks/bench_training.py                      # 2-core CPU, embedded student
    python benchmarks/bench_training.py --device cuda --model PATH --rows 512 --per-device-batch 16 --steps 6
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch

from srt_trainer.models import load_student, load_tokenizer, resolve_model_path
from srt_trainer.training import SRTSFTTrainer, build_sft_dataset
from srt_trainer.training.cli import make_parser

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cherry_alpaca_5_percent.json"
FALLBACK_DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "alpaca_slice.json"


def run(mode: str, args: argparse.Namespace, rows: list[dict], folder: Path) -> dict[str, Any]:
    """Train ``args.steps`` optimizer steps in ``mode`` (padded or padding_free); the per-step logs and padding."""
    torch.manual_seed(0)
    path = resolve_model_path(args.model)
    tokenizer = load_tokenizer(path)
    dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    model = load_student(path, dtype=dtype, device=args.device)
    dataset = build_sft_dataset(rows, args.template, tokenizer)
    argv = ["--output_dir", str(folder / mode), "--max_steps", str(args.steps), "--max_length", str(args.max_length)]
    argv += ["--per_device_train_batch_size", str(args.per_device_batch), "--global_batch_size", str(args.global_batch)]
    argv += ["--logging_steps", "1", "--report_to", "none", "--save_strategy", "no", "--seed", "0", "--no_plot"]
    argv += ["--gradient_checkpointing", str(args.checkpointing).lower(), "--warmup_steps", "0"]
    argv += ["--padding_free", str(mode == "padding_free").lower(), "--dataloader_num_workers", "0"]
    if not args.device.startswith("cuda"):
        argv += ["--bf16", "false"]
    _, training, *_ = make_parser().parse_args_and_config(argv)
    trainer = SRTSFTTrainer(model=model, args=training, train_dataset=dataset, processing_class=tokenizer)
    padded_slots = real = 0
    if mode == "padded":  # what the padded batches hold: the longest sample's length per row
        for batch in trainer.get_train_dataloader():
            padded_slots += batch["input_ids"].numel()
            real += int(batch["attention_mask"].sum())
    trainer.train()
    logs = [e for e in trainer.state.log_history if "step_seconds" in e]
    steady = logs[1:]
    tokens = steady[-1]["num_tokens"] - logs[0]["num_tokens"]
    seconds = sum(e["step_seconds"] for e in steady)
    return {
        "mode": mode,
        "step_seconds": seconds / len(steady),
        "tokens_per_s": tokens / seconds,
        "losses": [round(e["loss"], 4) for e in logs],
        "padding_share": 1 - real / padded_slots if padded_slots else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--data", default=str(DEFAULT_DATA if DEFAULT_DATA.is_file() else FALLBACK_DATA))
    parser.add_argument("--rows", type=int, default=64, help="Rows trained on (the first of the file).")
    parser.add_argument("--template", default="vicuna")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=4, help="Optimizer steps per run (the first is not timed).")
    parser.add_argument("--per-device-batch", type=int, default=8)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--checkpointing", action="store_true", help="Activation checkpointing (the recipes' way).")
    args = parser.parse_args()

    rows = json.loads(Path(args.data).read_text())[: args.rows]
    with tempfile.TemporaryDirectory() as tmp:
        results = [run(mode, args, rows, Path(tmp)) for mode in ("padded", "padding_free")]
    base = results[0]
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{args.model} on {args.device}: {len(rows)} rows of {Path(args.data).name}, {args.steps} steps of")
    print(f"{args.global_batch} samples ({args.per_device_batch} per forward), max_length {args.max_length}")
    print(f"padding in the padded batches: {base['padding_share']:.0%} of their tokens")
    print("| batches | step time | trained tokens/s | × padded | losses |")
    print("|---|---:|---:|---:|---|")
    for r in results:
        ratio = r["tokens_per_s"] / base["tokens_per_s"]
        losses = ", ".join(f"{x:.4f}" for x in r["losses"])
        print(f"| {r['mode']} | {r['step_seconds']:.2f} s | {r['tokens_per_s']:,.0f} | {ratio:.2f}× | {losses} |")


if __name__ == "__main__":
    main()
