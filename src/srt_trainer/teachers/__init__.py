"""Teachers: chat LLMs behind one interface, and ``complete_all``, which asks them without losing or repeating.

- ``build_teacher("openai", model=..., base_url=...)``: any OpenAI-compatible endpoint (key from ``OPENAI_API_KEY``).
- ``build_teacher("transformers")``: a local model (the embedded student by default; offline).
- ``build_teacher("vllm", model=...)``: vLLM's offline engine, when installed.
- ``TeacherFactory(args, student=...)``: the teacher ``TeacherArguments`` describe, for each teacher cache it answers
  into (``--teacher_batch`` records its batches beside it); the student itself when it teaches.
- ``complete_all(teacher, conversations, sampling, cache_path, validate=...)``: answers in input order, durably
  cached per answer, re-asked when ``validate`` rejects them; returns the results and the run's counts.
"""

from __future__ import annotations

from srt_trainer.teachers.base import (
    Answer,
    ChatResult,
    Conversation,
    RunCounts,
    SamplingConfig,
    Teacher,
    TeacherConfigError,
    TeacherError,
)
from srt_trainer.teachers.cache import ResponseCache, cache_key, load_cache_entries
from srt_trainer.teachers.config import TEACHER_KINDS, TeacherArguments
from srt_trainer.teachers.factory import LoadedStudent, TeacherFactory, build_teacher, build_teacher_from_args
from srt_trainer.teachers.runner import complete_all, complete_all_from_args

__all__ = [
    "TEACHER_KINDS",
    "Answer",
    "ChatResult",
    "Conversation",
    "LoadedStudent",
    "ResponseCache",
    "RunCounts",
    "SamplingConfig",
    "Teacher",
    "TeacherArguments",
    "TeacherConfigError",
    "TeacherError",
    "TeacherFactory",
    "build_teacher",
    "build_teacher_from_args",
    "cache_key",
    "complete_all",
    "complete_all_from_args",
    "load_cache_entries",
]
