"""The evaluation step: ``srt eval generate`` from the LoRA adapter on a slice of a test set."""

from __future__ import annotations

import json
import sys
from typing import Any

from gpu_check.config import EVAL_SET
from gpu_check.steps.base import StepContext
from gpu_check.steps.launch import launch


def step_eval(ctx: StepContext) -> dict[str, Any]:
    """Answers of the 1B student with the ``train_lora`` adapter, in two shards: generated tokens per second."""
    from tokenizers import Tokenizer  # counting tokens needs no transformers import (seconds on a CPU)

    s, adapter = ctx.sizes, ctx.work / "train_lora"
    if not (adapter / "adapter_model.safetensors").is_file():
        raise RuntimeError("no LoRA adapter: the train_lora step did not finish")
    output = ctx.work / "eval" / "answers.jsonl"
    batch = max(1, s.eval_items // 2)  # two shards: the log shows progress midway
    cmd = [sys.executable, "-m", "srt_trainer.cli", "eval", "generate"]
    cmd += ["--test_sets", str(ctx.assets / "data" / EVAL_SET), "--output", str(output)]
    cmd += ["--model", str(ctx.work / "student_1b"), "--adapter", str(adapter), "--limit", str(s.eval_items)]
    cmd += ["--batch_size", str(batch), "--shard_size", str(batch), "--max_new_tokens", str(s.eval_new_tokens)]
    cmd += ["--dtype", ctx.dtype]
    launch(cmd, ctx.work / "logs" / "eval.log")
    summary = json.loads(output.with_name("answers.summary.json").read_text())
    tokenizer = Tokenizer.from_file(str(ctx.work / "student_1b" / "tokenizer.json"))
    answers = [json.loads(line)["output"] for line in output.read_text().splitlines()]
    tokens = sum(len(tokenizer.encode(a, add_special_tokens=False).ids) for a in answers)
    return {
        "ok": len(answers) == s.eval_items and tokens > 0,
        "answers": len(answers),
        "generated_tokens": tokens,
        "seconds": summary["seconds"],
        "tokens_per_s": tokens / summary["seconds"],
    }
