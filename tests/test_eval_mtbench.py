"""`srt eval mtbench`: both turns answered by the embedded model (the second after its own first answer), resumed
after a stop; graded in FastChat's formats and read back as FastChat's ``show_result`` reads them; bad inputs.

The question, judge-prompt and reference files are our own, in MT-Bench's formats (tests/data/mt_bench). One test
grades with a real judge (`transformers serve` with the embedded model, which rarely writes a readable rating);
the others with a scripted judge on loopback, whose verdicts are known, to check the counting, the re-asks and
the failures.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
from collections import Counter
from pathlib import Path

import pytest

from srt_trainer.cli import main as srt_main
from srt_trainer.evaluation.manifest import endpoint_host
from srt_trainer.evaluation.mtbench_formats import parse_rating, read_questions
from srt_trainer.io import read_rows
from tests.processes import interrupted_after_shards
from tests.serving import SlowTeacher

MT = Path(__file__).resolve().parent / "data" / "mt_bench"
QUESTIONS = MT / "question.jsonl"
PROMPTS = MT / "judge_prompts.jsonl"
REFERENCES = MT / "reference_answer" / "reference.jsonl"


def _srt(args: list[str]) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = srt_main(args)
    return rc, stdout.getvalue(), stderr.getvalue()


def _mtbench(out: Path, *extra: str, questions: Path = QUESTIONS) -> list[str]:
    return ["eval", "mtbench", "--questions", str(questions), "--output_dir", str(out), *extra]


def _graded(out: Path, judge: str, *extra: str, questions: Path = QUESTIONS) -> list[str]:
    """Grading by ``judge`` (an endpoint), with our judge prompts and reference answers."""
    return _mtbench(
        out,
        "--judge_prompts",
        str(PROMPTS),
        "--reference_answers",
        str(REFERENCES),
        "--teacher",
        "openai",
        "--base_url",
        judge,
        "--teacher_model",
        "judge-model",
        *extra,
        questions=questions,
    )


# --- answering -------------------------------------------------------------------------------------------------
def _answer(out: Path, model, tokenizer, questions: Path = QUESTIONS) -> dict:
    """Answers only (no grading), three questions one per shard (each generated alone, without padding), with the
    session's embedded model (the command's own loading is exercised by the real-judge test)."""
    from srt_trainer.evaluation.config import MTBenchArguments
    from srt_trainer.evaluation.mtbench import run_mtbench

    config = MTBenchArguments(
        questions=str(questions), output_dir=str(out), grade=False, max_new_tokens=6, shard_size=1
    )
    return run_mtbench(config, model=model, tokenizer=tokenizer).summary


@pytest.fixture(scope="module")
def answered(embedded_model, embedded_tokenizer, tmp_path_factory) -> Path:
    """An uninterrupted run."""
    out = tmp_path_factory.mktemp("mtbench")
    _answer(out, embedded_model, embedded_tokenizer)
    return out


def test_both_turns_answered_in_fastchat_format(answered, embedded_model, embedded_tokenizer):
    """One row per question in FastChat's answer format; turn 2 is the greedy answer to the conversation that holds
    the model's own turn-1 answer, in the vicuna template (as FastChat's vicuna form: `ASSISTANT: a1</s>USER:`)."""
    import torch

    from srt_trainer.templates import get_template

    rows = read_rows(answered / "model_answer" / "SmolLM2-135M-Instruct.jsonl")
    questions, _ = read_questions(QUESTIONS)
    assert [r["question_id"] for r in rows] == [q.question_id for q in questions]
    for r in rows:
        assert set(r) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
        assert r["model_id"] == "SmolLM2-135M-Instruct" and len(r["answer_id"]) == 22
        assert [c["index"] for c in r["choices"]] == [0] and len(r["choices"][0]["turns"]) == 2
    q, (a1, a2) = questions[1], rows[1]["choices"][0]["turns"]
    eos = embedded_tokenizer.eos_token
    prompt = get_template("vicuna").prompt(q.turns[0]) + f" {a1}{eos}USER: {q.turns[1]} ASSISTANT:"
    ids = embedded_tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = embedded_model.generate(
            **ids, max_new_tokens=6, do_sample=False, pad_token_id=embedded_tokenizer.pad_token_id
        )
    assert a2 == embedded_tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    summary = json.loads((answered / "SmolLM2-135M-Instruct.mtbench.summary.json").read_text())
    assert summary["generation"]["generated_now"] == 3 and summary["single"] is None and summary["pair"] is None


def test_stopped_run_resumes_and_a_changed_question_alone_is_answered_again(
    answered, embedded_model, embedded_tokenizer, tmp_path, caplog
):
    out = tmp_path / "run"
    with interrupted_after_shards(1):
        _answer(out, embedded_model, embedded_tokenizer)
    shards = out / "SmolLM2-135M-Instruct.mtbench.answer-shards"
    first = shards / "shard-000000.jsonl"
    stamp = first.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="srt_trainer"):
        summary = _answer(out, embedded_model, embedded_tokenizer)
    assert "resuming: 1 of 3 questions already answered" in caplog.text
    assert first.stat().st_mtime_ns == stamp and summary["generation"]["generated_now"] == 2  # not answered again
    name = "model_answer/SmolLM2-135M-Instruct.jsonl"
    turns = [r["choices"][0]["turns"] for r in read_rows(out / name)]
    assert turns == [r["choices"][0]["turns"] for r in read_rows(answered / name)]

    # the third question's text changes: its shard alone is answered again
    changed = tmp_path / "question.jsonl"
    lines = QUESTIONS.read_text().splitlines()
    row = json.loads(lines[2]) | {"turns": ["Name one reason people keep a diary.", "Say it in five words."]}
    changed.write_text("\n".join([*lines[:2], json.dumps(row)]) + "\n")
    stamps = {p.name: p.stat().st_mtime_ns for p in shards.glob("shard-*.jsonl")}
    summary = _answer(out, embedded_model, embedded_tokenizer, questions=changed)
    changed_shards = {p.name for p in shards.glob("shard-*.jsonl") if p.stat().st_mtime_ns != stamps[p.name]}
    assert changed_shards == {"shard-000002.jsonl"} and summary["generation"]["generated_now"] == 1


# --- grading, with a scripted judge -----------------------------------------------------------------------------
def _answer_file(path: Path, model_id: str, word: str) -> Path:
    rows = [
        {
            "question_id": q.question_id,
            "answer_id": f"{model_id}-{q.question_id}",
            "model_id": model_id,
            "choices": [{"index": 0, "turns": [f"{word} answer one to q{q.question_id}.", f"{word} answer two."]}],
            "tstamp": 0.0,
        }
        for q in read_questions(QUESTIONS)[0]
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class ScriptedJudge:
    """A judge whose verdicts are known. Single grading rates Tuned's answers by question and turn (its first
    answer to one judgment has no rating, its re-ask has; one judgment never gets a rating) and Base's 4.
    Pairwise: Tuned wins question 1; question 2 goes to whoever is assistant A (a tie once both orders are
    counted); Base wins question 3's first turn; question 3's second turn gets both verdicts (unreadable)."""

    def __init__(self) -> None:
        self.ratings = {(1, 1): 7, (1, 2): 8, (2, 1): 9, (2, 2): 6, (3, 1): 8, (3, 2): None}
        self.asked: Counter[str] = Counter()
        self.server = SlowTeacher(0, self.reply)

    @staticmethod
    def question_and_turn(prompt: str) -> tuple[int, int]:
        qid = next(k for k, word in ((1, "morning rain"), (2, "12 times 7"), (3, "diaries")) if word in prompt)
        return qid, 2 if "### User:" in prompt else 1

    def reply(self, prompt: str) -> str:
        self.asked[prompt] += 1
        qid, turn = self.question_and_turn(prompt)
        if "Answer of A" in prompt or "Conversation of Assistant A" in prompt:
            a_is_tuned = prompt.find("Tuned answer") < prompt.find("Base answer")
            if qid == 1:
                return f"A fair comparison. [[{'A' if a_is_tuned else 'B'}]]"
            if qid == 2:
                return "The first one. [[A]]"
            return f"[[{'B' if a_is_tuned else 'A'}]]" if turn == 1 else "Either [[A]] or [[B]]."
        if "Base answer" in prompt:
            return "Plain. Rating: [[4]]"
        rating = self.ratings[(qid, turn)]
        if rating is None or ((qid, turn) == (1, 1) and self.asked[prompt] == 1):
            return "It is a fine answer."
        return f"Clear and right. Rating: [[{rating}]]"

    def close(self) -> None:
        self.server.close()


@pytest.fixture(scope="module")
def judge(monkeypatch_module):
    monkeypatch_module.delenv("OPENAI_API_KEY", raising=False)  # a local endpoint needs no key
    judge = ScriptedJudge()
    yield judge
    judge.close()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _show_result_single(path: Path):
    """FastChat's show_result for single grading, as it reads the file."""
    import pandas as pd

    df = pd.read_json(path, lines=True)[["model", "score", "turn"]]
    df = df[df["score"] != -1]
    per_turn = df.groupby(["model", "turn"]).mean()["score"].to_dict()
    overall = df[["model", "score"]].groupby(["model"]).mean()["score"].to_dict()
    return per_turn, overall


def _show_result_pair(path: Path) -> dict[str, dict[str, int]]:
    """FastChat's show_result for pairwise grading: pairs with an unreadable verdict dropped, a win only when both
    orders agree."""
    import pandas as pd

    df = pd.read_json(path, lines=True)
    df = df[(df["g1_winner"] != "error") & (df["g2_winner"] != "error")]
    tally: dict[str, Counter] = {}
    for _, row in df.iterrows():
        if row["g1_winner"] == "tie" or row["g1_winner"] != row["g2_winner"]:
            outcomes = {row["model_1"]: "tie", row["model_2"]: "tie"}
        else:
            winner = row["model_1"] if row["g1_winner"] == "model_1" else row["model_2"]
            loser = row["model_2"] if winner == row["model_1"] else row["model_1"]
            outcomes = {winner: "win", loser: "loss"}
        for model, outcome in outcomes.items():
            tally.setdefault(model, Counter())[outcome] += 1
    return {m: dict(c) for m, c in tally.items()}


def test_single_and_pairwise_grading_read_back_as_fastchat_does(judge, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-on-disk")  # sent to the judge, written nowhere
    out = tmp_path / "mt"
    tuned = _answer_file(tmp_path / "answers" / "tuned.jsonl", "tuned", "Tuned")
    base = _answer_file(tmp_path / "answers" / "base.jsonl", "base", "Base")
    args = _graded(out, judge.server.base_url, "--answers", str(tuned), "--answers_b", str(base))
    rc, stdout, err = _srt(args)
    assert rc == 0, err
    single_file, pair_file = (
        out / "model_judgment" / "judge-model_single.jsonl",
        out / "model_judgment" / "judge-model_pair.jsonl",
    )
    summary = json.loads((out / "tuned.mtbench.summary.json").read_text())

    # single: 6 judgments, one without a rating (score -1, a failure), one rated only when asked again
    rows = read_rows(single_file)
    assert [(r["question_id"], r["turn"], r["score"]) for r in rows] == [
        (1, 1, 7), (1, 2, 8), (2, 1, 9), (2, 2, 6), (3, 1, 8), (3, 2, -1)
    ]  # fmt: skip
    assert [r["judge"][1] for r in rows] == [
        "single-v1", "single-v1-multi-turn", "single-math-v1", "single-math-v1-multi-turn", "single-v1",
        "single-v1-multi-turn",
    ]  # fmt: skip
    assert all(
        set(r) == {"question_id", "model", "judge", "user_prompt", "judgment", "score", "turn", "tstamp"} for r in rows
    )
    assert "12 times 7 is 84." in rows[2]["user_prompt"] and "84 plus 16 is 100." in rows[3]["user_prompt"]
    assert "Tuned answer one to q1." in rows[1]["user_prompt"]  # the second turn is graded with the first in view
    per_turn, overall = _show_result_single(single_file)
    assert per_turn == {("tuned", 1): 8.0, ("tuned", 2): 7.0} and overall == {"tuned": 7.6}
    single = summary["single"]
    assert (single["turn_1"], single["turn_2"], single["overall"]) == (8.0, 7.0, 7.6)
    assert single["per_category"] == {
        "writing": {"overall": 7.5, "turn_1": 7.0, "turn_2": 8.0},
        "math": {"overall": 7.5, "turn_1": 9.0, "turn_2": 6.0},
        "humanities": {"overall": 8.0, "turn_1": 8.0, "turn_2": None},
    }
    assert (single["judgments"], single["scored"], single["failures"]) == (6, 5, 1)
    assert single["requests"]["reasked"] == 2  # (1, 1) and (3, 2), each asked twice

    # pairwise: both orders asked; a win needs both; the unreadable pair is an error row and a failure
    pairs = read_rows(pair_file)
    assert [(r["turn"], r["g1_winner"], r["g2_winner"]) for r in pairs] == [
        (1, "model_1", "model_1"), (2, "model_1", "model_1"), (1, "model_1", "model_2"), (2, "model_1", "model_2"),
        (1, "model_2", "model_2"), (2, "error", "error"),
    ]  # fmt: skip
    assert all(r["g2_user_prompt"].find("Base answer") < r["g2_user_prompt"].find("Tuned answer") for r in pairs)
    assert _show_result_pair(pair_file) == {
        "tuned": {"win": 2, "tie": 2, "loss": 1},
        "base": {"loss": 2, "tie": 2, "win": 1},
    }
    pair = summary["pair"]
    assert (pair["model_b"], pair["win"], pair["tie"], pair["loss"], pair["n"], pair["failures"]) == (
        "base",
        2,
        2,
        1,
        5,
        1,
    )
    assert pair["win_rate_adjusted"] == pytest.approx(0.6)

    # the run's own output: every graded turn with its score and outcome, or why it has none
    turns = read_rows(out / "tuned.mtbench.jsonl")
    assert [(r["question_id"], r["category"], r["turn"], r["score"], r["pair_result"]) for r in turns] == [
        (1, "writing", 1, 7, "win"), (1, "writing", 2, 8, "win"), (2, "math", 1, 9, "tie"), (2, "math", 2, 6, "tie"),
        (3, "humanities", 1, 8, "loss"), (3, "humanities", 2, None, None),
    ]  # fmt: skip
    assert turns[5]["failure"] == "no readable [[rating]] after 2 asks" and "verdict" in turns[5]["pair_failure"]
    failures = read_rows(out / "tuned.mtbench.failures.jsonl")
    assert [(f["kind"], f["question_id"], f["turn"]) for f in failures] == [("single", 3, 2), ("pair", 3, 2)]
    assert failures[0]["reason"] == "no readable [[rating]] after 2 asks"
    assert summary["failures"] == 2 and (out / "tuned.mtbench.chart.png").stat().st_size > 0
    assert "MT-Bench tuned by judge-model: 7.60 (5 of 6 judgments scored)" in stdout
    assert "against base: win 2 tie 2 loss 1 of 5" in stdout

    # run again: nothing is asked twice (re-asks included), the numbers are the same
    sent = sum(judge.asked.values())
    rc, stdout, err = _srt([*args, "--no_plot"])
    assert rc == 0, err
    assert sum(judge.asked.values()) == sent and "asked 0, cached 8" in stdout and "asked 0, cached 14" in stdout
    again = json.loads((out / "tuned.mtbench.summary.json").read_text())
    assert again["single"]["overall"] == 7.6 and again["pair"]["win"] == 2

    # another model graded into the same folder: both models in the judgments file, as FastChat keeps them
    rc, _, err = _srt(_graded(out, judge.server.base_url, "--answers", str(base), "--no_plot"))
    assert rc == 0, err
    per_turn, overall = _show_result_single(single_file)
    assert overall == {"tuned": 7.6, "base": 4.0} and per_turn[("base", 2)] == 4.0
    assert len(read_rows(pair_file)) == 6  # the pairs are untouched

    # how the numbers were obtained: each run's manifest (files by sha256, the judge by model and host, no key)
    manifest = json.loads((out / "tuned.mtbench.manifest.json").read_text())
    assert manifest["judge"]["model"] == "judge-model" and manifest["judge"]["host"] == endpoint_host(
        judge.server.base_url
    )
    given = {"questions": QUESTIONS, "judge_prompts": PROMPTS, "reference_answers": REFERENCES, "answers": tuned}
    for label, path in {**given, "answers_b": base}.items():
        assert manifest["files"][label]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert manifest["grading"] == {"single": True, "model_b": "base"} and manifest["generation"] is None
    assert manifest["packages"]["srt-trainer"] and manifest["date"]
    assert not [p for p in out.rglob("*") if p.is_file() and b"sk-never-on-disk" in p.read_bytes()]
    # srt eval report: the run's summary (single grades and the pair) and FastChat's judgments, each model with the
    # manifest its run wrote
    report = tmp_path / "report.md"
    summary_file = out / "tuned.mtbench.summary.json"
    rc, stdout, err = _srt(
        ["eval", "report", "--mtbench", str(summary_file), str(single_file), "--output", str(report)]
    )
    assert rc == 0, err
    data = json.loads(report.with_suffix(".json").read_text())
    tuned_row = data["models"]["tuned"]
    assert tuned_row["MT-Bench vs base (W/T/L)"] == "2/2/1 (1 failed)" and tuned_row["MT-Bench"] == 7.6
    assert tuned_row["MT-Bench scored"] == "5/6"  # the failed judgment counted, never scored
    assert data["models"]["tuned"]["MT-Bench vs base (adj. win rate)"] == pytest.approx(0.6)
    assert data["models"]["base"]["MT-Bench"] == 4.0
    found = {(Path(s["path"]).name, s["model"]): Path(s["manifest_path"]).name for s in data["sources"]}
    assert found == {
        ("tuned.mtbench.summary.json", None): "tuned.mtbench.manifest.json",
        ("judge-model_single.jsonl", "base"): "base.mtbench.manifest.json",
        ("judge-model_single.jsonl", "tuned"): "tuned.mtbench.manifest.json",
    }
    assert (
        "no manifest" not in stdout
        and f"judge: judge-model at {endpoint_host(judge.server.base_url)}" in report.read_text()
    )


# --- bad input --------------------------------------------------------------------------------------------------
def test_bad_inputs_are_named_and_nothing_graded_is_lost(judge, tmp_path):
    tuned = _answer_file(tmp_path / "tuned.jsonl", "tuned", "Tuned")
    url = judge.server.base_url

    # a question without turns (and one whose turns are not texts): rejected by line and field, the others graded
    bad = tmp_path / "question.jsonl"
    lines = QUESTIONS.read_text().splitlines()
    bad.write_text(
        "\n".join([lines[0], json.dumps({"question_id": 7, "category": "stem"}), lines[2], '{"question_id": 8, '
        '"category": "stem", "turns": [3]}']) + "\n"
    )  # fmt: skip
    rc, stdout, err = _srt(_graded(tmp_path / "a", url, "--answers", str(tuned), "--no_plot", questions=bad))
    assert rc == 0, err
    rejects = read_rows(tmp_path / "a" / "tuned.mtbench.rejects.jsonl")
    assert [(r["file"], r["line"], r["field"], r["reason"]) for r in rejects] == [
        (str(bad), 2, "turns", "missing"),
        (str(bad), 4, "turns", "turn 1 is not a text (got int)"),
    ]
    assert "2 rejected row(s)" in stdout
    assert json.loads((tmp_path / "a" / "tuned.mtbench.summary.json").read_text())["questions"] == 2

    # a math question whose reference answer is missing: a counted failure naming the file; the judge not asked
    refs = tmp_path / "reference.jsonl"
    refs.write_text(json.dumps({"question_id": 99, "model_id": "r", "choices": [{"turns": ["x", "y"]}]}) + "\n")
    before = Counter(judge.asked)
    args = _graded(
        tmp_path / "b", url, "--answers", str(tuned), "--reference_answers", str(refs), "--limit", "2", "--no_plot"
    )
    rc, stdout, err = _srt(args)
    assert rc == 0, err
    sent = list(judge.asked - before)
    assert len(sent) == 2 and not any("12 times 7" in p for p in sent)  # question 1's two turns alone
    failures = read_rows(tmp_path / "b" / "tuned.mtbench.failures.jsonl")
    assert [(f["question_id"], f["turn"], f["reason"]) for f in failures] == [
        (2, t, f"{refs}: no reference answer to question 2 (math)") for t in (1, 2)
    ]
    # no reference file at all, with math questions to grade: refused before any work
    args = _mtbench(tmp_path / "c", "--judge_prompts", str(PROMPTS), "--answers", str(tuned), "--teacher", "openai",
                    "--base_url", url, "--teacher_model", "judge-model")  # fmt: skip
    rc, _, err = _srt(args)
    assert rc == 2 and "--reference_answers is needed: 1 question(s)" in err and "(math)" in err

    # judge prompts: one missing, one with a placeholder the grading does not fill
    prompts = [json.loads(line) for line in PROMPTS.read_text().splitlines()]
    short = tmp_path / "short_prompts.jsonl"
    short.write_text("".join(json.dumps(p) + "\n" for p in prompts if p["name"] != "single-math-v1"))
    rc, _, err = _srt(_graded(tmp_path / "d", url, "--answers", str(tuned), "--judge_prompts", str(short)))
    assert rc == 2 and f"{short}: no judge prompt named single-math-v1" in err
    odd = tmp_path / "odd_prompts.jsonl"
    prompts[4]["prompt_template"] += "\n{answer_3}"
    odd.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    rc, _, err = _srt(_graded(tmp_path / "d", url, "--answers", str(tuned), "--judge_prompts", str(odd)))
    assert rc == 2 and f"{odd}: line 5, field 'prompt_template': unknown placeholder(s) {{answer_3}}" in err


def test_adapter_of_another_base_model_is_refused(embedded_dir, tmp_path):
    """A LoRA trained on another architecture, given with --model embedded: one line naming the adapter's config
    file and field, before the model is loaded."""
    import transformers
    from peft import LoraConfig, get_peft_model

    other = tmp_path / "tiny-llama"
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(other)
    model = transformers.AutoModelForCausalLM.from_pretrained(other)
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "lora")
    rc, _, err = _srt(_mtbench(tmp_path / "out", "--grade", "false", "--adapter", str(tmp_path / "lora")))
    assert rc == 2
    assert f"{tmp_path / 'lora' / 'adapter_config.json'}, field 'base_model_name_or_path'" in err
    assert f"trained on {other}" in err and "give its base model as --model" in err


# --- grading, with a real judge ---------------------------------------------------------------------------------
def test_end_to_end_with_a_real_judge(teacher_server, embedded_dir, tmp_path, monkeypatch):
    """Answers generated and graded by `transformers serve` (the embedded model) on loopback: FastChat's files
    written; every judgment either scored from its [[rating]] or counted as a failure with score -1."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    out = tmp_path / "mt"
    args = [
        *_mtbench(out, "--limit", "2", "--max_new_tokens", "8"),
        *("--judge_prompts", str(PROMPTS), "--reference_answers", str(REFERENCES)),
        *("--teacher", "openai", "--base_url", teacher_server, "--teacher_model", str(embedded_dir)),
        *("--teacher_max_tokens", "16", "--max_reasks", "0", "--request_timeout", "300"),
    ]
    rc, stdout, err = _srt(args)
    summary = json.loads((out / "SmolLM2-135M-Instruct.mtbench.summary.json").read_text())
    rows = read_rows(out / "model_judgment" / f"{embedded_dir.name}_single.jsonl")
    assert [(r["question_id"], r["turn"]) for r in rows] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for r in rows:
        assert r["model"] == "SmolLM2-135M-Instruct" and isinstance(r["judgment"], str)
        assert r["score"] == (parse_rating(r["judgment"]) or -1)
    scored = sum(r["score"] != -1 for r in rows)
    assert summary["single"]["scored"] == scored and summary["failures"] == len(rows) - scored
    assert len(read_rows(out / "SmolLM2-135M-Instruct.mtbench.failures.jsonl")) == len(rows) - scored
    answers = read_rows(out / "model_answer" / "SmolLM2-135M-Instruct.jsonl")
    assert [len(a["choices"][0]["turns"]) for a in answers] == [2, 2]
    if scored:
        assert rc == 0, err
        per_turn, _ = _show_result_single(out / "model_judgment" / f"{embedded_dir.name}_single.jsonl")
        assert per_turn.get(("SmolLM2-135M-Instruct", 1)) == summary["single"]["turn_1"]
    else:  # nothing to score is an error, said after every file is written
        assert rc == 2 and "none of the judge's answers had a readable verdict" in err
        assert "judge (single): 4 conversations: asked 4" in stdout


def test_verdicts_are_read_as_fastchat_reads_them_and_no_further():
    from srt_trainer.evaluation.mtbench_formats import parse_verdict

    # the first [[N]], else the first [N]; a number FastChat would take but that is no 1-10 rating is no rating
    readings = {"Rating: [[7]]": 7, "[[7.5]] or [[3]]": 7.5, "[[07]]": 7, "see [2], so [8]": 2, "[[0]]": None}
    readings |= {"[[11]]": None, "Rating: 7": None, "": None}
    assert {text: parse_rating(text) for text in readings} == readings
    # one verdict, or none: a judgment naming two (an echo of the instructions) is unreadable, not A's
    verdicts = {"[[A]]": "A", "so [[B]]. [[B]]": "B", "[[C]]": "tie", "[[A]] if A, [[B]] if B": None, "A": None}
    assert {text: parse_verdict(text) for text in verdicts} == verdicts


def test_category_temperatures_are_fastchats(embedded_tokenizer):
    from srt_trainer.evaluation.config import MTBenchArguments
    from srt_trainer.evaluation.mtbench import MultiTurnAnswerer
    from srt_trainer.models.config import LoadingArguments, SRTModelConfig

    questions, _ = read_questions(QUESTIONS)
    config = MTBenchArguments(questions=str(QUESTIONS), output_dir="x", category_temperatures=True)
    answerer = MultiTurnAnswerer(config, SRTModelConfig(), LoadingArguments(), object(), embedded_tokenizer)
    assert [answerer.temperature(q) for q in questions] == [0.7, 0.0, 0.1]  # writing, math, humanities
    answerer.config = MTBenchArguments(questions=str(QUESTIONS), output_dir="x")
    assert {answerer.temperature(q) for q in questions} == {0.0}  # greedy unless asked
