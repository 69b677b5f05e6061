"""Options of the scoring stage (``srt score``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ScoreConfig:
    """Options of ``srt score`` (YAML via ``--config``; every field also a flag)."""

    data: str = field(
        default=None,
        metadata={
            "help": "Rows to score: JSON, JSONL or Parquet (Alpaca, ShareGPT or "
            "chat messages), a save_to_disk folder or a hub id."
        },
    )
    output: str = field(
        default=None,
        metadata={"help": "Output file, .jsonl or .parquet: every input row, in order, with its statistics."},
    )
    model: str = field(default="embedded", metadata={"help": "The student: 'embedded', a folder or a hub id."})
    adapter: str | None = field(default=None, metadata={"help": "A PEFT (LoRA) adapter folder to apply on top."})
    template: str = field(
        default="vicuna",
        metadata={"help": "Prompt template of the statistics.", "choices": ["vicuna", "alpaca", "wizardlm", "chat"]},
    )
    dtype: str = field(
        default="float32", metadata={"help": "Compute dtype.", "choices": ["float32", "bfloat16", "float16"]}
    )
    max_length: int = field(default=2048, metadata={"help": "Truncation length of the released scorer."})
    token_budget: int | None = field(
        default=None,
        metadata={
            "help": "Tokens per forward, padding included (default: "
            "4096 on CPU; on CUDA derived from free memory, at most "
            "65536; halved on out-of-memory errors)."
        },
    )
    max_batch_size: int = field(default=128, metadata={"help": "Views per forward batch at most."})
    shard_size: int = field(default=256, metadata={"help": "Rows per checkpointed shard (the unit of resume)."})
    limit: int | None = field(default=None, metadata={"help": "Score only the first N rows of the file."})
    data_format: str = field(default="auto", metadata={"help": "auto, alpaca, sharegpt or messages."})
    device: str | None = field(
        default=None,
        metadata={
            "help": "cpu, cuda, cuda:N or auto (default: this process's device under accelerate, else CUDA if any)."
        },
    )
    load_in_4bit: bool = field(default=False, metadata={"help": "Quantize the student to 4 bits (bitsandbytes NF4)."})
    load_in_8bit: bool = field(default=False, metadata={"help": "Quantize the student to 8 bits (bitsandbytes)."})
    attn_implementation: str | None = field(default=None, metadata={"help": "sdpa, eager, flash_attention_2, ..."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the model's folder."})
    share_prefix: bool = field(
        default=True,
        metadata={"help": "Compute the shared template prefix's keys and values once (exact; off only to compare)."},
    )
    engine: str = field(
        default="auto",
        metadata={
            "help": "How views are laid out per forward: packed (back to back in rows under a block-diagonal "
            "causal mask, no padding), padded (right-padded batches), or auto: packed where the attention "
            "(sdpa, eager) takes an explicit mask, padded otherwise.",
            "choices": ["auto", "packed", "padded"],
        },
    )
    overwrite: bool = field(default=False, metadata={"help": "Discard finished shards of an earlier run."})
    plot: bool = field(default=True, metadata={"help": "Write the IFD / r-IFD histogram PNG beside the output."})

    def fingerprint_settings(self) -> dict[str, Any]:
        """What changes the numbers: a resumed run must match these."""
        keys = (
            "model",
            "adapter",
            "template",
            "dtype",
            "max_length",
            "token_budget",
            "max_batch_size",
            "load_in_4bit",
            "load_in_8bit",
            "attn_implementation",
            "share_prefix",
            "engine",
        )
        return {k: getattr(self, k) for k in keys}
