"""Options of the reflection stage (``srt reflect``): its own below, the teacher's in ``TeacherArguments``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from srt_trainer.io import sidecar_path
from srt_trainer.teachers.config import TeacherArguments


@dataclass
class ReflectArguments:
    """What ``srt reflect`` rewrites and where it goes (YAML via ``--config``; every field also a flag, spelled
    ``--prompt-template`` or ``--prompt_template``); parsed with ``TeacherArguments``."""

    mode: str = field(
        metadata={
            "help": "instruction: a new, harder instruction and its answer "
            "(variant Q); response: a better answer (A, or QA on a Q file).",
            "choices": ["instruction", "response"],
        },
    )
    data: str = field(
        metadata={
            "help": "Rows to reflect: JSON, JSONL or Parquet (Alpaca, ShareGPT or "
            "chat messages), a save_to_disk folder or a hub id."
        },
    )
    output: str = field(
        metadata={
            "help": "Output file, .jsonl or .parquet: one row per input row, in "
            "order. Raw teacher texts go to <stem>.raw.jsonl, counts to "
            "<stem>.summary.json."
        },
    )
    variant: str = field(
        default="auto",
        metadata={
            "help": "Response mode: A (original rows) or QA (rows of an "
            "instruction-mode output); auto reads the rows' variant column.",
            "choices": ["auto", "Q", "A", "QA"],
        },
    )
    prompt_template: str | None = field(
        default=None,
        metadata={
            "help": "Your own prompts for this mode: YAML/JSON "
            "with system, user (and prefix) keys, or a text file with the user template. "
            "Fields: {instruction}, {input}, {output}, {input_section}."
        },
    )
    limit: int | None = field(default=None, metadata={"help": "Reflect only the first N rows of the file."})
    data_format: str = field(default="auto", metadata={"help": "auto, alpaca, sharegpt or messages."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar (rows/s and tokens)."})

    def cache_path(self, teacher: TeacherArguments) -> Path:
        """The teacher's cache for this output (``teacher_cache``, else beside the output)."""
        return teacher.cache_path(sidecar_path(self.output, "teacher-cache.jsonl"))
