"""``srt eval mtbench``: MT-Bench (the paper's §4-5 evaluation by FastChat's ``llm_judge``) from one command.

The model answers both turns of every question in its training template, the second turn with its own first answer
in the conversation, greedily unless asked otherwise (``--category_temperatures``: FastChat's per-category
temperatures). Questions are cut into shards of question-file rows; both turns of a shard are written together, so
a killed run resumes where it stopped, and a question whose text changed is answered again alone with its shard.

The judge is a teacher (any OpenAI-compatible endpoint, or a local model): its cache, retries, replicas, batch API
and resume come with it, so nothing judged is asked (or paid for) twice. Single-answer grading rates each turn
1-10 (``single-v1``, ``single-v1-multi-turn``; ``single-math-v1*`` with the reference answer for math, reasoning and
coding); pairwise grading asks for a verdict on two models' answers in both orders (``pair-v2*``, ``pair-math-v1*``).
A judgment without a readable verdict is asked again, then written as FastChat writes it (score -1, winner
``error``), which its ``show_result`` leaves out, and counted as a failure, never as a score.

Writes, under ``--output_dir``: ``model_answer/<model_id>.jsonl`` and ``model_judgment/<judge>_single.jsonl`` /
``_pair.jsonl`` (FastChat's files; other models' rows in them are kept); and, as every stage writes its output and
side files (``Stage``), ``<model_id>.mtbench.jsonl`` (one row per graded turn: its score, its outcome against model
B, or why there is none) with ``.summary.json``, ``.chart.png``, ``.failures.jsonl``, ``.rejects.jsonl``,
``.judge-cache.jsonl`` and ``.answer-shards/`` beside it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from srt_trainer.data import Reject, summarize_rejects
from srt_trainer.errors import SRTUserError
from srt_trainer.evaluation.config import MTBenchArguments
from srt_trainer.evaluation.generate import TURN_MARKERS, cut_at_turns, default_generator_name, load_answering_model
from srt_trainer.evaluation.manifest import (
    MANIFEST,
    build_manifest,
    file_entry,
    judge_entry,
    manifest_path,
    write_manifest,
)
from srt_trainer.evaluation.mtbench_formats import (
    CATEGORY_TEMPERATURES,
    GRADED_TURNS,
    OTHER_CATEGORY_TEMPERATURE,
    PROMPT_NAMES,
    AnswerFile,
    JudgePrompt,
    MTBenchInputError,
    Question,
    answer_row,
    has_rating,
    has_verdict,
    merge_rows,
    parse_rating,
    parse_verdict,
    read_answer_file,
    read_judge_prompts,
    read_questions,
)
from srt_trainer.evaluation.mtbench_report import format_report, pair_tally, plot_mtbench, single_scores
from srt_trainer.generation import generate_answers
from srt_trainer.io import ShardPlan, ShardStore, shard_bounds, sidecar_path, write_rows
from srt_trainer.models.config import LoadingArguments, SRTModelConfig
from srt_trainer.stage import REJECTS, SUMMARY, Stage
from srt_trainer.teachers import RunCounts, TeacherArguments, build_teacher_from_args, complete_all_from_args
from srt_trainer.teachers.cache import check_cache_writable

logger = logging.getLogger(__name__)

# Below this temperature FastChat answers greedily.
GREEDY_BELOW = 1e-4


FAILURES = "failures.jsonl"
CHART = "chart.png"
CACHE = "judge-cache.jsonl"


@dataclass
class MTBenchPaths:
    """Where one model's run writes: FastChat's folders, and this run's own files (``<model_id>.mtbench.jsonl``, the
    score of each question's turn, with its side files named by ``Stage``)."""

    output_dir: Path
    model_id: str
    judge_name: str | None = None

    @property
    def answers(self) -> Path:
        return self.output_dir / "model_answer" / f"{self.model_id}.jsonl"

    def judgments(self, kind: str) -> Path:
        return self.output_dir / "model_judgment" / f"{self.judge_name}_{kind}.jsonl"

    @property
    def output(self) -> Path:
        return self.output_dir / f"{self.model_id}.mtbench.jsonl"


@dataclass
class MTBenchRun:
    """What ``run_mtbench`` wrote: the per-turn rows (the output), the summary, the stage (its files), the failures
    and rejects, and what the judge's requests cost per grading."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    paths: MTBenchPaths
    stage: Stage
    failures: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    counts: dict[str, RunCounts] = field(default_factory=dict)

    def report(self) -> str:
        return format_report(self.summary)


class MTBenchNoScoresError(SRTUserError, RuntimeError):
    """No judgment could be read: the files are written, but there is no score. ``run`` holds what was written."""

    def __init__(self, message: str, run: MTBenchRun) -> None:
        super().__init__(message)
        self.run = run


# --- answering -------------------------------------------------------------------------------------------------
class MultiTurnAnswerer:
    """Answers questions turn by turn with a local transformers model in its training template: each later turn's
    prompt holds the model's own earlier answers, each after the template's response separator (where a trained
    answer starts) and closed by EOS: FastChat's vicuna form. (Training and scoring render a conversation's earlier
    turns without the separator; the final, trained turn has it.)"""

    def __init__(
        self,
        config: MTBenchArguments,
        model_args: SRTModelConfig,
        loading: LoadingArguments,
        model: Any = None,
        tokenizer: Any = None,
    ) -> None:
        from srt_trainer.templates import get_template
        from srt_trainer.training.data import response_separator

        self.config = config
        self.model, self.tokenizer = load_answering_model(model_args, loading, model, tokenizer)
        self.template = get_template(model_args.template, self.tokenizer)
        self.separator = response_separator(model_args.template)
        self.eos = self.tokenizer.eos_token or "</s>"
        self.markers = TURN_MARKERS.get(model_args.template, ()) if config.stop_at_turns else ()

    def temperature(self, question: Question) -> float:
        if not self.config.category_temperatures:
            return self.config.temperature
        return CATEGORY_TEMPERATURES.get(question.category, OTHER_CATEGORY_TEMPERATURE)

    def prompt(self, question: Question, answers: Sequence[str], turn: int) -> str:
        """The prompt of turn ``turn`` (0-based) after the model's ``answers`` to the earlier ones."""
        messages = []
        for j in range(turn):
            messages.append({"role": "user", "content": question.turns[j]})
            messages.append({"role": "assistant", "content": self.separator + answers[j]})
        messages.append({"role": "user", "content": question.turns[turn]})
        return self.template.conversation_prompt(messages, eos_token=self.eos)

    def answer(self, questions: Sequence[Question], seed: int) -> list[list[str]]:
        """Every turn of every question, batched turn by turn (questions of one temperature together)."""
        answers: list[list[str]] = [[] for _ in questions]
        groups: dict[float, list[int]] = {}
        for i, q in enumerate(questions):
            groups.setdefault(self.temperature(q), []).append(i)
        for g, (temperature, members) in enumerate(sorted(groups.items())):
            for turn in range(max(len(questions[i].turns) for i in members)):
                live = [i for i in members if turn < len(questions[i].turns)]
                kwargs: dict[str, Any] = {}
                if temperature >= GREEDY_BELOW:
                    torch.manual_seed(seed + 1000 * g + turn)
                    kwargs = {"do_sample": True, "temperature": temperature}
                texts = generate_answers(
                    self.model,
                    self.tokenizer,
                    [self.prompt(questions[i], answers[i], turn) for i in live],
                    max_new_tokens=self.config.max_new_tokens,
                    batch_size=self.config.batch_size,
                    generation_kwargs=kwargs,
                    sort_by_length=True,
                    progress=False,
                )
                for i, text in zip(live, texts, strict=True):
                    answers[i].append(cut_at_turns(text, self.markers) if self.markers else text)
        return answers


def answer_questions(
    config: MTBenchArguments,
    model_args: SRTModelConfig,
    loading: LoadingArguments,
    questions: Sequence[Question],
    store: ShardStore,
    model_id: str,
    model: Any = None,
    tokenizer: Any = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The answer rows of ``questions`` (in their order) and what was done. Shards are cut over the rows of the
    questions file; a shard an earlier run with the same settings finished is read back when its questions are
    unchanged (row and content), and answered again otherwise: a question fixed in the file costs its shard alone."""
    if config.overwrite:
        store.clear()
    settings = config.fingerprint_settings(model_args)
    store.check_manifest({"settings": settings, "shard_size": config.shard_size})
    bounds = shard_bounds(max(q.row for q in questions) + 1, config.shard_size)
    members = [[q for q in questions if s <= q.row < e] for s, e in bounds]
    done = []
    for k, qs in enumerate(members):
        if store.path(k).exists():
            if [(r["row"], r["key"]) for r in store.read(k)] == [(q.row, q.key) for q in qs]:
                done.append(k)
            else:
                logger.info("shard %d: its questions changed since it was answered; answering them again", k)
    plan = ShardPlan(bounds, done)
    reused = sum(len(members[k]) for k in done)
    if done:
        logger.info("resuming: %d of %d questions already answered in %s", reused, len(questions), store.work_dir)
    answerer: list[MultiTurnAnswerer] = []  # loaded for the first shard to answer, never when all are done

    def answer(k: int, start: int, end: int) -> list[dict[str, Any]]:
        if not members[k]:
            return []
        if not answerer:
            answerer.append(MultiTurnAnswerer(config, model_args, loading, model, tokenizer))
        now = time.time()
        turns = answerer[0].answer(members[k], seed=config.seed + k)
        return [
            {"row": q.row, "key": q.key, "question_id": q.question_id, "turns": t, "tstamp": now}
            for q, t in zip(members[k], turns, strict=True)
        ]

    start = time.perf_counter()
    bar = tqdm(total=len(questions), initial=reused, desc=f"Answering ({model_id})", unit="question")
    new = []
    for k, rows in store.run(plan, plan.todo, answer):
        new.append((k, rows))
        bar.update(len(rows))
    bar.close()
    by_row = {r["row"]: r for r in store.collect(plan, new, "answered")}
    rows = [answer_row(q.question_id, model_id, by_row[q.row]["turns"], by_row[q.row]["tstamp"]) for q in questions]
    generation = {
        "generated_now": len(questions) - reused,
        "seconds": round(time.perf_counter() - start, 3),
        "settings": settings,
    }
    return rows, generation


# --- grading ---------------------------------------------------------------------------------------------------
@dataclass
class _Task:
    """One judgment to ask: a question's turn, with one conversation (single) or two, in both orders (pair)."""

    question: Question
    turn: int
    prompt: JudgePrompt
    conversations: list[list[dict[str, str]]]
    user_prompts: list[str]


def _values(
    question: Question, turn: int, a: Sequence[str], b: Sequence[str] | None, ref: Sequence[str] | None
) -> dict[str, str]:
    """Every placeholder a judge prompt of this turn may name (``str.format`` ignores the ones it does not)."""
    if turn == 1:
        values = {"question": question.turns[0], "answer": a[0], "answer_a": a[0]}
        values |= {"answer_b": b[0]} if b else {}
        values |= {"ref_answer_1": ref[0]} if ref else {}
        return values
    values = {"question_1": question.turns[0], "question_2": question.turns[1]}
    values |= {"answer_1": a[0], "answer_2": a[1], "answer_a_1": a[0], "answer_a_2": a[1]}
    values |= {"answer_b_1": b[0], "answer_b_2": b[1]} if b else {}
    values |= {"ref_answer_1": ref[0], "ref_answer_2": ref[1]} if ref else {}
    return values


class _Grading:
    """The judgments one grading asks for, and the failures found before asking (an answer or reference missing)."""

    def __init__(self, kind: str, model_id: str, model_b: str | None = None) -> None:
        self.kind, self.model_id, self.model_b = kind, model_id, model_b
        self.tasks: list[_Task] = []
        self.failures: list[dict[str, Any]] = []

    def fail(self, q: Question, turn: int, reason: str, prompt: str | None = None, judgment: Any = None) -> None:
        self.failures.append(
            {
                "kind": self.kind,
                "question_id": q.question_id,
                "category": q.category,
                "turn": turn,
                "model": self.model_id,
                **({"model_b": self.model_b} if self.model_b else {}),
                "prompt": prompt,
                "reason": reason,
                "judgment": judgment,
            }
        )


def _missing_turn(answers: AnswerFile | Mapping[str, list[str]], q: Question, turn: int, what: str) -> str | None:
    """Why ``answers`` cannot be graded at ``turn`` of ``q``, or None."""
    if isinstance(answers, AnswerFile):
        turns, where = answers.answers.get(str(q.question_id)), answers.where(q.question_id)
    else:
        turns, where = answers.get(str(q.question_id)), what
    if turns is None:
        return f"{where}: no answer to question {q.question_id}"
    if len(turns) < turn:
        return f"{where}, field 'choices[0].turns': {len(turns)} turn(s), no answer to turn {turn}"
    return None


def _reference(q: Question, turn: int, refs: AnswerFile | None) -> tuple[list[str] | None, str | None]:
    """The reference answer's turns when ``q`` is graded against one, or why it is missing."""
    if not q.needs_reference:
        return None, None
    if refs is None:
        return None, f"no --reference_answers: a {q.category} question is graded against a reference answer"
    turns = refs.answers.get(str(q.question_id))
    if turns is None:
        return None, f"{refs.path}: no reference answer to question {q.question_id} ({q.category})"
    if len(turns) < turn:
        return None, f"{refs.where(q.question_id)}, field 'choices[0].turns': the reference has no turn {turn}"
    return turns, None


def plan_single(
    questions: Sequence[Question],
    answers: AnswerFile | Mapping[str, list[str]],
    answers_name: str,
    refs: AnswerFile | None,
    prompts: Mapping[str, JudgePrompt],
    model_id: str,
) -> _Grading:
    """One single-answer judgment per graded turn of every question."""
    grading = _Grading("single", model_id)
    lookup = answers.answers if isinstance(answers, AnswerFile) else answers
    for q in questions:
        for turn in GRADED_TURNS[: len(q.turns)]:
            name = PROMPT_NAMES[("single", q.needs_reference, turn)]
            ref, why = _reference(q, turn, refs)
            why = _missing_turn(answers, q, turn, answers_name) or why
            if why:
                grading.fail(q, turn, why, name)
                continue
            messages, user = prompts[name].messages(**_values(q, turn, lookup[str(q.question_id)], None, ref))
            grading.tasks.append(_Task(q, turn, prompts[name], [messages], [user]))
    return grading


def plan_pairs(
    questions: Sequence[Question],
    answers: AnswerFile | Mapping[str, list[str]],
    answers_name: str,
    answers_b: AnswerFile,
    refs: AnswerFile | None,
    prompts: Mapping[str, JudgePrompt],
    model_id: str,
    model_b: str,
) -> _Grading:
    """Two judgments per graded turn of every question: this model as assistant A, then as assistant B."""
    grading = _Grading("pair", model_id, model_b)
    lookup = answers.answers if isinstance(answers, AnswerFile) else answers
    for q in questions:
        for turn in GRADED_TURNS[: len(q.turns)]:
            name = PROMPT_NAMES[("pair", q.needs_reference, turn)]
            ref, why = _reference(q, turn, refs)
            why = _missing_turn(answers, q, turn, answers_name) or _missing_turn(answers_b, q, turn, "") or why
            if why:
                grading.fail(q, turn, why, name)
                continue
            a, b = lookup[str(q.question_id)], answers_b.answers[str(q.question_id)]
            first, user_1 = prompts[name].messages(**_values(q, turn, a, b, ref))
            second, user_2 = prompts[name].messages(**_values(q, turn, b, a, ref))
            grading.tasks.append(_Task(q, turn, prompts[name], [first, second], [user_1, user_2]))
    return grading


def _ask(teacher: Any, judge: TeacherArguments, grading: _Grading, cache: Path) -> tuple[list[Any], RunCounts]:
    conversations = [c for task in grading.tasks for c in task.conversations]
    validate = has_rating if grading.kind == "single" else has_verdict
    desc = "Grading (single)" if grading.kind == "single" else "Grading (pairs)"
    return complete_all_from_args(teacher, judge, conversations, cache, validate=validate, desc=desc)


def _asks(result: Any) -> str:
    return f"{1 + result.reasks} ask{'s' if result.reasks else ''}"


def single_rows(grading: _Grading, results: Sequence[Any], judge_name: str) -> list[dict[str, Any]]:
    """FastChat's single judgment rows of the answered judgments (score -1: no readable rating, a failure)."""
    rows = []
    for task, result in zip(grading.tasks, results, strict=True):
        q, name = task.question, task.prompt.name
        if result.text is None:
            grading.fail(q, task.turn, f"the judge did not answer: {result.error}", name)
            continue
        score = parse_rating(result.text)
        if score is None:
            grading.fail(q, task.turn, f"no readable [[rating]] after {_asks(result)}", name, result.text)
        rows.append(
            {
                "question_id": q.question_id,
                "model": grading.model_id,
                "judge": [judge_name, name],
                "user_prompt": task.user_prompts[0],
                "judgment": result.text,
                "score": -1 if score is None else score,
                "turn": task.turn,
                "tstamp": time.time(),
            }
        )
    return rows


def pair_rows(grading: _Grading, results: Sequence[Any], judge_name: str) -> list[dict[str, Any]]:
    """FastChat's pairwise judgment rows (``g1``: this model as A; ``g2``: as B); winner ``error`` where a verdict
    cannot be read (a failure)."""
    rows = []
    for i, task in enumerate(grading.tasks):
        q, name, (g1, g2) = task.question, task.prompt.name, results[2 * i : 2 * i + 2]
        if g1.text is None or g2.text is None:
            grading.fail(q, task.turn, f"the judge did not answer: {g1.error or g2.error}", name)
            continue
        v1, v2 = parse_verdict(g1.text), parse_verdict(g2.text)
        winners = (
            {"A": "model_1", "B": "model_2", "tie": "tie"}.get(v1 or "", "error"),
            {"A": "model_2", "B": "model_1", "tie": "tie"}.get(v2 or "", "error"),
        )
        unread = [f"order {k + 1} ({_asks(r)})" for k, (v, r) in enumerate(((v1, g1), (v2, g2))) if v is None]
        if unread:
            reason = f"no readable [[A]] / [[B]] / [[C]] verdict in {' and '.join(unread)}"
            grading.fail(q, task.turn, reason, name, [g1.text, g2.text])
        rows.append(
            {
                "question_id": q.question_id,
                "model_1": grading.model_id,
                "model_2": grading.model_b,
                "g1_winner": winners[0],
                "g2_winner": winners[1],
                "judge": [judge_name, name],
                "g1_user_prompt": task.user_prompts[0],
                "g1_judgment": g1.text,
                "g2_user_prompt": task.user_prompts[1],
                "g2_judgment": g2.text,
                "turn": task.turn,
                "tstamp": time.time(),
            }
        )
    return rows


# --- the run ---------------------------------------------------------------------------------------------------
def _judge_name(config: MTBenchArguments, judge: TeacherArguments) -> str:
    return config.judge_name or Path(str(judge.teacher_model or "embedded").rstrip("/")).name


def turn_rows(
    questions: Sequence[Question],
    model_id: str,
    single: Sequence[Mapping[str, Any]],
    pairs: Sequence[Mapping[str, Any]],
    failures: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """The run's output: one row per graded turn of every question, with its score (single grading) and its outcome
    against model B (pairwise, FastChat's rule: a win needs both orders), or why there is none."""
    scores = {(str(r["question_id"]), r["turn"]): r["score"] for r in single}
    outcomes = {}
    for r in pairs:
        if "error" in (r["g1_winner"], r["g2_winner"]):
            continue
        tie = r["g1_winner"] == "tie" or r["g1_winner"] != r["g2_winner"]
        outcomes[(str(r["question_id"]), r["turn"])] = (
            "tie" if tie else "win" if r["g1_winner"] == "model_1" else "loss"
        )
    why = {(f["kind"], str(f["question_id"]), f["turn"]): f["reason"] for f in failures}
    rows = []
    for q in questions:
        for turn in GRADED_TURNS[: len(q.turns)]:
            key = (str(q.question_id), turn)
            score = scores.get(key)
            rows.append(
                {
                    "question_id": q.question_id,
                    "category": q.category,
                    "turn": turn,
                    "model": model_id,
                    "score": None if score in (None, -1) else score,
                    "failure": why.get(("single", *key)),
                    "pair_result": outcomes.get(key),
                    "pair_failure": why.get(("pair", *key)),
                }
            )
    return rows


def mtbench_manifest(
    config: MTBenchArguments, judge: TeacherArguments, run: MTBenchRun, model_b: str | None
) -> dict[str, Any]:
    """How this run's numbers were obtained: the question, judge-prompt and reference files and both answer files
    (sha256), the model and its generation settings (seed, temperatures, limits), the judge (model, endpoint host,
    sampling), the date; ``answers_b_manifest`` names model B's own manifest when it was answered here too."""
    summary, paths = run.summary, run.paths
    generation = summary["generation"]
    answers = config.answers or paths.answers
    b_manifest = None
    if config.grade and config.answers_b and model_b:  # FastChat's layout: <dir>/model_answer/<model_b>.jsonl
        b_manifest = manifest_path(MTBenchPaths(Path(config.answers_b).parent.parent, model_b).output)
    return build_manifest(
        "mtbench",
        benchmark="mt_bench",
        model_id=paths.model_id,
        generation=None if generation is None else generation["settings"],
        seed=config.seed if generation is not None else None,
        judge=judge_entry(judge, paths.judge_name) if config.grade else None,
        grading={"single": config.single and config.grade, "model_b": model_b if config.grade else None},
        limit=config.limit,
        questions=summary["questions"],
        files={
            "questions": file_entry(config.questions),
            "judge_prompts": file_entry(config.judge_prompts) if config.grade else None,
            "reference_answers": file_entry(config.reference_answers) if config.grade else None,
            "answers": file_entry(answers),
            "answers_b": file_entry(config.answers_b) if config.grade else None,
            "answers_b_manifest": file_entry(b_manifest) if b_manifest and b_manifest.is_file() else None,
        },
    )


def run_mtbench(
    config: MTBenchArguments,
    model_args: SRTModelConfig | None = None,
    loading: LoadingArguments | None = None,
    judge: TeacherArguments | None = None,
    model: Any = None,
    tokenizer: Any = None,
    teacher: Any = None,
) -> MTBenchRun:
    """Answer MT-Bench's questions with the model ``model_args`` describes (or ``model``), or take ``config.answers``;
    grade them with the judge ``judge`` describes (or ``teacher``); write FastChat's files, the per-turn rows, the
    summary and the chart. Every input is read and checked before the first answer is generated."""
    model_args = model_args or SRTModelConfig()
    loading = loading or LoadingArguments()
    judge = judge or TeacherArguments()
    kinds = (["single"] if config.single else []) + (["pair"] if config.answers_b else [])
    if config.grade and not kinds:
        raise MTBenchInputError("--single false grades nothing without --answers_b: give one, or --grade false")
    if config.grade and config.judge_prompts is None:
        raise MTBenchInputError("--judge_prompts (MT-Bench's judge_prompts.jsonl) is needed to grade, or --grade false")
    prompts = read_judge_prompts(config.judge_prompts, kinds) if config.grade else {}
    questions, rejects = read_questions(config.questions, config.limit)
    needing = sorted({q.category for q in questions if q.needs_reference})
    if config.grade and needing and config.reference_answers is None:
        count = sum(q.needs_reference for q in questions)
        raise MTBenchInputError(
            f"--reference_answers is needed: {count} question(s) of {config.questions} ({', '.join(needing)}) are "
            "graded against a reference answer"
        )
    refs = read_answer_file(config.reference_answers) if config.grade and config.reference_answers else None
    given = read_answer_file(config.answers) if config.answers else None
    answers_b = read_answer_file(config.answers_b) if config.grade and config.answers_b else None
    for extra in (refs, given, answers_b):
        rejects += extra.rejects if extra else []

    if given is not None:
        model_id = config.model_id or given.model_id or Path(str(config.answers)).stem
    else:
        model_id = config.model_id or default_generator_name(model_args.model_name_or_path, model_args.adapter)
        if model_args.adapter and model is None:  # before the first answer, not when the model is loaded
            from srt_trainer.models.loading import check_adapter_base, resolve_model_path

            check_adapter_base(resolve_model_path(model_args.model_name_or_path), model_args.adapter)
    model_b = None
    if answers_b is not None:
        model_b = answers_b.model_id or Path(str(config.answers_b)).stem
        if model_b == model_id:
            raise MTBenchInputError(
                f"--answers_b {config.answers_b}: answers of {model_id}, the model graded; give another model's"
            )
    paths = MTBenchPaths(Path(config.output_dir), model_id, _judge_name(config, judge) if config.grade else None)
    stage = Stage(
        paths.output,
        "MT-Bench run",
        inputs={
            "--questions": config.questions,
            "--judge_prompts": config.judge_prompts,
            "--reference_answers": config.reference_answers,
            "--answers": config.answers,
            "--answers_b": config.answers_b,
        },
        side=(REJECTS, SUMMARY, FAILURES, CHART, MANIFEST),
        extra={
            "the answers file": None if given else paths.answers,
            "the single judgments": paths.judgments("single") if config.grade and "single" in kinds else None,
            "the pairwise judgments": paths.judgments("pair") if config.grade and "pair" in kinds else None,
            "--teacher_cache": judge.cache_path(sidecar_path(paths.output, CACHE)) if config.grade else None,
        },
    )
    with stage.guard():
        stage.reject(rejects, len(questions), str(config.questions), "no usable question")
        if rejects:
            logger.warning(summarize_rejects(rejects))
        summary: dict[str, Any] = {
            "benchmark": "mt_bench",
            "model_id": model_id,
            "judge": paths.judge_name,
            "questions": len(questions),
            "rejected_rows": len(rejects),
            "generation": None,
            "single": None,
            "pair": None,
            "failures": 0,
        }
        if given is None:
            store = stage.shards("answer")
            rows, summary["generation"] = answer_questions(
                config, model_args, loading, questions, store, model_id, model, tokenizer
            )
            write_rows(rows, paths.answers)
            answers: AnswerFile | dict[str, list[str]] = {str(r["question_id"]): r["choices"][0]["turns"] for r in rows}
            answers_name = str(paths.answers)
        else:
            answers, answers_name = given, str(config.answers)
        summary["files"] = {"answers": answers_name, "output": str(stage.output), "rejects": str(stage.rejects)}
        run = MTBenchRun([], summary, paths, stage, rejects=rejects)
        judged: dict[str, list[dict[str, Any]]] = {"single": [], "pair": []}
        if config.grade:
            graded = (answers, answers_name, refs, answers_b, model_b)
            judged = _grade(config, judge, teacher, questions, graded, prompts, run)
        run.rows = turn_rows(questions, model_id, judged["single"], judged["pair"], run.failures)
        stage.write(run.rows)
        stage.write_summary(summary)
        summary["files"]["manifest"] = str(write_manifest(stage.output, mtbench_manifest(config, judge, run, model_b)))
    scored = (summary["single"] or {}).get("scored", 0) + (summary["pair"] or {}).get("n", 0)
    if config.grade and scored == 0:  # every file is written: the rows and the failures say why, turn by turn
        first = run.failures[0]["reason"] if run.failures else "nothing to grade"
        raise MTBenchNoScoresError(
            f"{paths.output_dir}: none of the judge's answers had a readable verdict (first: {first}); "
            f"see {summary['files']['failures']}",
            run,
        )
    return run


def _grade(
    config: MTBenchArguments,
    judge: TeacherArguments,
    teacher: Any,
    questions: Sequence[Question],
    graded: tuple[Any, str, AnswerFile | None, AnswerFile | None, str | None],
    prompts: Mapping[str, JudgePrompt],
    run: MTBenchRun,
) -> dict[str, list[dict[str, Any]]]:
    """Plan, ask and write each grading; then the failures and the chart. Returns the judgment rows of each
    grading."""
    answers, answers_name, refs, answers_b, model_b = graded
    paths, summary, stage = run.paths, run.summary, run.stage
    cache = judge.cache_path(stage.path(CACHE))
    gradings = []
    if config.single:
        gradings.append(plan_single(questions, answers, answers_name, refs, prompts, paths.model_id))
    if answers_b is not None and model_b is not None:
        gradings.append(plan_pairs(questions, answers, answers_name, answers_b, refs, prompts, paths.model_id, model_b))
    check_cache_writable(cache)
    own_teacher = teacher is None
    if teacher is None:
        teacher = build_teacher_from_args(judge, cache)
    categories = {str(q.question_id): q.category for q in questions}
    judged: dict[str, list[dict[str, Any]]] = {"single": [], "pair": []}
    try:
        for grading in gradings:
            results, counts = _ask(teacher, judge, grading, cache)
            run.counts[grading.kind] = counts
            path = paths.judgments(grading.kind)
            if grading.kind == "single":
                rows = judged["single"] = single_rows(grading, results, str(paths.judge_name))
                merge_rows(path, rows, lambda r: r.get("model") == paths.model_id)
                summary["single"] = {"file": str(path), **single_scores(rows, categories)}
            else:
                rows = judged["pair"] = pair_rows(grading, results, str(paths.judge_name))
                pair = (paths.model_id, model_b)
                merge_rows(path, rows, lambda r, pair=pair: (r.get("model_1"), r.get("model_2")) == pair)
                summary["pair"] = {"file": str(path), "model_b": model_b, **pair_tally(rows)}
            summary[grading.kind]["failures"] = len(grading.failures)
            summary[grading.kind]["requests"] = counts.as_dict()
            run.failures += grading.failures
    finally:
        if own_teacher:
            teacher.close()
    failures = stage.write_side(FAILURES, run.failures)
    summary["failures"] = len(run.failures)
    summary["files"]["failures"] = str(failures)
    if config.plot:
        summary["files"]["chart"] = str(plot_mtbench(summary, stage.path(CHART)))
    return judged
