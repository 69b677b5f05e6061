"""Every teacher is built here: from its kind and options (``build_teacher``), or from ``TeacherArguments`` for the
teacher cache it answers into (``TeacherFactory``), the student itself included when it teaches.

The factory owns two rules that would otherwise be repeated by each stage: when the student already loaded for a
run is its own teacher (a local teacher of no other model), and where the batches of ``--teacher_batch`` are
recorded (``<cache stem>.batches.json`` beside the teacher cache, so each cache has its own record).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from srt_trainer.teachers.base import Teacher, TeacherConfigError
from srt_trainer.teachers.cache import batch_state_path
from srt_trainer.teachers.config import TEACHER_KINDS, TeacherArguments

# where `srt run` recorded the batches of its three reflections before each cache had its own record: read while
# a file of that name is there, so a run killed under an older version resumes without submitting again
LEGACY_BATCH_STATE = "teacher.batches.json"


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


def batch_state_for(cache: str | Path) -> Path:
    """The record of the batches submitted for the teacher cache ``cache``: ``<cache stem>.batches.json`` beside it,
    or the older shared name in the same folder while a file of that name holds batches."""
    cache = Path(cache)
    legacy = cache.with_name(LEGACY_BATCH_STATE)
    current = batch_state_path(cache)
    return legacy if legacy.is_file() and not current.exists() else current


@dataclass
class LoadedStudent:
    """The student a run has already loaded: it teaches when the teacher is local and names no other model."""

    name: str
    model: Any
    tokenizer: Any


class TeacherFactory:
    """The teacher ``args`` describe, built once and handed to each stage for the cache it answers into.

    The underlying teacher (a loaded model, an endpoint's settings) is built on the first ``build`` and reused, so a
    run that reflects three times loads a local teacher once; what depends on the cache (the record of submitted
    batches) is made per call. ``options`` add to or replace the teacher class's keyword arguments; ``progress``:
    a progress bar while batches run."""

    def __init__(
        self,
        args: TeacherArguments,
        student: LoadedStudent | None = None,
        progress: bool = True,
        teacher: Teacher | None = None,
        **options: Any,
    ) -> None:
        self.args, self.student, self.progress, self.options = args, student, progress, options
        self.given = teacher  # a teacher built by the caller: every stage gets it as it is
        self._base: Teacher | None = teacher

    @classmethod
    def of(
        cls, teacher: Teacher | TeacherFactory | None, args: TeacherArguments, progress: bool = True
    ) -> TeacherFactory:
        """A stage's ``teacher`` argument as a factory: a factory as it is, a teacher already built as the factory
        that gives it, None as the factory of ``args``."""
        return teacher if isinstance(teacher, TeacherFactory) else cls(args, progress=progress, teacher=teacher)

    def student_teaches(self) -> bool:
        """Whether the run's own student is the teacher (local, and no other model named)."""
        args = self.args
        return (
            self.student is not None
            and args.teacher == "transformers"
            and args.teacher_model in (None, self.student.name)
        )

    def base(self) -> Teacher:
        """The teacher that answers (online, or the one whose requests go through files or batches)."""
        if self._base is None:
            self._base = self._build_base()
        return self._base

    def _build_base(self) -> Teacher:
        args = self.args
        if self.student_teaches():
            from srt_trainer.teachers.local import TransformersTeacher

            assert self.student is not None
            return TransformersTeacher(
                model=self.student.name,
                batch_size=args.teacher_batch_size,
                model_obj=self.student.model,
                tokenizer=self.student.tokenizer,
            )
        if args.teacher == "openai":
            base = {"concurrency": args.teacher_concurrency, "max_retries": args.max_retries}
            base["timeout"] = args.request_timeout
            if args.offline():  # nothing is sent, so no key is needed (nor read)
                base["api_key"] = "offline"
        elif args.teacher == "transformers":
            base = {
                "dtype": args.teacher_dtype,
                "device": args.teacher_device,
                "batch_size": args.teacher_batch_size,
                "trust_remote_code": args.teacher_trust_remote_code,
            }
        else:  # vllm: our options, then vllm.LLM's own from --teacher_vllm_options
            from srt_trainer.vllm_engine import parse_vllm_options

            base = {"dtype": args.teacher_dtype, "trust_remote_code": args.teacher_trust_remote_code}
            base.update(parse_vllm_options(args.teacher_vllm_options, "--teacher_vllm_options"))
        return build_teacher(args.teacher, model=args.teacher_model, base_url=args.base_url, **{**base, **self.options})

    def build(self, cache: str | Path | None = None) -> Teacher:
        """The teacher for a stage whose answers go to the teacher cache ``cache`` (needed with
        ``--teacher_batch``: the record of its batches is kept beside it)."""
        teacher = self.base()
        args = self.args
        if self.given is not None:
            return teacher
        if args.offline():
            from srt_trainer.teachers.offline import OfflineTeacher

            return OfflineTeacher(teacher, args.import_results, args.export_requests)  # type: ignore[arg-type]
        if args.teacher_batch:
            from srt_trainer.teachers.batch import BatchTeacher

            if cache is None:
                raise TeacherConfigError("--teacher_batch records its batches beside the teacher cache: give one")
            return BatchTeacher(
                teacher,  # type: ignore[arg-type]
                batch_state_for(cache),
                poll_seconds=args.teacher_batch_poll,
                max_requests=args.teacher_batch_max_requests,
                max_bytes=int(args.teacher_batch_max_mb * 1e6),
                resubmits=args.teacher_batch_resubmits,
                progress=self.progress,
            )
        return teacher


def build_teacher_from_args(
    args: TeacherArguments,
    cache: str | Path | None = None,
    progress: bool = True,
    student: LoadedStudent | None = None,
    **options: Any,
) -> Teacher:
    """The teacher ``args`` describe, for a stage whose answers go to the teacher cache ``cache`` (see
    ``TeacherFactory``)."""
    return TeacherFactory(args, student, progress, **options).build(cache)
