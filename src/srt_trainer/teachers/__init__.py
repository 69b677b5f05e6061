"""Teachers: chat LLMs behind one interface, and ``complete_all``, which asks them without losing or repeating.

- ``build_teacher("openai", model=..., base_url=...)``: any OpenAI-compatible endpoint (key from ``OPENAI_API_KEY``).
- ``build_teacher("transformers")``: a local model (the embedded student by default; offline).
- ``build_teacher("vllm", model=...)``: vLLM's offline engine, when installed.
- ``complete_all(teacher, conversations, sampling, cache_path, validate=...)``: answers in input order, durably
  cached per answer, re-asked when ``validate`` rejects them; returns the results and the run's counts.
  ``complete_all_from_args(teacher, args, ...)`` does it with the sampling and re-asks a stage's options set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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
from srt_trainer.teachers.runner import complete_all


def build_teacher(kind: str, model: str | None = None, base_url: str | None = None, **options: Any) -> Teacher:
    """A teacher of ``kind`` ("openai" | "transformers" | "vllm").

    ``model``: the served model name (openai), or a folder / hub id / "embedded" (transformers, vllm; None means
    the embedded student). ``options`` go to the teacher's class: ``OpenAITeacher`` (concurrency, max_retries,
    timeout, ...), ``TransformersTeacher`` (dtype, device, batch_size, model_obj, tokenizer) or ``VLLMTeacher``
    (engine options).
    """
    if kind == "openai":
        from srt_trainer.teachers.openai_teacher import OpenAITeacher

        return OpenAITeacher(model=model or "", base_url=base_url, **options)
    if base_url:
        raise TeacherConfigError(f"--base-url is for the openai teacher, not {kind!r}")
    if kind == "transformers":
        from srt_trainer.teachers.local import TransformersTeacher

        return TransformersTeacher(model=model, **options)
    if kind == "vllm":
        from srt_trainer.teachers.vllm_teacher import VLLMTeacher

        return VLLMTeacher(model=model, **options)
    raise TeacherConfigError(f"unknown teacher {kind!r}; choose one of {', '.join(TEACHER_KINDS)}")


def build_teacher_from_args(
    args: TeacherArguments, batch_state: str | Path | None = None, progress: bool = True, **options: Any
) -> Teacher:
    """The teacher ``args`` describe (``options`` add to or replace its class's keyword arguments).

    ``batch_state``: with ``--teacher_batch``, the file that records the submitted batches (required then:
    ``batch_state_path`` of the teacher cache); ``progress``: a progress bar while batches run."""
    if args.teacher == "openai":
        base = {
            "concurrency": args.teacher_concurrency,
            "max_retries": args.max_retries,
            "timeout": args.request_timeout,
        }
    elif args.teacher == "transformers":
        base = {
            "dtype": args.teacher_dtype,
            "device": args.teacher_device,
            "batch_size": args.teacher_batch_size,
            "trust_remote_code": args.teacher_trust_remote_code,
        }
    else:
        base = {"trust_remote_code": args.teacher_trust_remote_code}
    if args.offline():  # nothing is sent, so no key is needed (nor read)
        from srt_trainer.teachers.offline import OfflineTeacher

        online = build_teacher(
            "openai", model=args.teacher_model, base_url=args.base_url, **{**base, "api_key": "offline", **options}
        )
        return OfflineTeacher(online, args.import_results, args.export_requests)
    teacher = build_teacher(args.teacher, model=args.teacher_model, base_url=args.base_url, **{**base, **options})
    if args.teacher_batch:
        from srt_trainer.teachers.batch import BatchTeacher

        if batch_state is None:
            raise ValueError("--teacher_batch needs the file that records the batches (batch_state)")
        return BatchTeacher(
            teacher,
            batch_state,
            poll_seconds=args.teacher_batch_poll,
            max_requests=args.teacher_batch_max_requests,
            max_bytes=int(args.teacher_batch_max_mb * 1e6),
            resubmits=args.teacher_batch_resubmits,
            progress=progress,
        )
    return teacher


def complete_all_from_args(
    teacher: Teacher,
    args: TeacherArguments,
    conversations: Sequence[Conversation],
    cache_path: str | Path | None,
    validate: Callable[[str], bool] | None = None,
    progress: bool = True,
    desc: str = "",
) -> tuple[list[ChatResult], RunCounts]:
    """``complete_all`` with the sampling, ``--max_reasks`` and ``--reask_temperature`` of ``args``."""
    return complete_all(
        teacher,
        conversations,
        args.sampling(),
        cache_path,
        validate=validate,
        max_reasks=args.max_reasks,
        progress=progress,
        desc=desc,
        reask_temperature=args.reask_temperature,
    )


__all__ = [
    "TEACHER_KINDS",
    "Answer",
    "ChatResult",
    "Conversation",
    "ResponseCache",
    "RunCounts",
    "SamplingConfig",
    "Teacher",
    "TeacherArguments",
    "TeacherConfigError",
    "TeacherError",
    "build_teacher",
    "build_teacher_from_args",
    "cache_key",
    "complete_all",
    "complete_all_from_args",
    "load_cache_entries",
]
