"""What every step runs with (``StepContext``) and the students they build or load."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpu_check.assets import pick, read_rows
from gpu_check.config import ALPACA, SHAPES, Sizes


@dataclass
class StepContext:
    """One step's inputs, and the numbers it has measured so far: ``record`` writes them to ``partial_file`` at
    once, so a step stopped at its time limit still reports them."""

    assets: Path
    work: Path
    sizes: Sizes
    dry: bool
    partial_file: Path
    partial: dict[str, Any] = field(default_factory=dict)

    def record(self, **values: Any) -> None:
        """Keep ``values`` (merged into what was recorded before)."""
        self.partial.update(values)
        self.partial_file.write_text(json.dumps(self.partial, indent=2, default=float))

    def rows(self, n: int, shortest: bool = False) -> list[dict[str, Any]]:
        """The first ``n`` carried Alpaca rows, or (``shortest``) the ``n`` shortest, in file order."""
        rows = read_rows(self.assets / "data" / ALPACA)
        return [rows[i] for i in pick(rows, n, shortest)]

    @property
    def dtype(self) -> str:
        """The dtype the step trains and scores in: bf16 on the GPU; fp32 on the CPU, where bf16 runs reference
        kernels (slow, and not what the dry run checks)."""
        return "float32" if self.dry else "bfloat16"


def device() -> str:
    """CUDA where there is one, else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def random_llama(shape: str, dtype: Any, on: str, tokenizer: Any) -> Any:
    """A Llama-architecture causal LM of ``SHAPES[shape]`` with random weights (seed 0), built directly on ``on``,
    with Llama-2's norm epsilon and untied output layer."""
    from srt_trainer.models.tiny import random_causal_lm

    return random_causal_lm(
        tokenizer,
        "llama",
        SHAPES[shape],
        dtype=dtype,
        device=on,
        attn_implementation="sdpa",
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )


def small_student(assets: Path, dtype: str, on: str) -> tuple[Any, Any, str]:
    """The embedded student where its package is installed; else its architecture with random weights (its
    weights do not fit in what travels to the GPU machine). Returns (model, tokenizer, which weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from srt_trainer.models import load_student, load_tokenizer
    from srt_trainer.models.embedded import EmbeddedModelError, find_embedded_gguf

    try:
        find_embedded_gguf()
    except EmbeddedModelError:
        tokenizer = load_tokenizer(assets / "smollm2")
        config = AutoConfig.from_pretrained(assets / "smollm2")
        torch.manual_seed(0)
        with torch.device(on):
            model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype), attn_implementation="sdpa")
        return model.eval(), tokenizer, "random weights (embedded architecture)"
    return load_student("embedded", dtype=dtype, device=on), load_tokenizer("embedded"), "embedded weights"


def max_rel(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], keys: Sequence[str] = ("ifd", "rifd")) -> float:
    """The largest relative difference of ``keys`` between two aligned score lists (a statistic missing in one
    and not the other counts as infinite)."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        for k in keys:
            if x[k] is None or y[k] is None:
                worst = worst if x[k] is None and y[k] is None else float("inf")
            else:
                worst = max(worst, abs(x[k] - y[k]) / abs(y[k]))
    return worst
