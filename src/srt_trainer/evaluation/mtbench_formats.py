"""MT-Bench's files, as FastChat's ``llm_judge`` reads and writes them, and the judge's verdicts read from its text.

Read (given by path, the user's copies): the questions (``question.jsonl``: ``question_id``, ``category``,
``turns``), the judge prompts (``judge_prompts.jsonl``: ``name``, ``type``, ``system_prompt``, ``prompt_template``,
``output_format``) and answer files (``model_answer/<model_id>.jsonl``, the reference answers among them:
``question_id``, ``model_id``, ``choices[0].turns``). A question or answer row that cannot be used is a ``Reject``
naming the file, line and field; a judge prompt that cannot be used stops the run before anything is generated.

Written: answer rows and single / pairwise judgment rows of the same shapes, so FastChat's ``show_result`` reads
them unchanged (it keeps ``score != -1`` and averages per model and turn; pairs whose winner is ``error`` it drops).
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from srt_trainer.data import Reject
from srt_trainer.errors import SRTUserError
from srt_trainer.io import iter_raw_rows, read_rows, sidecar_path, write_rows

# The categories FastChat grades against a reference answer (its NEED_REF_CATS).
REFERENCE_CATEGORIES = ("math", "reasoning", "coding", "arena-hard-200")
# FastChat's gen_model_answer samples each category at its own temperature (0 is greedy); others at 0.7.
CATEGORY_TEMPERATURES = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
    "arena-hard-200": 0.0,
}
OTHER_CATEGORY_TEMPERATURE = 0.7
# The judge grades the first turn and the second; a question of more turns has its first two graded (as FastChat).
GRADED_TURNS = (1, 2)

# (kind, with a reference, turn) -> the judge prompt's name in judge_prompts.jsonl
PROMPT_NAMES = {
    ("single", False, 1): "single-v1",
    ("single", False, 2): "single-v1-multi-turn",
    ("single", True, 1): "single-math-v1",
    ("single", True, 2): "single-math-v1-multi-turn",
    ("pair", False, 1): "pair-v2",
    ("pair", False, 2): "pair-v2-multi-turn",
    ("pair", True, 1): "pair-math-v1",
    ("pair", True, 2): "pair-math-v1-multi-turn",
}
OUTPUT_FORMATS = {"single": "[[rating]]", "pair": "[[A]]"}
PROMPT_TYPES = {"single": "single", "pair": "pairwise"}


def _placeholders(kind: str, reference: bool, turn: int) -> frozenset[str]:
    """The fields a judge prompt's template may name."""
    if kind == "single":
        names = {"question", "answer"} if turn == 1 else {"question_1", "question_2", "answer_1", "answer_2"}
    else:
        names = (
            {"question", "answer_a", "answer_b"}
            if turn == 1
            else {"question_1", "question_2", "answer_a_1", "answer_a_2", "answer_b_1", "answer_b_2"}
        )
    if reference:
        names |= {"ref_answer_1"} if turn == 1 else {"ref_answer_1", "ref_answer_2"}
    return frozenset(names)


class MTBenchInputError(SRTUserError, ValueError):
    """An MT-Bench input that cannot be used at all (a judge prompt missing or malformed, no usable question)."""


# --- reading ---------------------------------------------------------------------------------------------------
@dataclass
class Question:
    """One question: its id, category and user turns, where it is in its file, and a fingerprint of its content
    (what decides its answers)."""

    question_id: Any
    category: str
    turns: list[str]
    row: int
    line: int | None = None

    @property
    def key(self) -> str:
        payload = json.dumps([self.question_id, self.category, self.turns], ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @property
    def needs_reference(self) -> bool:
        return self.category in REFERENCE_CATEGORIES


def _reject(path: str | Path, raw: Any, field_name: str | None, reason: str) -> Reject:
    text = raw.text if raw.error is not None else json.dumps(raw.value, ensure_ascii=False, default=str)
    return Reject(str(path), raw.row, field_name, reason, text or "", raw.line)


def _is_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool) and value != ""


def _text_list_problem(value: Any) -> str | None:
    """Why ``value`` is not a non-empty list of texts, or None."""
    if value is None:
        return "missing"
    if not isinstance(value, list) or not value:
        return f"expected a non-empty list of texts, got {json.dumps(value, default=str)[:80]}"
    for i, t in enumerate(value):
        if not isinstance(t, str):
            return f"turn {i + 1} is not a text (got {type(t).__name__})"
    return None


def read_questions(path: str | Path, limit: int | None = None) -> tuple[list[Question], list[Reject]]:
    """The usable questions of ``path`` (the first ``limit`` rows) and the rows that are not, each with its reason:
    no ``question_id``, no ``category``, ``turns`` missing or not texts, an empty first turn, a repeated id."""
    questions: list[Question] = []
    rejects: list[Reject] = []
    seen: dict[str, int] = {}
    for raw in iter_raw_rows(path, "jsonl"):
        if limit is not None and raw.row >= limit:
            break
        if raw.error is not None:
            rejects.append(_reject(path, raw, raw.field, raw.error))
            continue
        row = raw.value
        if not isinstance(row, dict):
            rejects.append(_reject(path, raw, None, f"not an object (got {type(row).__name__})"))
            continue
        problem: tuple[str, str] | None = None
        if not _is_id(row.get("question_id")):
            problem = ("question_id", "missing" if row.get("question_id") is None else "not an integer or text")
        elif not isinstance(row.get("category"), str) or not row["category"]:
            problem = ("category", "missing" if row.get("category") is None else "not a text")
        elif (why := _text_list_problem(row.get("turns"))) is not None:
            problem = ("turns", why)
        elif any(not t.strip() for t in row["turns"]):
            problem = ("turns", "an empty turn")
        elif str(row["question_id"]) in seen:
            problem = ("question_id", f"repeats the id of line {seen[str(row['question_id'])]}")
        if problem is not None:
            rejects.append(_reject(path, raw, *problem))
            continue
        seen[str(row["question_id"])] = raw.line or raw.row
        questions.append(Question(row["question_id"], row["category"], list(row["turns"]), raw.row, raw.line))
    return questions, rejects


@dataclass
class JudgePrompt:
    """One judge prompt: the system message, the user message's template and its line in the prompts file."""

    name: str
    system_prompt: str
    prompt_template: str
    line: int | None = None

    def messages(self, **values: str) -> tuple[list[dict[str, str]], str]:
        """The judge's chat (system, then user) and the user message, the template filled with ``values``."""
        user = self.prompt_template.format(**values)
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": user}], user


def read_judge_prompts(path: str | Path, kinds: Iterable[str]) -> dict[str, JudgePrompt]:
    """The judge prompts of ``kinds`` ("single", "pair") from a ``judge_prompts.jsonl``, checked before any work:
    each is there once, of its type, with its output format and only the placeholders its grading fills."""
    wanted = {name: key for key, name in PROMPT_NAMES.items() if key[0] in set(kinds)}
    found: dict[str, JudgePrompt] = {}
    for raw in iter_raw_rows(path, "jsonl"):
        where = f"{path}: line {raw.line}"
        if raw.error is not None:
            raise MTBenchInputError(f"{where}: {raw.error}")
        row = raw.value
        if not isinstance(row, dict):
            raise MTBenchInputError(f"{where}: not an object")
        if row.get("name") not in wanted:
            continue  # prompts of other gradings (pair-v1, reference-free variants) are not used
        name = row["name"]
        kind, reference, turn = wanted[name]
        if name in found:
            raise MTBenchInputError(f"{where}, field 'name': {name} again (first on line {found[name].line})")
        for key in ("system_prompt", "prompt_template"):
            if not isinstance(row.get(key), str):
                raise MTBenchInputError(f"{where}, field '{key}': {'missing' if key not in row else 'not a text'}")
        if row.get("type") != PROMPT_TYPES[kind]:
            raise MTBenchInputError(f"{where}, field 'type': {row.get('type')!r}, expected {PROMPT_TYPES[kind]!r}")
        if row.get("output_format") != OUTPUT_FORMATS[kind]:
            raise MTBenchInputError(
                f"{where}, field 'output_format': {row.get('output_format')!r}; this grading reads "
                f"{OUTPUT_FORMATS[kind]!r}"
            )
        try:
            used = {f for _, f, _, _ in string.Formatter().parse(row["prompt_template"]) if f is not None}
        except ValueError as e:
            raise MTBenchInputError(f"{where}, field 'prompt_template': {e}") from None
        allowed = _placeholders(kind, reference, turn)
        if unknown := sorted(used - allowed):
            raise MTBenchInputError(
                f"{where}, field 'prompt_template': unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)}"
                f"; {name} fills {', '.join('{' + a + '}' for a in sorted(allowed))}"
            )
        found[name] = JudgePrompt(name, row["system_prompt"], row["prompt_template"], raw.line)
    if missing := [n for n in wanted if n not in found]:
        raise MTBenchInputError(f"{path}: no judge prompt named {', '.join(missing)}")
    return found


@dataclass
class AnswerFile:
    """A ``model_answer`` file: the turns of each question's first choice by question id (as text), the line each
    came from, the model's id and the rows that could not be used."""

    path: str
    answers: dict[str, list[str]] = field(default_factory=dict)
    lines: dict[str, int | None] = field(default_factory=dict)
    model_id: str | None = None
    rejects: list[Reject] = field(default_factory=list)

    def where(self, question_id: Any) -> str:
        line = self.lines.get(str(question_id))
        return f"{self.path}: line {line}" if line is not None else self.path


def read_answer_file(path: str | Path) -> AnswerFile:
    """Rows ``{question_id, model_id, choices: [{turns: [...]}, ...]}``; a question answered twice keeps its later
    row, as FastChat's loader does, the earlier one rejected."""
    result = AnswerFile(str(path))
    rows: dict[str, Any] = {}
    for raw in iter_raw_rows(path, "jsonl"):
        if raw.error is not None:
            result.rejects.append(_reject(path, raw, raw.field, raw.error))
            continue
        row = raw.value
        problem: tuple[str | None, str] | None = None
        if not isinstance(row, dict):
            problem = (None, f"not an object (got {type(row).__name__})")
        elif not _is_id(row.get("question_id")):
            problem = ("question_id", "missing" if row.get("question_id") is None else "not an integer or text")
        elif not isinstance(row.get("choices"), list) or not row["choices"] or not isinstance(row["choices"][0], dict):
            problem = ("choices", "missing" if row.get("choices") is None else "expected a list of objects")
        elif (why := _text_list_problem(row["choices"][0].get("turns"))) is not None:
            problem = ("choices[0].turns", why)
        if problem is not None:
            result.rejects.append(_reject(path, raw, *problem))
            continue
        qid = str(row["question_id"])
        if qid in rows:
            earlier = rows[qid]
            result.rejects.append(_reject(path, earlier, "question_id", f"replaced by line {raw.line}"))
        rows[qid] = raw
        result.answers[qid] = list(row["choices"][0]["turns"])
        result.lines[qid] = raw.line
        if result.model_id is None and isinstance(row.get("model_id"), str):
            result.model_id = row["model_id"]
    return result


# --- the judge's verdicts --------------------------------------------------------------------------------------
# FastChat reads a rating as the first "[[N]]", else the first "[N]".
_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")
_VERDICT = re.compile(r"\[\[([ABC])\]\]")
VERDICTS = {"A": "A", "B": "B", "C": "tie"}


def parse_rating(judgment: str | None) -> int | float | None:
    """The 1-10 rating of a single-answer judgment, as FastChat reads it; None when there is none in 1-10."""
    if not judgment:
        return None
    match = _RATING.search(judgment) or _RATING_BACKUP.search(judgment)
    if match is None:
        return None
    text = match.group(1)  # "7", "7.5" or "7." (as FastChat reads them: 7, 7.5, 7.0)
    rating = int(text) if text.isdigit() else float(text)
    return rating if 1 <= rating <= 10 else None


def parse_verdict(judgment: str | None) -> str | None:
    """``A``, ``B`` or ``tie`` from a pairwise judgment's ``[[A]]`` / ``[[B]]`` / ``[[C]]``; None when it has none,
    or names two different verdicts (a judge that echoes the instructions), which FastChat would read as the
    first."""
    found = set(_VERDICT.findall(judgment or ""))
    return VERDICTS[found.pop()] if len(found) == 1 else None


def has_rating(judgment: str) -> bool:
    return parse_rating(judgment) is not None


def has_verdict(judgment: str) -> bool:
    return parse_verdict(judgment) is not None


# --- writing ---------------------------------------------------------------------------------------------------
def answer_row(question_id: Any, model_id: str, turns: Sequence[str], tstamp: float) -> dict[str, Any]:
    """A ``model_answer`` row; the answer id is derived from its content, so rewriting the file changes nothing."""
    digest = hashlib.sha256(json.dumps([model_id, question_id, list(turns)], ensure_ascii=False).encode())
    return {
        "question_id": question_id,
        "answer_id": digest.hexdigest()[:22],
        "model_id": model_id,
        "choices": [{"index": 0, "turns": list(turns)}],
        "tstamp": tstamp,
    }


def merge_rows(path: Path, rows: Sequence[Mapping[str, Any]], replaced: Callable[[Mapping[str, Any]], bool]) -> Path:
    """Write ``rows`` into the JSONL file ``path`` in place of its rows that ``replaced`` picks (this run's model
    or pair), keeping the others (other models' judgments, as FastChat keeps every model in one file)."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    # runs of other models may share the file: read, merge and replace it under its lock (held for moments)
    with FileLock(str(sidecar_path(path, "lock")), timeout=600):
        old = read_rows(path, "jsonl") if path.exists() else []
        kept = [r for r in old if isinstance(r, dict) and not replaced(r)]
        return write_rows([*kept, *rows], path)
