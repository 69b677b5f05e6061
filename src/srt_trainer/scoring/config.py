"""Options of scoring: how the student computes IFD / r-IFD (``ScoringArguments``, shared by ``srt score``,
``srt train`` and ``srt run``) and what ``srt score`` reads and writes (``ScoreArguments``). The student itself is
``SRTModelConfig``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from srt_trainer.models.config import student_settings
from srt_trainer.options import offset_field


@dataclass
class ScoringArguments:
    """How the student's IFD / r-IFD statistics are computed (Section 2 of the paper)."""

    score_max_length: int = field(
        default=2048,
        metadata={"help": "Truncation length of the released scorer, in tokens (`srt score` also reads --max_length)."},
    )
    token_budget: int | None = field(
        default=None,
        metadata={
            "help": "Tokens per scoring forward, padding included (default: 4096 on CPU; on CUDA derived from free "
            "memory, at most 65536; halved on out-of-memory errors)."
        },
    )
    max_batch_size: int = field(default=128, metadata={"help": "Views per scoring forward at most."})
    shard_size: int = field(default=256, metadata={"help": "Rows per checkpointed scoring shard (the unit of resume)."})
    share_prefix: bool = field(
        default=True,
        metadata={"help": "Compute the shared template prefix's keys and values once (exact; off only to compare)."},
    )
    rifd_target_start: str = field(
        default="reverse_prompt",
        metadata={
            "help": "Where the r-IFD target starts in reverse(y) + x: reverse_prompt (after the reverse prompt: the "
            "paper's x, instruction + input) or release (at the last occurrence of the instruction's text, as the "
            "released scorer finds it: an empty instruction then has no r-IFD, and an instruction repeated in its "
            "input starts the target there).",
            "choices": ["reverse_prompt", "release"],
        },
    )
    engine: str = field(
        default="auto",
        metadata={
            "help": "How views are laid out per forward: packed (back to back in rows under a block-diagonal causal "
            "mask, no padding), padded (right-padded batches), or auto: packed where the attention (sdpa, eager) "
            "takes an explicit mask, padded otherwise.",
            "choices": ["auto", "packed", "padded"],
        },
    )

    zero3_gather: str = field(
        default="layer",
        metadata={
            "help": "For a student that DeepSpeed ZeRO-3 partitions: gather one decoder layer at a time while scoring "
            "(layer: memory stays about one layer above the partition, so a student of any size scores) or the "
            "whole model once (model: no gathering per forward, for a student whose full copy fits on every device).",
            "choices": ["layer", "model"],
        },
    )

    def scorer_options(self) -> dict[str, Any]:
        """Keyword arguments of ``IFDScorer``."""
        return {
            "max_length": self.score_max_length,
            "token_budget": self.token_budget,
            "max_batch_size": self.max_batch_size,
            "share_prefix": self.share_prefix,
            "engine": self.engine,
            "rifd_target_start": self.rifd_target_start,
            "zero3_gather": self.zero3_gather,
        }


@dataclass
class ScoreArguments:
    """What ``srt score`` reads and writes (YAML via ``--config``; every field also a flag)."""

    data: str = field(
        metadata={
            "help": "Rows to score: JSON, JSONL or Parquet (Alpaca, ShareGPT or chat messages), a save_to_disk "
            "folder or a hub id."
        },
    )
    output: str = field(
        metadata={"help": "Output file, .jsonl or .parquet: every input row, in order, with its statistics."},
    )
    limit: int | None = field(default=None, metadata={"help": "Score only the first N rows of the file."})
    offset: int = offset_field()
    data_format: str = field(default="auto", metadata={"help": "auto, alpaca, sharegpt or messages."})
    overwrite: bool = field(default=False, metadata={"help": "Discard finished shards of an earlier run."})
    plot: bool = field(default=True, metadata={"help": "Write the IFD / r-IFD histogram PNG beside the output."})


def fingerprint_settings(scoring: ScoringArguments, model_args: Any) -> dict[str, Any]:
    """What changes the numbers (shard size aside): a resumed run must match these."""
    settings = {k: v for k, v in asdict(scoring).items() if k not in ("shard_size", "zero3_gather")}
    return settings | student_settings(model_args)
