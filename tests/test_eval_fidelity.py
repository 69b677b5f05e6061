"""The evaluation as released, each difference switchable: the judge's question, unreadable reviews as draws,
generation's total length and turn cut, and --offset beside --limit. Real rows of tests/data; tiny random models or
library functions, never the embedded model."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from srt_trainer.cli import main as srt_main
from srt_trainer.data import load_instruction_data
from srt_trainer.evaluation.aggregate import AggregateConfigError, aggregate_file, aggregate_records, judge_item
from srt_trainer.evaluation.config import AggregateArguments, GenerateArguments, GenerateConfigError, JudgeArguments
from srt_trainer.evaluation.generate import TURN_MARKERS, cut_at_turns
from srt_trainer.evaluation.judge import NoReadableScoresError, question_text, run_judge
from srt_trainer.evaluation.test_sets import read_test_set, read_test_sets
from srt_trainer.io import DataLoadError, read_rows, write_rows
from srt_trainer.models.config import SRTModelConfig
from srt_trainer.reflection.config import ReflectArguments
from srt_trainer.scoring.config import ScoreArguments
from srt_trainer.teachers import Answer, SamplingConfig, Teacher, TeacherArguments


class ScriptedJudge(Teacher):
    """Answers each review request with ``reply(user_message)``; records the messages it was sent."""

    kind = "scripted"
    model_name = "script"

    def __init__(self, reply) -> None:
        self.reply = reply
        self.users: list[str] = []

    def generate(self, conversations: Sequence[list[dict[str, str]]], sampling: SamplingConfig, on_answer) -> None:
        for j, conversation in enumerate(conversations):
            user = next(m["content"] for m in conversation if m["role"] == "user")
            self.users.append(user)
            on_answer(j, Answer(self.reply(user)))


@pytest.fixture
def sinstruct_answers(data_dir: Path, tmp_path: Path) -> tuple[Path, Path, list[dict]]:
    """Two answer files to the first Self-Instruct items that carry an input (real rows)."""
    items = [it for it in read_test_set(data_dir / "eval" / "sinstruct_test_set.jsonl").items if it["input"]][:3]
    assert len(items) == 3
    a = [{**it, "output": f"short {k}", "generator": "a"} for k, it in enumerate(items)]
    b = [{**it, "output": f"long {k}", "generator": "b"} for k, it in enumerate(items)]
    return Path(write_rows(a, tmp_path / "a.jsonl")), Path(write_rows(b, tmp_path / "b.jsonl")), items


# --- 1. the judge's question ----------------------------------------------------------------------------------


def test_question_is_the_instruction_alone_unless_asked(data_dir):
    item = next(it for it in read_test_set(data_dir / "eval" / "sinstruct_test_set.jsonl").items if it["input"])
    assert question_text(item["instruction"], item["input"]) == item["instruction"]
    assert question_text(item["instruction"], item["input"], include_input=True) == (
        f"{item['instruction']}\n{item['input']}"
    )
    assert question_text(item["instruction"], "", include_input=True) == item["instruction"]
    assert JudgeArguments("a", "b", "o").judge_input is False


@pytest.mark.parametrize("judge_input", [False, True])
def test_run_judge_shows_the_input_only_with_judge_input(sinstruct_answers, tmp_path, judge_input):
    a, b, items = sinstruct_answers
    judge = ScriptedJudge(lambda user: "8 6\nfine")
    config = JudgeArguments(str(a), str(b), str(tmp_path / "reviews.jsonl"), plot=False, judge_input=judge_input)
    run_judge(config, TeacherArguments(), teacher=judge)
    assert len(judge.users) == 2 * len(items)
    for k, it in enumerate(items):
        for user in judge.users[2 * k : 2 * k + 2]:
            question = user.split("[Question]\n", 1)[1].split("\n\n[The Start", 1)[0]
            assert question == (f"{it['instruction']}\n{it['input']}" if judge_input else it["instruction"])


# --- 2. unreadable scores: failure (ours) or a draw in that order (the release) ---------------------------------


def test_unreadable_order_counts_as_a_draw_only_with_unscored_tie():
    # first review readable (A better), reverse unreadable: ours fails the item, the release's d2 = 0 makes a win
    assert judge_item("8 6", "I cannot decide.").result == "failed"
    drawn = judge_item("8 6", "I cannot decide.", unscored="tie")
    assert (drawn.result, drawn.d1, drawn.d2, drawn.drawn) == ("win", 1, 0, True)
    assert drawn.scores == (8, 6) and drawn.scores_reverse is None and "counted as a draw" in drawn.reason
    # A loses the readable order: a loss; nothing readable at all: a tie
    assert judge_item("no scores", "9 3", unscored="tie").result == "lose"
    assert judge_item(None, "", unscored="tie").result == "tie"
    # a readable item is the same either way, and not marked
    assert judge_item("7 7", "6 8", unscored="tie") == judge_item("7 7", "6 8")
    with pytest.raises(AggregateConfigError, match="--unscored"):
        judge_item("8 6", "6 8", unscored="draw")


def test_aggregate_rebuilds_release_counts_from_raw_reviews(tmp_path, capsys):
    records = [
        {"test_set": "vicuna", "id": 1, "review": "8 6\nA", "review_reverse": "6 8\nA"},  # win
        {"test_set": "vicuna", "id": 2, "review": "8 6\nA", "review_reverse": "Sorry."},  # win (release) / failed
        {"test_set": "vicuna", "id": 3, "review": "", "review_reverse": "Both good."},  # tie (release) / failed
        {"test_set": "koala", "id": 4, "review": "5 9\nB", "review_reverse": "??"},  # lose (release) / failed
        {"test_set": "koala", "id": 5, "review_reverse": "9 5"},  # no review field: a failure either way
    ]
    ours, release = aggregate_records(records), aggregate_records(records, unscored="tie")
    assert (ours.overall.win, ours.overall.tie, ours.overall.lose, ours.overall.failed) == (1, 0, 0, 4)
    assert (release.overall.win, release.overall.tie, release.overall.lose, release.overall.failed) == (2, 1, 1, 1)
    assert release.overall.unscored_draws == 3 and release.per_test_set["koala"].unscored_draws == 1
    assert release.to_dict()["unscored"] == "tie" and ours.to_dict()["unscored_draws"] == 0

    path = write_rows(records, tmp_path / "reviews.jsonl")
    run = aggregate_file(path, plot=False, unscored="tie")
    assert run.aggregate.overall.win == 2
    assert "counts as a draw" in Path(run.reports["markdown"]).read_text()
    assert AggregateArguments(["x"]).unscored == "fail"
    assert srt_main(["eval", "aggregate", "--reviews", str(path), "--no_plot", "--unscored", "tie"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == "win 2 tie 1 lose 1" and "3 with a draw (--unscored tie)" in out.err
    assert srt_main(["eval", "aggregate", "--reviews", str(path), "--no_plot"]) == 0
    assert capsys.readouterr().out.strip() == "win 1 tie 0 lose 0"
    with pytest.raises(SystemExit) as refused:  # argparse refuses an unknown choice
        srt_main(["eval", "aggregate", "--reviews", str(path), "--unscored", "draw"])
    assert refused.value.code == 2


def test_judge_counts_unreadable_reviews_as_released_with_unscored_tie(sinstruct_answers, tmp_path):
    a, b, items = sinstruct_answers
    # every reverse review (B shown first) is unreadable, after its re-asks too
    judge = ScriptedJudge(lambda user: "no idea" if "[The Start of Assistant 1's Answer]\nlong" in user else "8 6")
    config = JudgeArguments(str(a), str(b), str(tmp_path / "ours.jsonl"), plot=False)
    with pytest.raises(NoReadableScoresError, match=f"none of the {len(items)} items got readable scores") as e:
        run_judge(config, TeacherArguments(max_reasks=1), teacher=judge)
    ours = e.value.run  # every file written before the error
    assert ours.aggregate.overall.failed == len(items) and ours.aggregate.overall.n == 0
    assert len(read_rows(ours.failures)) == len(items) == len(read_rows(ours.output))
    config = JudgeArguments(str(a), str(b), str(tmp_path / "release.jsonl"), plot=False, unscored="tie")
    release = run_judge(config, TeacherArguments(max_reasks=1), teacher=judge)
    assert release.aggregate.overall.win == len(items) and release.aggregate.overall.unscored_draws == len(items)
    assert {r["status"] for r in release.records} == {"drawn"} and {r["result"] for r in release.records} == {"win"}
    assert len(read_rows(release.failures)) == len(items)  # still listed, for a look at the raw reviews


def _cli_judge(a: Path, b: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "judge", "--answers_a", str(a), "--answers_b", str(b), "--output", str(out), "--no_plot", *extra]


def test_srt_eval_judge_exits_2_when_no_item_gets_readable_scores(sinstruct_answers, tmp_path, monkeypatch, capsys):
    """Like `srt eval aggregate` on the same file: the files are written, then exit 2, unless --unscored tie counts
    the items as draws. The request counts tell a first run from a rerun served by the cache."""
    a, b, items = sinstruct_answers
    judge = ScriptedJudge(lambda user: "I would rather not give scores.")
    monkeypatch.setattr("srt_trainer.evaluation.judge.build_teacher_from_args", lambda args, *_, **__: judge)
    out = tmp_path / "reviews.jsonl"
    assert srt_main(_cli_judge(a, b, out, "--max_reasks", "1")) == 2
    printed = capsys.readouterr()
    n = 2 * len(items)
    # first run: every conversation asked, then re-asked; nothing came from the cache
    assert f"judge: {n} conversations: asked {2 * n}, cached 0, retried 0 ({2 * n} requests), re-asked {n}," in (
        printed.out
    )
    failures = out.with_name("reviews.failures.jsonl")
    error = printed.err.strip().splitlines()[-1]
    assert error.startswith(f"srt eval judge: {out}: none of the {len(items)} items got readable scores")
    assert error.endswith(f"see {failures}") and "no score pair" in error
    assert len(read_rows(out)) == len(read_rows(failures)) == len(items)
    assert read_rows(out.with_name("reviews.rejects.jsonl")) == []
    assert out.with_name("reviews.aggregate.md").is_file()

    # the same reviews with --unscored tie: counted as draws, not failures; all from the cache
    assert srt_main(_cli_judge(a, b, out, "--max_reasks", "1", "--unscored", "tie")) == 0
    printed = capsys.readouterr().out
    assert f"judge: {n} conversations: asked 0, cached {2 * n}, retried 0 (0 requests), re-asked {n}," in printed
    assert f"tie {len(items)} lose 0 (0 failed, {len(items)} counted with a draw" in printed
    assert len(judge.users) == 2 * n


def test_identical_prompts_are_shared_not_cached(sinstruct_answers, tmp_path):
    """A's and B's answers alike make both orders one prompt: sent once, and a first run reads no cache."""
    a, _, items = sinstruct_answers
    judge = ScriptedJudge(lambda user: "7 7\nthe same")
    config = JudgeArguments(str(a), str(a), str(tmp_path / "reviews.jsonl"), plot=False)
    run = run_judge(config, TeacherArguments(), teacher=judge)
    n = len(items)
    assert (run.counts.asked, run.counts.cached, run.counts.shared, len(judge.users)) == (n, 0, n, n)
    assert f"asked {n}, cached 0, {n} shared with an identical prompt," in run.counts.format()
    assert run.aggregate.overall.tie == n


def test_answer_files_sharing_no_item_fail_in_one_short_line(data_dir, tmp_path, capsys):
    """Real test-set rows split in two files with no id in common: exit 2 with the count, the first reasons and the
    rejects file, not every reason inline."""
    sets = read_test_sets([data_dir / "eval"])
    rows = [{**it, "output": "an answer"} for s in sets for it in s.items]
    half = len(rows) // 2
    a, b = write_rows(rows[:half], tmp_path / "a.jsonl"), write_rows(rows[half:], tmp_path / "b.jsonl")
    out = tmp_path / "reviews.jsonl"
    assert srt_main(_cli_judge(a, b, out)) == 2
    rejects = out.with_name("reviews.rejects.jsonl")
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"no item has a usable answer in both files; {len(rows)} rejected row(s): 1× no answer to item" in error
    assert error.endswith(f"; and {len(rows) - 2} more (see {rejects})") and len(error) < 600
    assert len(read_rows(rejects)) == len(rows)  # every row kept there


# --- 3. generation: prompt + answer within max_length, the answer cut at the next turn --------------------------


def test_generate_defaults_follow_the_release():
    config = GenerateArguments(["t"], "o.jsonl")
    assert (config.max_length, config.max_new_tokens, config.stop_at_turns, config.offset) == (1024, None, True, 0)
    settings = config.fingerprint_settings(SRTModelConfig())
    for key in ("max_length", "max_new_tokens", "stop_at_turns"):
        assert key in settings
    changed = [
        GenerateArguments(["t"], "o.jsonl", max_length=2048),
        GenerateArguments(["t"], "o.jsonl", max_new_tokens=1024),
        GenerateArguments(["t"], "o.jsonl", stop_at_turns=False),
    ]
    assert all(c.fingerprint_settings(SRTModelConfig()) != settings for c in changed)  # a resume must match
    with pytest.raises(GenerateConfigError, match="--max_length"):
        GenerateArguments(["t"], "o.jsonl", max_length=0)
    with pytest.raises(GenerateConfigError, match="--max_new_tokens"):
        GenerateArguments(["t"], "o.jsonl", max_new_tokens=0)


def test_cut_at_turns():
    markers = TURN_MARKERS["vicuna"]
    # as released: the text up to the next answer tag; a user turn before it stays (the release split on the tag only)
    assert cut_at_turns("Paris. USER: And Spain? ASSISTANT: Madrid.", markers) == "Paris. USER: And Spain?"
    assert cut_at_turns("Sure.\nASSISTANT: again", markers) == "Sure."
    assert cut_at_turns("No marker here.", markers) == "No marker here."
    assert cut_at_turns("ASSISTANT: only a new turn", markers) == ""
    assert cut_at_turns("Then ### Response: more", TURN_MARKERS["alpaca"]) == "Then ###"


def test_max_length_counts_the_prompt(tiny_models, data_dir):
    import torch

    from srt_trainer.generation import generate_batched
    from srt_trainer.models import load_student, load_tokenizer
    from srt_trainer.templates import get_template

    folder = tiny_models["llama"]
    tokenizer, model = load_tokenizer(folder), load_student(folder, dtype="float32", device="cpu")
    items = read_test_sets([data_dir / "eval" / "vicuna_test_set.jsonl"], limit=4)[0].items
    prompts = [get_template("vicuna").prompt(it["instruction"]) for it in items]
    lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    total = min(lengths) + 6
    # eos never ends an answer early here: the random model is asked for a fixed count of tokens
    model.generation_config.eos_token_id = None
    tokenizer_eos = tokenizer.eos_token_id
    tokenizer.eos_token_id = None
    try:
        with torch.no_grad():
            batched = list(generate_batched(model, tokenizer, prompts, max_length=total, batch_size=4))
            alone = [next(generate_batched(model, tokenizer, [p], max_length=total)) for p in prompts]
    finally:
        tokenizer.eos_token_id = tokenizer_eos
    by_index = {c.index: c for c in batched}
    for i, n in enumerate(lengths):
        c = by_index[i]
        assert c.prompt_tokens == n and c.completion_tokens == max(total - n, 0)
        assert c.text == alone[i].text  # as if generated alone within its own room
    assert any(c.completion_tokens == 0 and c.text == "" for c in batched) or min(lengths) == max(lengths)
    # max_new_tokens, when given, wins
    fixed = list(generate_batched(model, tokenizer, prompts[:1], max_new_tokens=3, max_length=1))
    assert fixed[0].completion_tokens <= 3 and fixed[0].completion_tokens > 0


# --- 4. --offset with --limit: the release's start / end indices ----------------------------------------------


def test_offset_keeps_source_row_indices(data_dir):
    alpaca = data_dir / "alpaca_slice.json"
    whole = load_instruction_data(alpaca, limit=12)
    part = load_instruction_data(alpaca, offset=5, limit=4)
    assert [r["row_index"] for r in part.rows] == [5, 6, 7, 8] and part.num_rows_read == 4
    assert [r["instruction"] for r in part.rows] == [r["instruction"] for r in whole.rows[5:9]]
    tail = load_instruction_data(alpaca, offset=240)
    assert tail.rows[0]["row_index"] == 240 and tail.num_rows_read == 247 - 240
    with pytest.raises(DataLoadError, match="no rows from --offset 9999 on"):
        load_instruction_data(alpaca, offset=9999)
    with pytest.raises(DataLoadError, match="--offset must be 0 or more"):
        load_instruction_data(alpaca, offset=-1)


def test_offset_on_test_sets_keeps_ids(data_dir, tmp_path):
    vicuna = data_dir / "eval" / "vicuna_test_set.jsonl"
    whole = read_test_set(vicuna, limit=10).items
    part = read_test_set(vicuna, offset=3, limit=2)
    assert part.items == whole[3:5] and part.num_rows_read == 2
    # a test set without ids: the fallback id is the row's index in the file, not in the window
    rows = [{"instruction": it["instruction"]} for it in whole]
    plain = write_rows(rows, tmp_path / "plain_test_set.jsonl")
    assert [it["id"] for it in read_test_set(plain, offset=5).items] == ["5", "6", "7"]
    sets = read_test_sets([data_dir / "eval"], limit=1, offset=2)
    assert all(s.num_rows_read == 1 for s in sets)
    assert next(s for s in sets if s.name == "vicuna").items == whole[2:3]


def test_offset_is_one_option_of_score_reflect_and_generate():
    cases = (
        (ScoreArguments, ("d", "o")),
        (ReflectArguments, ("response", "d", "o")),
        (GenerateArguments, (["t"], "o")),
    )
    for cls, args in cases:
        fields = {f.name: f for f in cls.__dataclass_fields__.values()}
        assert fields["offset"].default == 0 and "start / end" in fields["offset"].metadata["help"]
        assert cls(*args, offset=4).offset == 4


def test_srt_score_offset_writes_source_indices(tiny_models, data_dir, tmp_path):
    out = tmp_path / "scored.jsonl"
    argv = ["score", "--data", str(data_dir / "alpaca_slice.json"), "--output", str(out), "--no_plot"]
    argv += ["--model_name_or_path", str(tiny_models["gpt2"]), "--offset", "20", "--limit", "3"]
    assert srt_main(argv) == 0
    rows = read_rows(out)
    alpaca = json.loads((data_dir / "alpaca_slice.json").read_text())
    assert [r["row_index"] for r in rows] == [20, 21, 22]
    assert [r["instruction"] for r in rows] == [alpaca[i]["instruction"] for i in (20, 21, 22)]


def test_run_generate_windows_cuts_turns_and_fingerprints(tiny_models, data_dir, tmp_path, monkeypatch):
    """A window of the test set (ids from the file), answers cut at the next turn, and a resume with other turn or
    length settings refused."""
    from srt_trainer.evaluation import generate as gen
    from srt_trainer.io import ResumeMismatchError
    from srt_trainer.models import load_student, load_tokenizer

    folder = tiny_models["llama"]
    tokenizer, model = load_tokenizer(folder), load_student(folder, dtype="float32", device="cpu")
    seen: list[dict] = []

    def fake_answers(model, tokenizer, prompts, **kwargs):  # what a model that runs on into a new turn writes
        seen.append(kwargs)
        return [f"Answer {k}. ASSISTANT: more" for k in range(len(prompts))]

    monkeypatch.setattr(gen, "generate_answers", fake_answers)
    vicuna = data_dir / "eval" / "vicuna_test_set.jsonl"
    out = tmp_path / "answers.jsonl"
    config = GenerateArguments([str(vicuna)], str(out), offset=2, limit=3, alpaca_eval=False)
    run = gen.run_generate(config, SRTModelConfig(model_name_or_path=str(folder)), model=model, tokenizer=tokenizer)
    expected = [str(r["question_id"]) for r in read_rows(vicuna)[2:5]]
    assert [r["id"] for r in run.rows] == expected
    assert all(r["output"].startswith("Answer ") and "ASSISTANT:" not in r["output"] for r in run.rows)
    assert seen[0]["max_length"] == 1024 and seen[0]["max_new_tokens"] is None

    kept = GenerateArguments([str(vicuna)], str(tmp_path / "kept.jsonl"), limit=1, stop_at_turns=False)
    run = gen.run_generate(kept, SRTModelConfig(model_name_or_path=str(folder)), model=model, tokenizer=tokenizer)
    assert run.rows[0]["output"] == "Answer 0. ASSISTANT: more"

    # the finished shards of the first run belong to its settings: other turn or length settings may not reuse them
    for change in ({"stop_at_turns": False}, {"max_new_tokens": 64}, {"max_length": 2048}):
        other = GenerateArguments([str(vicuna)], str(out), offset=2, limit=3, alpaca_eval=False, **change)
        with pytest.raises(ResumeMismatchError, match="different settings"):
            gen.run_generate(other, SRTModelConfig(model_name_or_path=str(folder)), model=model, tokenizer=tokenizer)


def test_srt_reflect_offset_keeps_source_indices(data_dir, tmp_path):
    from srt_trainer.reflection import run_reflect

    alpaca = json.loads((data_dir / "alpaca_slice.json").read_text())
    teacher = ScriptedJudge(lambda user: "[Better Answer] A fuller answer. [End]")
    args = ReflectArguments(
        mode="response",
        data=str(data_dir / "alpaca_slice.json"),
        output=str(tmp_path / "a.jsonl"),
        offset=30,
        limit=3,
        progress=False,
    )
    run = run_reflect(args, TeacherArguments(prefill="off"), teacher=teacher)
    rows = read_rows(tmp_path / "a.jsonl")
    assert len(teacher.users) == 3 and len(rows) == 3 and len(run.result.rows) == 3
    assert [r["instruction"] for r in rows] == [alpaca[i]["instruction"] for i in (30, 31, 32)]
    index = next(k for k in ("source_index", "row_index") if k in rows[0])
    assert [r[index] for r in rows] == [30, 31, 32]


def test_srt_eval_judge_offset_splits_the_matched_items(sinstruct_answers, tmp_path):
    """Two windows of the matched items judged apart hold the same items, with their own ids, as one whole run."""
    a, b, items = sinstruct_answers
    ids = []
    for offset, limit in ((0, 2), (2, None)):
        judge = ScriptedJudge(lambda user: "8 6\nfine")
        out = tmp_path / f"reviews_{offset}.jsonl"
        config = JudgeArguments(str(a), str(b), str(out), plot=False, offset=offset, limit=limit)
        run_judge(config, TeacherArguments(), teacher=judge)
        ids.append([r["id"] for r in read_rows(out)])
        assert len(judge.users) == 2 * len(ids[-1])
    assert ids == [[it["id"] for it in items[:2]], [items[2]["id"]]]
    past = JudgeArguments(str(a), str(b), str(tmp_path / "past.jsonl"), plot=False, offset=3)
    with pytest.raises(DataLoadError, match="--offset 3: past the last of the 3 matched items"):
        run_judge(past, TeacherArguments(), teacher=ScriptedJudge(lambda user: "8 6"))
