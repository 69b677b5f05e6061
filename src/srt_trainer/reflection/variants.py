"""The three reflected versions of one file of original pairs, as the method builds them (§2 of the paper): Q
(instruction reflection of the originals), A (response reflection of the originals) and QA (response reflection of
Q), each written beside the others and resumable through its teacher cache."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from srt_trainer.errors import SRTUserError
from srt_trainer.reflection.config import ReflectArguments, ReflectionArguments
from srt_trainer.reflection.runner import run_reflect
from srt_trainer.teachers import LoadedStudent, TeacherArguments, TeacherFactory
from srt_trainer.zero3 import is_partitioned

logger = logging.getLogger(__name__)

VARIANT_FILES = {"Q": "q.jsonl", "A": "a.jsonl", "QA": "qa.jsonl"}


class TeacherPlacementError(SRTUserError, ValueError):
    """A teacher that cannot run where the job would run it."""


def check_teacher_placement(teacher_args: TeacherArguments, model: Any, remedy: str) -> None:
    """Refuse a local teacher for a ZeRO-3-partitioned student: reflection runs on the main process alone, which
    holds only a slice of the student's weights. ``remedy``: what the user can do instead, in their command's terms."""
    if teacher_args.teacher != "openai" and is_partitioned(model):
        raise TeacherPlacementError(
            f"teacher {teacher_args.teacher!r}: under DeepSpeed ZeRO-3 the student is split across the processes, "
            f"and reflection runs on the main process alone; {remedy}"
        )


def reflect_variants(
    teacher_args: TeacherArguments,
    reflection: ReflectionArguments,
    student: LoadedStudent,
    ori: str | Path,
    folder: str | Path,
) -> dict[str, Any]:
    """Q and A from ``ori``, then QA from Q, into ``folder`` (``VARIANT_FILES``); returns each variant's counts.

    One teacher serves the three: a local one is loaded once, and with no teacher model named the loaded
    ``student`` teaches itself (put in eval mode for it, and back after)."""
    folder = Path(folder)
    q_file = str(folder / VARIANT_FILES["Q"])
    steps = {
        "Q": ReflectArguments(mode="instruction", data=str(ori), output=q_file),
        "A": ReflectArguments(mode="response", data=str(ori), output=str(folder / VARIANT_FILES["A"])),
        "QA": ReflectArguments(mode="response", data=q_file, output=str(folder / VARIANT_FILES["QA"])),
    }
    teacher = TeacherFactory(teacher_args, student=student)
    summaries = {}
    was_training = student.model.training
    student.model.eval()
    try:
        for variant, args in steps.items():
            logger.info("reflection %s: %s mode on %s", variant, args.mode, args.data)
            reflected = run_reflect(args, teacher_args, reflection, teacher=teacher)
            logger.info("%s\nwrote %s", reflected.result.format(), reflected.output)
            summary = reflected.summary
            summaries[variant] = {k: summary.get(k) for k in ("rows", "ok", "fallback", "failed", "counts")}
    finally:
        student.model.train(was_training)
    return summaries
