"""Options of reflection: how rewrites are made (``ReflectionArguments``, shared by ``srt reflect`` and ``srt run``)
and what ``srt reflect`` reads and writes (``ReflectArguments``); the teacher's are ``TeacherArguments``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from srt_trainer.errors import SRTUserError
from srt_trainer.io import sidecar_path
from srt_trainer.options import offset_field
from srt_trainer.reflection.parsers import REJECTION_RULES
from srt_trainer.teachers.config import TeacherArguments

FALLBACKS = ("field", "row")
TEACHER_VIEWS = ("release", "as_is")


class ReflectConfigError(SRTUserError, ValueError):
    """Options of ``srt reflect`` that cannot work together or at all."""


@dataclass
class ReflectionArguments:
    """How a teacher's rewrite is made and judged usable (Section 2 of the paper; shared by ``srt reflect`` and
    ``srt run``). The defaults follow the authors' released scripts; each option gives back this package's earlier
    behaviour (docs/fidelity.md)."""

    fallback: str = field(
        default="field",
        metadata={
            "help": "Instruction mode, when only one part of the teacher's reply is usable: field (as released) keeps "
            "the usable part with the original other part (a new instruction with the original answer, which the QA "
            "step then rewrites; or the original instruction with a new answer); row keeps the whole original row.",
            "choices": list(FALLBACKS),
        },
    )
    reject_rule: str = field(
        default="whole",
        metadata={
            "help": "When a tagged part is unusable: whole judges the whole part (a placeholder such as 'your "
            "answer', an answer that is only N/A; repeated tags tolerated, the first usable part taken); substring "
            "is the release's test (the part merely contains 'your instruction', 'your answer' or 'N/A', and a "
            "response reflection must hold exactly one [Better Answer]).",
            "choices": list(REJECTION_RULES),
        },
    )
    teacher_view: str = field(
        default="release",
        metadata={
            "help": "What the teacher sees. release: fields stripped; in instruction mode the input folded into the "
            "instruction (the new row has an empty input); a pair over max_pair_tokens has its answer cut. as_is: "
            "the row's fields untouched, the input in its own section (this package's earlier behaviour).",
            "choices": list(TEACHER_VIEWS),
        },
    )
    max_pair_tokens: int = field(
        default=2048,
        metadata={
            "help": "teacher_view release: an instruction + input + answer longer than this many tokens (the teacher's "
            "count) loses as many characters from the end of its answer as it has tokens too many, as released."
        },
    )

    def __post_init__(self) -> None:
        # argparse checks the choices of a flag; this checks them where the dataclass is built in Python
        for name, choices in (
            ("fallback", FALLBACKS),
            ("reject_rule", REJECTION_RULES),
            ("teacher_view", TEACHER_VIEWS),
        ):
            if getattr(self, name) not in choices:
                raise ReflectConfigError(
                    f"unknown --{name} {getattr(self, name)!r}; choose one of {', '.join(choices)}"
                )
        if self.max_pair_tokens < 1:
            raise ReflectConfigError(f"--max_pair_tokens must be positive, not {self.max_pair_tokens}")

    def prompt_needs_input(self, mode: str) -> bool:
        """Whether a prompt for ``mode`` must show the input: not where the release's view folds it into the
        instruction (instruction mode)."""
        return not (mode == "instruction" and self.teacher_view == "release")


@dataclass
class ReflectArguments:
    """What ``srt reflect`` rewrites and where it goes (YAML via ``--config``; every field also a flag, spelled
    ``--prompt-template`` or ``--prompt_template``); parsed with ``ReflectionArguments`` and ``TeacherArguments``."""

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
    offset: int = offset_field()
    data_format: str = field(default="auto", metadata={"help": "auto, alpaca, sharegpt or messages."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar (rows/s and tokens)."})

    def cache_path(self, teacher: TeacherArguments) -> Path:
        """The teacher's cache for this output (``teacher_cache``, else beside the output)."""
        return teacher.cache_path(sidecar_path(self.output, "teacher-cache.jsonl"))
