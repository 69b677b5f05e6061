"""Reflection of rows by a teacher (the paper's instruction and response reflection, §2 of the paper): variant Q
(instruction mode), A and QA (response mode).

Two entries, both over the option dataclasses: ``reflect(rows, mode, teacher, TeacherArguments(...),
ReflectionArguments(...))`` for rows in memory, and ``run_reflect``, the file-level stage behind ``srt reflect`` and
``srt run`` (it reads the rows, calls ``reflect`` and writes the output with its raw texts and summary).

Every input row gives one output row, in order: ``ok`` (the teacher's rewrite), ``fallback`` (the teacher answered
but nothing usable came back, even after re-asking: the original text is kept) or ``failed`` (the teacher never
answered: the original text is kept with the error; a rerun asks again). In instruction mode a reply with only one
usable part is ``ok`` with the other part original, as released; ``reflection_fallback`` names the part kept
(``answer``, ``instruction``; ``row`` for a whole-row fallback).

What the teacher sees follows the release by default (``teacher_view="release"``): fields stripped, the input folded
into the instruction in instruction mode, an over-long answer cut (see ``teacher_view_of``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from srt_trainer.data.loading import RESERVED_PREFIX, kept_name
from srt_trainer.errors import SRTUserError
from srt_trainer.reflection.config import TEACHER_VIEWS, ReflectArguments, ReflectionArguments
from srt_trainer.reflection.parsers import (
    InstructionFields,
    inspect_instruction_reflection,
    inspect_tagged,
)
from srt_trainer.reflection.prompts import ReflectionPrompt, load_prompt
from srt_trainer.stage import REJECTS, SUMMARY, Stage
from srt_trainer.teachers import (
    ChatResult,
    Conversation,
    RunCounts,
    Teacher,
    TeacherArguments,
    TeacherFactory,
    complete_all_from_args,
)
from srt_trainer.teachers.base import TeacherError
from srt_trainer.teachers.cache import check_cache_writable

logger = logging.getLogger(__name__)

RAW = "raw.jsonl"  # the teacher's raw texts, beside the output
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
    "reflection_fallback",
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
    # what was kept of the original (answer_kept, instruction_kept, row), which rule rejected a part
    # (instruction/missing, answer/n/a, ...), and what the teacher's view changed (stripped, input_folded, answer_cut)
    fallbacks: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    view: dict[str, int] = field(default_factory=dict)

    def format(self) -> str:
        s = self.statuses

        def listed(counts: dict[str, int]) -> str:
            return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"

        return (
            f"{len(self.rows)} rows reflected (variant {self.variant}): ok {s.get('ok', 0)}, "
            f"fallback {s.get('fallback', 0)}, failed {s.get('failed', 0)}\n"
            f"originals kept: {listed(self.fallbacks)}; parts rejected: {listed(self.rejected)}; "
            f"teacher's view: {listed(self.view)}\n{self.counts.format()}"
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


@dataclass(frozen=True)
class TeacherView:
    """The pair as the teacher sees it, and what was done to it."""

    instruction: str
    input: str
    output: str
    stripped: bool = False
    input_folded: bool = False
    answer_cut: int = 0  # characters cut from the end of the answer


def fold_input(instruction: str, input: str) -> str:
    """One instruction holding the input. The release folded them with ChatGPT (its compressed Alpaca file); that
    rewrite cannot be repeated offline, so the input follows the instruction on a new line."""
    return f"{instruction}\n{input}" if input else instruction


def teacher_view_of(
    row: dict[str, Any], mode: str, view: str, teacher: Teacher, max_pair_tokens: int = 2048
) -> TeacherView:
    """What the teacher is shown of ``row``. ``as_is``: the fields untouched. ``release``: each field stripped; in
    instruction mode the input folded into the instruction; if instruction + input + answer has more than
    ``max_pair_tokens`` tokens (``teacher.count_text_tokens``), the answer loses as many characters from its end as
    there are tokens too many (the release's cut: never the instruction)."""
    instruction, input, output = row["instruction"] or "", row.get("input") or "", row["output"] or ""
    if view == "as_is":
        return TeacherView(instruction, input, output)
    if view != "release":
        raise ReflectionInputError(f"unknown teacher view {view!r}; choose one of {', '.join(TEACHER_VIEWS)}")
    ins, inp, out = instruction.strip(), input.strip(), output.strip()
    stripped = (ins, inp, out) != (instruction, input, output)
    folded = mode == "instruction" and bool(inp)
    if folded:
        ins, inp = fold_input(ins, inp), ""
    gap = teacher.count_text_tokens(ins + inp + out) - max_pair_tokens
    cut = min(gap, len(out)) if gap > 0 else 0
    if cut:
        out = out[:-cut]
    return TeacherView(ins, inp, out, stripped=stripped, input_folded=folded, answer_cut=cut)


def reflect(
    rows: Sequence[dict[str, Any]],
    mode: str,
    teacher: Teacher,
    teacher_args: TeacherArguments | None = None,
    reflection: ReflectionArguments | None = None,
    *,
    prompt: ReflectionPrompt | str | Path | None = None,
    cache_path: str | Path | None = None,
    variant: str = "auto",
    progress: bool = True,
) -> ReflectionResult:
    """Reflect ``rows`` (dicts with ``instruction``, ``input``, ``output``; ``source_index`` / ``row_index`` and
    ``variant`` are used when present, other columns are carried over) with ``teacher``.

    ``teacher_args`` says how the teacher is asked (sampling, re-asks, ``prefill``: on for local teachers, off for
    API teachers under ``auto``; only these fields are read, the teacher itself is the one given) and
    ``reflection`` how a reply becomes a row (fallback, rejection rule, the teacher's view); both default to their
    dataclass defaults, the release's behaviour. ``prompt``: a loaded prompt, a template file, or None for this
    mode's default. ``cache_path``: the durable response cache (None: ``teacher_args.teacher_cache``, unset by
    default: in memory). ``variant``: ``auto`` tells A from QA by the rows' ``variant`` column.
    """
    teacher_args = teacher_args or TeacherArguments()
    reflection = reflection or ReflectionArguments()
    if not isinstance(prompt, ReflectionPrompt):
        prompt = load_prompt(mode, prompt, needs_input=reflection.prompt_needs_input(mode))
    if prompt.mode != mode:
        raise ReflectionInputError(f"a {prompt.mode} prompt cannot run {mode} reflection")
    if cache_path is None:
        cache_path = teacher_args.teacher_cache
    variant = detect_variant(rows, mode, variant)
    prefill = teacher_args.prefill_flag()
    if prefill is None:
        prefill = teacher.kind != "openai"
    prefix = prompt.prefix if prefill else ""
    views = [teacher_view_of(r, mode, reflection.teacher_view, teacher, reflection.max_pair_tokens) for r in rows]
    if any(v.input for v in views) and "{input}" not in prompt.user and "{input_section}" not in prompt.user:
        raise ReflectionInputError(
            f"the prompt {prompt.source} does not show the rows' input ({{input}} or {{input_section}}), and some "
            "rows have one: add the field, or fold the input into the instruction (--teacher_view release, "
            "instruction mode)"
        )
    conversations = _Conversations(prompt, views, prefill)
    reject_rule = reflection.reject_rule

    def usable(text: str) -> bool:
        if mode == "response":
            return inspect_tagged(prefix + text, "Better Answer", reject_rule)[0] is not None
        fields = inspect_instruction_reflection(prefix + text, reject_rule)
        if reflection.fallback == "row":
            return fields.instruction is not None and fields.output is not None
        # as released, a reply is asked again only when no part of it is usable
        return fields.instruction is not None or fields.output is not None

    results, counts = complete_all_from_args(
        teacher, teacher_args, conversations, cache_path, validate=usable, progress=progress, desc=f"reflect {mode}"
    )
    identity = teacher.identity()
    out_rows, raw = [], []
    renamed: dict[str, str] = {}
    fallbacks: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    for position, (row, view, result) in enumerate(zip(rows, views, results, strict=True)):
        out, status = _reflected_row(row, view, position, result, prefix, variant, reflection, rejected)
        if out["reflection_fallback"]:
            fallbacks[_FALLBACK_COUNTS[out["reflection_fallback"]]] += 1
        out.update(teacher=identity["teacher"], teacher_model=identity["model"])
        out_rows.append(_ordered(out, row, renamed))
        raw.append(
            {
                "position": position,
                "source_index": out["source_index"],
                "variant": variant,
                "reflection_status": status,
                "reflection_fallback": out["reflection_fallback"],
                "prefix": prefix,
                "texts": result.texts,
                "error": result.error,
                "cached": result.cached,
                "attempts": result.attempts,
                "reasks": result.reasks,
                **({"answer_cut": view.answer_cut} if view.answer_cut else {}),
            }
        )
    if renamed and variant != "QA":
        logger.warning(
            "column(s) %s of the rows would be overwritten by the reflection: kept as %s",
            ", ".join(renamed),
            ", ".join(renamed.values()),
        )
    statuses = Counter(r["reflection_status"] for r in out_rows)
    view_counts = {
        "stripped": sum(v.stripped for v in views),
        "input_folded": sum(v.input_folded for v in views),
        "answer_cut": sum(bool(v.answer_cut) for v in views),
    }
    return ReflectionResult(
        out_rows,
        raw,
        counts,
        {s: statuses.get(s, 0) for s in STATUSES},
        variant,
        fallbacks={k: fallbacks.get(k, 0) for k in _FALLBACK_COUNTS.values()},
        rejected=dict(sorted(rejected.items())),
        view=view_counts,
    )


class _Conversations(Sequence[Conversation]):
    """The teacher's conversation of each row, built when asked for: a resumed run needs each only for its cache
    key, and a million prompts held at once would be a copy of the data, twice over."""

    def __init__(self, prompt: ReflectionPrompt, views: Sequence[TeacherView], prefill: bool) -> None:
        self.prompt, self.views, self.prefill = prompt, views, prefill

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, i: int) -> Conversation:  # type: ignore[override]
        v = self.views[i]
        return self.prompt.messages(v.instruction, v.input, v.output, prefill=self.prefill)


# reflection_fallback value -> its count's name in the summary
_FALLBACK_COUNTS = {"answer": "answer_kept", "instruction": "instruction_kept", "row": "row"}


def _reflected_row(
    row: dict[str, Any],
    view: TeacherView,
    position: int,
    result: ChatResult,
    prefix: str,
    variant: str,
    reflection: ReflectionArguments,
    rejected: Counter[str],
) -> tuple[dict[str, Any], str]:
    source_index = row.get("source_index")
    if source_index is None:
        source_index = row.get("row_index", position)
    # the original row as the variant carries it: in the release's view Q's instruction holds the input (stripped);
    # the answer kept is the original one, never the teacher's cut copy
    original = {"instruction": row["instruction"], "input": row.get("input") or "", "output": row["output"]}
    reject_rule, release_view = reflection.reject_rule, reflection.teacher_view == "release"
    if variant == "Q" and release_view:
        original.update(instruction=view.instruction, input="")
    out: dict[str, Any] = {**original, "source_index": source_index, "variant": variant}
    kept = None
    if result.text is None:
        status, error = "failed", result.error or "no answer"
    elif variant != "Q":
        answer, reason = inspect_tagged(prefix + result.text, "Better Answer", reject_rule)
        if answer is None:
            rejected[f"answer/{reason}"] += 1
            status, kept = "fallback", "row"
            error = f"no usable [Better Answer] ({reason}) in the teacher's answer after {result.reasks + 1} asks"
        else:
            status, error = "ok", None
            out["output"] = answer
    else:
        fields = inspect_instruction_reflection(prefix + result.text, reject_rule)
        status, kept, error = _instruction_outcome(fields, reflection.fallback, result.reasks + 1, rejected)
        if status == "ok":
            if fields.instruction is not None:
                out["instruction"] = fields.instruction
                # the release's Q has no input; the earlier view takes a tagged [New Input]
                out["input"] = "" if release_view else fields.input
            if fields.output is not None:
                out["output"] = fields.output
    out.update(reflection_status=status, reflection_fallback=kept, reflection_error=error)
    return out, status


def _instruction_outcome(
    fields: InstructionFields, fallback: str, asks: int, rejected: Counter[str]
) -> tuple[str, str | None, str | None]:
    """Status, the original part kept (None, ``answer``, ``instruction`` or ``row``) and the reason, of an instruction
    reflection whose parts are ``fields``; each rejected part is counted by its rule."""
    for part, reason in (("instruction", fields.instruction_rejected), ("answer", fields.output_rejected)):
        if reason is not None:
            rejected[f"{part}/{reason}"] += 1
    has_instruction, has_answer = fields.instruction is not None, fields.output is not None
    if has_instruction and has_answer:
        return "ok", None, None
    if fallback == "field" and has_instruction:
        return "ok", "answer", f"[New Answer] unusable ({fields.output_rejected}): the original answer is kept"
    if fallback == "field" and has_answer:
        return (
            "ok",
            "instruction",
            f"[New Instruction] unusable ({fields.instruction_rejected}): the original instruction is kept",
        )
    why = ", ".join(
        f"{tag} {reason}"
        for tag, reason in (
            ("[New Instruction]", fields.instruction_rejected),
            ("[New Answer]", fields.output_rejected),
        )
        if reason is not None
    )
    return "fallback", "row", f"no usable [New Instruction] and [New Answer] ({why}) after {asks} asks"


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


@dataclass
class ReflectRun:
    """What ``run_reflect`` wrote: the result (rows, raw texts, counts), its summary and the files."""

    result: ReflectionResult
    summary: dict[str, Any]
    output: Path
    cache: Path


def run_reflect(
    args: ReflectArguments,
    teacher_args: TeacherArguments,
    reflection: ReflectionArguments | None = None,
    teacher: Teacher | TeacherFactory | None = None,
) -> ReflectRun:
    """Reflect ``args.data`` into ``args.output``, with ``<stem>.raw.jsonl``, ``<stem>.summary.json`` and the rejects
    beside it, rewriting as ``reflection`` says (default: as released). ``teacher``: one already built, or the
    factory of a run's teachers (default: the one ``teacher_args`` names)."""
    reflection = reflection or ReflectionArguments()
    cache = args.cache_path(teacher_args)
    stage = Stage(
        args.output,
        "reflection output",
        inputs={"--data": args.data, "--prompt_template": args.prompt_template},
        side=(REJECTS, RAW, SUMMARY),
        extra={"--teacher_cache": cache},
    )
    with stage.guard():
        check_cache_writable(cache)  # before the teacher is built or paid
        prompt = load_prompt(args.mode, args.prompt_template, needs_input=reflection.prompt_needs_input(args.mode))
        loaded = stage.load(
            args.data,
            usable_for="reflection",
            to="reflect",
            format=args.data_format,
            limit=args.limit,
            offset=args.offset,
        )
        teacher = TeacherFactory.of(teacher, teacher_args, args.progress).build(cache)
        result = reflect(
            loaded.rows,
            args.mode,
            teacher,
            teacher_args,
            reflection,
            prompt=prompt,
            cache_path=cache,
            variant=args.variant,
            progress=args.progress,
        )
        output = stage.write(result.rows)
        stage.write_side(RAW, result.raw)
        summary = stage.write_summary(
            {
                "mode": args.mode,
                "variant": result.variant,
                "rows": len(result.rows),
                **result.statuses,
                "fallbacks": result.fallbacks,
                "rejected": result.rejected,
                "teacher_view": result.view,
                "counts": result.counts.as_dict(),
                "teacher": teacher.identity(),
                "prompt": prompt.source,
                "data": loaded.source,
                "rejected_rows": len(loaded.rejects),
                "output": str(output),
                "cache": str(cache),
                "config": {"reflect": asdict(args), "teacher": asdict(teacher_args)},
            }
        )
        if result.rows and result.statuses["failed"] == len(result.rows):
            first = result.rows[0]["reflection_error"]
            raise TeacherError(
                f"{output}: the teacher answered none of the {len(result.rows)} rows (first error: {first}); every "
                f"row keeps its original text as 'failed': run the same command again to ask for them"
            )
        return ReflectRun(result=result, summary=summary, output=output, cache=cache)
