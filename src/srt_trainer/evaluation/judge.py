"""``srt eval judge``: two answer files judged pairwise by an OpenAI-compatible judge, in both orders.

The review prompt is the Vicuna / FastChat pairwise reviewer: the question, Assistant 1's and Assistant 2's
answers, and the request for two 1–10 scores on the first line, then an explanation that avoids order bias.
Every item is asked twice (A as Assistant 1, then B as Assistant 1) through the teacher client, so judging has
its concurrency, retries, durable cache and resume. A review whose scores cannot be read is re-asked, then
counted as a failure — never as a tie — unless ``--unscored tie`` asks for the release's draw. The question is the
instruction alone unless ``--judge_input`` adds the item's input, as the published reviews were asked.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from srt_trainer.data import Reject, summarize_rejects
from srt_trainer.evaluation.aggregate import (
    REPORT_SUFFIXES,
    Aggregate,
    NoJudgedItemsError,
    aggregate_records,
    check_unscored,
    judge_item,
    write_reports,
)
from srt_trainer.evaluation.config import JudgeArguments
from srt_trainer.evaluation.manifest import MANIFEST, answers_entry, build_manifest, judge_entry, write_manifest
from srt_trainer.evaluation.scores import has_scores
from srt_trainer.io import DataLoadError, iter_raw_rows, row_window, sidecar_path
from srt_trainer.stage import REJECTS, Stage
from srt_trainer.teachers import RunCounts, TeacherArguments, build_teacher_from_args, complete_all_from_args
from srt_trainer.teachers.cache import check_cache_writable

logger = logging.getLogger(__name__)

FAILURES = "failures.jsonl"  # the items without a readable review in both orders, beside the output

JUDGE_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
JUDGE_INSTRUCTION = (
    "We would like to request your feedback on the performance of two AI assistants in response to the user "
    "question displayed above.\nPlease rate the helpfulness, relevance, accuracy, level of details of their "
    "responses. Each assistant receives an overall score on a scale of 1 to 10, where a higher score indicates "
    "better overall performance.\nPlease first output a single line containing only two values indicating the "
    "scores for Assistant 1 and 2, respectively. The two scores are separated by a space. In the subsequent line, "
    "please provide a comprehensive explanation of your evaluation, avoiding any potential bias and ensuring that "
    "the order in which the responses were presented does not affect your judgment."
)
REVIEW_TEMPLATE = (
    "[Question]\n{question}\n\n"
    "[The Start of Assistant 1's Answer]\n{answer_1}\n\n[The End of Assistant 1's Answer]\n\n"
    "[The Start of Assistant 2's Answer]\n{answer_2}\n\n[The End of Assistant 2's Answer]\n\n"
    "[System]\n{instruction}\n\n"
)


def judge_prompt_sha256() -> str:
    """sha256 of the review prompt's texts (system line, template, instruction): a manifest names the prompt by it."""
    text = "\n\n".join((JUDGE_SYSTEM, REVIEW_TEMPLATE, JUDGE_INSTRUCTION))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def question_text(instruction: str, input: str = "", include_input: bool = False) -> str:
    """The question as the judge sees it: the instruction alone (as in the published reviews), or with
    ``include_input`` its input on the next line when there is one."""
    return f"{instruction}\n{input}" if input and include_input else instruction


def review_messages(question: str, answer_1: str, answer_2: str) -> list[dict[str, str]]:
    """The judge's chat: the system line and the review request with Assistant 1's answer first."""
    user = REVIEW_TEMPLATE.format(
        question=question, answer_1=answer_1, answer_2=answer_2, instruction=JUDGE_INSTRUCTION
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


# --- answer files ---------------------------------------------------------------------------------------------
@dataclass
class AnswerFile:
    """Answers keyed by (test set, id), in file order, with the rows that could not be used."""

    path: str
    answers: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    rows: dict[tuple[str, str], int] = field(default_factory=dict)
    rejects: list[Any] = field(default_factory=list)


def answer_key(row: dict[str, Any]) -> tuple[str, str]:
    """(test set, id); files without ids (e.g. AlpacaEval outputs) are matched on the instruction instead."""
    test_set = str(row.get("test_set") or row.get("dataset") or "")
    return (test_set, str(row["id"])) if row.get("id") is not None else (test_set, str(row["instruction"]))


def read_answers(path: str | Path) -> AnswerFile:
    """Rows with a string ``instruction`` and ``output`` (``srt eval generate`` output, or AlpacaEval's JSON)."""
    result = AnswerFile(str(path))
    for raw in iter_raw_rows(path):
        if raw.error is not None:
            result.rejects.append(Reject(str(path), raw.row, raw.field, raw.error, raw.text or "", raw.line))
            continue
        row, reason, bad_field = raw.value, None, None
        if not isinstance(row, dict):
            reason = f"not an object (got {type(row).__name__})"
        else:
            for key in ("instruction", "output"):
                if not isinstance(row.get(key), str):
                    bad_field, reason = key, "missing" if row.get(key) is None else "not a string"
                    break
            if reason is None and row.get("input") is not None and not isinstance(row["input"], str):
                bad_field, reason = "input", "not a string"
            if reason is None and answer_key(row) in result.answers:
                bad_field, reason = "id", f"duplicate of row {result.rows[answer_key(row)]}"
        if reason is not None:
            text = json.dumps(row, ensure_ascii=False, default=str)
            result.rejects.append(Reject(str(path), raw.row, bad_field, reason, text, raw.line))
            continue
        result.answers[answer_key(row)] = row
        result.rows[answer_key(row)] = raw.row
    return result


def match_answers(a: AnswerFile, b: AnswerFile) -> tuple[list[tuple[dict[str, Any], dict[str, Any]]], list[Any]]:
    """Pairs of answers to the same item, in A's order; the unmatched rows of either file are rejected."""
    pairs, rejects = [], []
    for key, row in a.answers.items():
        other = b.answers.get(key)
        if other is None:
            rejects.append(
                Reject(
                    a.path,
                    a.rows[key],
                    "id",
                    f"no answer to item {key[0]}/{key[1]} in {b.path}",
                    json.dumps(row, ensure_ascii=False, default=str),
                )
            )
        elif other["instruction"] != row["instruction"] or (other.get("input") or "") != (row.get("input") or ""):
            rejects.append(
                Reject(
                    a.path,
                    a.rows[key],
                    "instruction",
                    f"item {key[0]}/{key[1]} has another instruction in {b.path} (row {b.rows[key]})",
                    json.dumps(row, ensure_ascii=False, default=str),
                )
            )
        else:
            pairs.append((row, other))
    for key, row in b.answers.items():
        if key not in a.answers:
            rejects.append(
                Reject(
                    b.path,
                    b.rows[key],
                    "id",
                    f"no answer to item {key[0]}/{key[1]} in {a.path}",
                    json.dumps(row, ensure_ascii=False, default=str),
                )
            )
    return pairs, rejects


# --- the judging run ------------------------------------------------------------------------------------------
def _record(
    a: dict[str, Any], b: dict[str, Any], judge: str, first: Any, reverse: Any, unscored: str = "fail"
) -> dict[str, Any]:
    outcome = judge_item(first.text, reverse.text, unscored)
    errors = [
        f"{name}: request failed: {r.error}"
        for name, r in (("review", first), ("review_reverse", reverse))
        if r.text is None and r.error
    ]
    s, sr = outcome.scores, outcome.scores_reverse
    return {
        "test_set": a.get("test_set") or a.get("dataset") or "",
        "id": a.get("id"),
        "instruction": a["instruction"],
        "input": a.get("input") or "",
        "generator_a": a.get("generator"),
        "generator_b": b.get("generator"),
        "output_a": a["output"],
        "output_b": b["output"],
        "judge": judge,
        "review": first.text,
        "review_reverse": reverse.text,
        "score_a": s[0] if s else None,
        "score_b": s[1] if s else None,
        "score_a_reverse": sr[1] if sr else None,  # in the reverse review A is Assistant 2
        "score_b_reverse": sr[0] if sr else None,
        "reasks": first.reasks,
        "reasks_reverse": reverse.reasks,
        "result": None if outcome.result == "failed" else outcome.result,
        # drawn: counted, with an unreadable order as a draw (--unscored tie); kept in the failures file too
        "status": "failed" if outcome.result == "failed" else "drawn" if outcome.drawn else "ok",
        "error": "; ".join(errors) or outcome.reason,
    }


@dataclass
class JudgeRun:
    """What ``run_judge`` wrote: one review record per judged item, the aggregate, the judge's request counts, the
    rows it could not use and the files."""

    records: list[dict[str, Any]]
    aggregate: Aggregate
    counts: RunCounts
    rejects: list[Reject]
    output: Path
    failures: Path
    reports: dict[str, str]


class NoReadableScoresError(NoJudgedItemsError):
    """Every judged item failed: the files are written, but there is no win, tie or loss to count. ``run`` holds
    what was written, for a caller that still wants the counts."""

    def __init__(self, message: str, run: JudgeRun) -> None:
        super().__init__(message)
        self.run = run


def run_judge(config: JudgeArguments, judge: TeacherArguments, teacher: Any = None) -> JudgeRun:
    """Judge every matched item in both orders with the teacher ``judge`` names (or ``teacher``, already built);
    write the reviews, failures, rejects and the aggregate reports."""
    check_unscored(config.unscored)  # before any request
    cache = judge.cache_path(sidecar_path(config.output, "cache.jsonl"))
    stage = Stage(
        config.output,
        "reviews file",
        inputs={"--answers_a": config.answers_a, "--answers_b": config.answers_b},
        side=(REJECTS, FAILURES, MANIFEST),
        extra={"--teacher_cache": cache},
        reports=REPORT_SUFFIXES,
    )
    with stage.guard():
        check_cache_writable(cache)
        return _run_judge(config, judge, stage, cache, teacher)


def _run_judge(config: JudgeArguments, judge: TeacherArguments, stage: Stage, cache: Path, teacher: Any) -> JudgeRun:
    file_a, file_b = read_answers(config.answers_a), read_answers(config.answers_b)
    pairs, unmatched = match_answers(file_a, file_b)
    if config.offset or config.limit is not None:
        if pairs and config.offset >= len(pairs):
            raise DataLoadError(f"--offset {config.offset}: past the last of the {len(pairs)} matched items")
        pairs = list(row_window(pairs, config.offset, config.limit))
    rejects = [*file_a.rejects, *file_b.rejects, *unmatched]
    logger.info("%d items to judge in both orders; %s", len(pairs), summarize_rejects(rejects))
    source = f"{config.answers_a}, {config.answers_b}"
    stage.reject(rejects, len(pairs), source, "no item has a usable answer in both files", reasons=2)

    own_teacher = teacher is None
    if teacher is None:
        teacher = build_teacher_from_args(judge, cache)
    judge_name = getattr(teacher, "model_name", None) or judge.teacher_model or judge.teacher
    conversations = []
    for a, b in pairs:
        question = question_text(a["instruction"], a.get("input") or "", config.judge_input)
        conversations.append(review_messages(question, a["output"], b["output"]))
        conversations.append(review_messages(question, b["output"], a["output"]))  # swapped: B is Assistant 1
    try:
        results, counts = complete_all_from_args(
            teacher, judge, conversations, cache, validate=has_scores, desc="Judging"
        )
    finally:
        if own_teacher:
            teacher.close()
    records = [
        _record(a, b, str(judge_name), results[2 * i], results[2 * i + 1], config.unscored)
        for i, (a, b) in enumerate(pairs)
    ]
    output = stage.write(records)
    failures = stage.write_side(FAILURES, [r for r in records if r["status"] != "ok"])
    manifest = build_manifest(
        "pairwise-judge",
        judge=judge_entry(judge, str(judge_name)) | {"prompt_sha256": judge_prompt_sha256()},
        files={"answers_a": answers_entry(config.answers_a), "answers_b": answers_entry(config.answers_b)},
        settings={k: getattr(config, k) for k in ("judge_input", "unscored", "offset", "limit")},
        items=len(pairs),
        rejected_rows=len(rejects),
    )
    write_manifest(output, manifest)  # before the reports: the aggregate's manifest holds it
    agg = aggregate_records(records, unscored=config.unscored)
    reports = write_reports(agg, output, source=str(output), plot=config.plot)
    logger.debug("judge config: %s; judge: %s", asdict(config), asdict(judge))
    run = JudgeRun(records, agg, counts, rejects, output, failures, reports)
    if agg.overall.n == 0:  # as `srt eval aggregate` on this file would say: nothing to count is not a result
        raise NoReadableScoresError(
            f"{output}: none of the {len(records)} items got readable scores from the judge in both orders "
            f"(first: {agg.failures[0]['reason']}); see {failures}",
            run,
        )
    return run
