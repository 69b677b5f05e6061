"""Reflection of rows by a teacher (the paper's instruction and response reflection): variant Q (instruction mode),
A and QA (response mode); ``run_reflect`` is the file-level stage behind ``srt reflect``.

Every input row gives one output row, in order: ``ok`` (the teacher's rewrite), ``fallback`` (the teacher answered
but nothing usable came back, even after re-asking: the original text is kept) or ``failed`` (the teacher never
answered: the original text is kept with the error; a rerun asks again).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from srt_trainer.data import load_instruction_data, rejects_path_for, require_rows, summarize_rejects
from srt_trainer.data.loading import RESERVED_PREFIX, kept_name
from srt_trainer.errors import SRTUserError
from srt_trainer.io import check_output_path, guard_outputs, sidecar_path, write_rows, write_text_atomic
from srt_trainer.reflection.config import ReflectArguments
from srt_trainer.reflection.parsers import parse_instruction_reflection, parse_response_reflection
from srt_trainer.reflection.prompts import ReflectionPrompt, load_prompt
from srt_trainer.teachers import (
    ChatResult,
    RunCounts,
    SamplingConfig,
    Teacher,
    TeacherArguments,
    build_teacher_from_args,
    complete_all,
)
from srt_trainer.teachers.base import TeacherError
from srt_trainer.teachers.cache import check_cache_writable

logger = logging.getLogger(__name__)

STATUSES = ("ok", "fallback", "failed")
REFLECTION_COLUMNS = (
    "instruction",
    "input",
    "output",
    "source_index",
    "variant",
    "teacher",
    "teacher_model",
    "reflection_status",
    "reflection_error",
)
# normalized columns of the loader that describe the source row's encoding, not the reflected row
_INTERNAL = {"row_index", "messages", "system", "num_turns", "source_format", "q_reflection_status"}


class ReflectionInputError(SRTUserError, ValueError):
    """Rows or settings that reflection cannot run on (the message says which)."""


@dataclass
class ReflectionResult:
    """Output rows (in input order), one raw record per row for the side file, and the run's counts."""

    rows: list[dict[str, Any]]
    raw: list[dict[str, Any]]
    counts: RunCounts
    statuses: dict[str, int] = field(default_factory=dict)
    variant: str = ""

    def format(self) -> str:
        s = self.statuses
        return (
            f"{len(self.rows)} rows reflected (variant {self.variant}): ok {s.get('ok', 0)}, "
            f"fallback {s.get('fallback', 0)}, failed {s.get('failed', 0)}\n{self.counts.format()}"
        )


def detect_variant(rows: Sequence[dict[str, Any]], mode: str, variant: str = "auto") -> str:
    """Q for instruction mode; for response mode A on original rows and QA on rows that are Q rewrites (their
    ``variant`` column says Q), unless ``variant`` names it."""
    if mode == "instruction":
        if variant not in ("auto", "Q"):
            raise ReflectionInputError(f"instruction reflection makes variant Q, not {variant!r}")
        return "Q"
    if variant in ("A", "QA"):
        return variant
    if variant != "auto":
        raise ReflectionInputError(f"response reflection makes variant A or QA, not {variant!r}")
    seen = {r.get("variant") or None for r in rows}
    if seen <= {None, "ori"}:
        return "A"
    if seen == {"Q"}:
        return "QA"
    raise ReflectionInputError(
        f"cannot tell A from QA: the rows' variant column holds {sorted(map(str, seen))}; "
        "pass --variant A or --variant QA"
    )


def reflect(
    rows: Sequence[dict[str, Any]],
    mode: str,
    teacher: Teacher,
    *,
    prompt: ReflectionPrompt | None = None,
    sampling: SamplingConfig | None = None,
    cache_path: str | Path | None = None,
    prefill: bool | None = None,
    variant: str = "auto",
    max_reasks: int = 1,
    reask_temperature: float | None = 0.7,
    progress: bool = True,
) -> ReflectionResult:
    """Reflect ``rows`` (dicts with ``instruction``, ``input``, ``output``; ``source_index`` / ``row_index`` and
    ``variant`` are used when present, other columns are carried over).

    ``prefill`` (None: on for local teachers, off for API teachers) starts the teacher's reply with the mode's tag,
    so a small model writes in the expected format. ``cache_path`` is the durable response cache (None: memory).
    """
    prompt = prompt or load_prompt(mode)
    if prompt.mode != mode:
        raise ReflectionInputError(f"a {prompt.mode} prompt cannot run {mode} reflection")
    sampling = sampling or SamplingConfig()
    variant = detect_variant(rows, mode, variant)
    if prefill is None:
        prefill = teacher.kind != "openai"
    prefix = prompt.prefix if prefill else ""
    parse = parse_instruction_reflection if mode == "instruction" else parse_response_reflection
    conversations = [
        prompt.messages(r["instruction"] or "", r.get("input") or "", r["output"] or "", prefill=prefill) for r in rows
    ]

    def usable(text: str) -> bool:
        return parse(prefix + text) is not None

    results, counts = complete_all(
        teacher,
        conversations,
        sampling,
        cache_path,
        validate=usable,
        max_reasks=max_reasks,
        progress=progress,
        desc=f"reflect {mode}",
        reask_temperature=reask_temperature,
    )
    identity = teacher.identity()
    out_rows, raw = [], []
    renamed: dict[str, str] = {}
    for position, (row, result) in enumerate(zip(rows, results, strict=True)):
        out, status = _reflected_row(row, position, result, parse, prefix, variant)
        out.update(teacher=identity["teacher"], teacher_model=identity["model"])
        out_rows.append(_ordered(out, row, renamed))
        raw.append(
            {
                "position": position,
                "source_index": out["source_index"],
                "variant": variant,
                "reflection_status": status,
                "prefix": prefix,
                "texts": result.texts,
                "error": result.error,
                "cached": result.cached,
                "attempts": result.attempts,
                "reasks": result.reasks,
            }
        )
    if renamed and variant != "QA":
        logger.warning(
            "column(s) %s of the rows would be overwritten by the reflection: kept as %s",
            ", ".join(renamed),
            ", ".join(renamed.values()),
        )
    statuses = Counter(r["reflection_status"] for r in out_rows)
    return ReflectionResult(out_rows, raw, counts, {s: statuses.get(s, 0) for s in STATUSES}, variant)


def _reflected_row(
    row: dict[str, Any], position: int, result: ChatResult, parse: Any, prefix: str, variant: str
) -> tuple[dict[str, Any], str]:
    source_index = row.get("source_index")
    if source_index is None:
        source_index = row.get("row_index", position)
    out: dict[str, Any] = {
        "instruction": row["instruction"],
        "input": row.get("input") or "",
        "output": row["output"],
        "source_index": source_index,
        "variant": variant,
    }
    if result.text is None:
        status, error = "failed", result.error or "no answer"
    else:
        parsed = parse(prefix + result.text)
        if parsed is None:
            status = "fallback"
            tags = "[New Instruction] and [New Answer]" if variant == "Q" else "[Better Answer]"
            error = f"no usable {tags} in the teacher's answer after {result.reasks + 1} asks"
        elif variant == "Q":
            status, error = "ok", None
            out.update(instruction=parsed.instruction, input=parsed.input, output=parsed.output)
        else:
            status, error = "ok", None
            out["output"] = parsed
    out.update(reflection_status=status, reflection_error=error)
    return out, status


# columns of the source row that the reflection reads: the rewrite replaces them
_READ = {"instruction", "input", "output", "source_index", "variant"}


def _ordered(out: dict[str, Any], row: dict[str, Any], renamed: dict[str, str] | None = None) -> dict[str, Any]:
    """The reflection's columns first, then the source row's own extra columns.

    A source column that the reflection writes too (``teacher``, ``reflection_status``, ... of a Q file reflected
    again) is kept as ``q_<name>`` in variant QA (the Q rewrite's own status) and ``orig_<name>`` otherwise. A source
    conversation (``conversations``, or a chat row's ``messages``) is kept as ``source_conversations`` /
    ``source_messages``: under its own name it would contradict the rewritten pair, and the output would be read as
    chat data again instead of as the rewrite."""
    ordered = {k: out.get(k) for k in REFLECTION_COLUMNS}
    prefix = "q_" if out.get("variant") == "QA" else RESERVED_PREFIX
    extras: dict[str, Any] = {}
    for k, v in row.items():
        if k == "messages" and row.get("source_format") == "messages":
            name = "source_messages"
        elif k == "conversations":
            name = "source_conversations"
        elif k in _INTERNAL or k in _READ:
            continue
        elif k in ordered:
            name = kept_name(k, {**ordered, **row}, prefix)
            if renamed is not None:
                renamed[k] = name
        else:
            name = k
        if name in ordered or name in extras or (name != k and name in row):
            name = kept_name(name, {**ordered, **row, **extras})
        extras[name] = v
    q_status = [k for k in extras if k.startswith("q_reflection_status")]  # right after the reflection's own status
    return {**ordered, **{k: extras.pop(k) for k in q_status}, **extras}


def reflect_rows(
    rows: Sequence[dict[str, Any]],
    mode: str,
    teacher: Teacher,
    teacher_args: TeacherArguments | None = None,
    cache_path: str | Path | None = None,
    prompt_template: str | None = None,
    variant: str = "auto",
) -> list[dict[str, Any]]:
    """Reflected rows, in input order (see ``reflect``), asked with the sampling and re-ask settings of
    ``teacher_args`` (default: its defaults); its ``teacher_cache`` when ``cache_path`` is None."""
    teacher_args = teacher_args or TeacherArguments()
    return reflect(
        rows,
        mode,
        teacher,
        prompt=load_prompt(mode, prompt_template),
        sampling=teacher_args.sampling(),
        cache_path=cache_path if cache_path is not None else teacher_args.teacher_cache,
        prefill=teacher_args.prefill_flag(),
        variant=variant,
        max_reasks=teacher_args.max_reasks,
        reask_temperature=teacher_args.reask_temperature,
        progress=False,
    ).rows


@dataclass
class ReflectRun:
    """What ``run_reflect`` wrote: the result (rows, raw texts, counts), its summary and the files."""

    result: ReflectionResult
    summary: dict[str, Any]
    output: Path
    cache: Path


def run_reflect(args: ReflectArguments, teacher_args: TeacherArguments, teacher: Teacher | None = None) -> ReflectRun:
    """Reflect ``args.data`` into ``args.output``, with ``<stem>.raw.jsonl``, ``<stem>.summary.json`` and the rejects
    beside it. ``teacher``: one already built (default: the one ``teacher_args`` names)."""
    output = check_output_path(args.output)
    cache = args.cache_path(teacher_args)
    inputs = {"--data": args.data, "--prompt_template": args.prompt_template}
    sidecars = {
        "the rejects file": rejects_path_for(output),
        "the raw texts": sidecar_path(output, "raw.jsonl"),
        "the summary": sidecar_path(output, "summary.json"),
        "--teacher_cache": cache,
    }
    with guard_outputs(inputs, output, sidecars, "reflection output"):
        check_cache_writable(cache)  # before the teacher is built or paid
        return _run_reflect(args, teacher_args, output, cache, teacher)


def _run_reflect(
    args: ReflectArguments, teacher_args: TeacherArguments, output: Path, cache: Path, teacher: Teacher | None
) -> ReflectRun:
    prompt = load_prompt(args.mode, args.prompt_template)
    loaded = load_instruction_data(
        args.data, format=args.data_format, limit=args.limit, rejects_path=rejects_path_for(output)
    )
    require_rows(loaded, rejects_path_for(output), "usable for reflection")
    teacher = teacher or build_teacher_from_args(teacher_args)
    rows = loaded.rows
    logger.info(
        "%s: %d rows read (%s), %d to reflect; %s",
        loaded.source,
        loaded.num_rows_read,
        loaded.format,
        len(rows),
        summarize_rejects(loaded.rejects),
    )
    result = reflect(
        rows,
        args.mode,
        teacher,
        prompt=prompt,
        sampling=teacher_args.sampling(),
        cache_path=cache,
        prefill=teacher_args.prefill_flag(),
        variant=args.variant,
        max_reasks=teacher_args.max_reasks,
        reask_temperature=teacher_args.reask_temperature,
        progress=args.progress,
    )
    write_rows(result.rows, output)
    write_rows(result.raw, sidecar_path(output, "raw.jsonl"))
    summary = {
        "mode": args.mode,
        "variant": result.variant,
        "rows": len(result.rows),
        **result.statuses,
        "counts": result.counts.as_dict(),
        "teacher": teacher.identity(),
        "prompt": prompt.source,
        "data": loaded.source,
        "rejected_rows": len(loaded.rejects),
        "output": str(output),
        "cache": str(cache),
        "config": {"reflect": asdict(args), "teacher": asdict(teacher_args)},
    }
    write_text_atomic(json.dumps(summary, indent=2, ensure_ascii=False), sidecar_path(output, "summary.json"))
    if result.rows and result.statuses["failed"] == len(result.rows):
        first = result.rows[0]["reflection_error"]
        raise TeacherError(
            f"{output}: the teacher answered none of the {len(result.rows)} rows (first error: {first}); every row "
            f"keeps its original text as 'failed': run the same command again to ask for them"
        )
    return ReflectRun(result=result, summary=summary, output=output, cache=cache)
