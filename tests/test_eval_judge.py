"""`srt eval judge` end to end against a real OpenAI-compatible server (`transformers serve`, embedded model).

The 135M judge rarely writes a score line: such reviews are re-asked, then reported as failures, never as ties.
What must hold whatever it writes: both orders asked for every item, statuses that agree with the parser and the
rule, counts that add up, rejects for unmatched answers, and a rerun served from the durable cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import pytest

from srt_trainer.cli import main as srt_main
from srt_trainer.evaluation.aggregate import aggregate_records, judge_item
from srt_trainer.evaluation.judge import judge_prompt_sha256, question_text, review_messages
from srt_trainer.evaluation.manifest import endpoint_host
from srt_trainer.evaluation.scores import parse_scores
from srt_trainer.io import read_rows

ITEMS = 2


@pytest.fixture(scope="module")
def answer_files(data_dir, embedded_model, embedded_tokenizer, tmp_path_factory) -> tuple[Path, Path]:
    """Two real answer files to the first vicuna items: the embedded model prompted in two formats. B has one
    extra item (unmatched) and one unusable row."""
    from srt_trainer.evaluation.generate import GenerateArguments, run_generate
    from srt_trainer.models.config import SRTModelConfig

    root = tmp_path_factory.mktemp("answers")
    files = []
    for name, template in (("a", "vicuna"), ("b", "alpaca")):
        config = GenerateArguments(
            test_sets=[str(data_dir / "eval" / "vicuna_test_set.jsonl")],
            limit=ITEMS + 1,
            output=str(root / f"{name}.jsonl"),
            max_new_tokens=8,
            generator=f"smollm2-{template}",
        )
        student = SRTModelConfig(template=template)
        with contextlib.redirect_stdout(io.StringIO()):
            run_generate(config, student, model=embedded_model, tokenizer=embedded_tokenizer)
        files.append(root / f"{name}.jsonl")
    a_rows = read_rows(files[0])
    files[0].write_text("".join(json.dumps(r) + "\n" for r in a_rows[:ITEMS]))  # A lacks B's last item
    with files[1].open("a") as f:
        f.write(json.dumps({"id": "x", "test_set": "vicuna", "instruction": "Q?", "output": None}) + "\n")
    return files[0], files[1]


def _judge(a: Path, b: Path, out: Path, server: str, model: str) -> str:
    """What the command printed: stdout, then its error line when no item got readable scores (exit 2, after
    writing every file, as `srt eval aggregate` on the file would say)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = srt_main(
            [
                "eval",
                "judge",
                "--answers_a",
                str(a),
                "--answers_b",
                str(b),
                "--output",
                str(out),
                "--base_url",
                server,
                "--teacher",
                "openai",
                "--teacher_model",
                model,
                "--teacher_max_tokens",
                "16",
                "--teacher_concurrency",
                "2",
                "--request_timeout",
                "300",
            ]
        )
    counted = any(r["status"] == "ok" for r in read_rows(out))
    assert rc == (0 if counted else 2)
    if not counted:
        error = stderr.getvalue().strip().splitlines()[-1]
        assert f"none of the {ITEMS} items got readable scores" in error and "reviews.failures.jsonl" in error
    return stdout.getvalue() + ("" if counted else error)


@pytest.fixture(scope="module")
def judged(answer_files, teacher_server, embedded_dir, tmp_path_factory, monkeypatch_module):
    monkeypatch_module.delenv("OPENAI_API_KEY", raising=False)  # a local server needs no key
    out = tmp_path_factory.mktemp("judge") / "reviews.jsonl"
    printed = _judge(*answer_files, out, teacher_server, str(embedded_dir))
    return out, printed


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_every_item_judged_in_both_orders(judged, answer_files, teacher_server, embedded_dir):
    from srt_trainer.teachers import SamplingConfig, build_teacher, cache_key, load_cache_entries

    out, printed = judged
    records = read_rows(out)
    a_rows = read_rows(answer_files[0])
    assert [(r["test_set"], r["id"]) for r in records] == [(r["test_set"], r["id"]) for r in a_rows]
    assert {(r["generator_a"], r["generator_b"]) for r in records} == {("smollm2-vicuna", "smollm2-alpaca")}
    assert {r["judge"] for r in records} == {str(embedded_dir)}
    # the two prompts of every item reached the server: A as Assistant 1, then B as Assistant 1
    identity = build_teacher("openai", model=str(embedded_dir), base_url=teacher_server).identity()
    sampling = SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=16, seed=None)
    cached = {e["key"] for e in load_cache_entries(out.with_name("reviews.cache.jsonl"))}
    for r in records:
        q = question_text(r["instruction"], r["input"])
        first, swapped = (
            review_messages(q, r["output_a"], r["output_b"]),
            review_messages(q, r["output_b"], r["output_a"]),
        )
        assert swapped[1]["content"].index(r["output_b"]) < swapped[1]["content"].index("Assistant 2's Answer")
        assert cache_key(identity, first, sampling) in cached and cache_key(identity, swapped, sampling) in cached
        assert isinstance(r["review"], str) and isinstance(r["review_reverse"], str)  # the server answered
    reasked = sum(r["reasks"] + r["reasks_reverse"] for r in records)  # each re-ask is a request of its own
    assert f"judge: {2 * ITEMS} conversations: asked {2 * ITEMS + reasked}, cached 0," in printed


def test_manifests_name_the_judge_the_prompt_and_the_answers(judged, answer_files, teacher_server, embedded_dir):
    """Beside the reviews, how they were judged (judge, endpoint host, prompt and answer files by sha256, how the
    answers were generated); beside the aggregate, that manifest and the reviews' sha256."""
    out, _ = judged
    manifest = json.loads(out.with_name("reviews.manifest.json").read_text())
    judge = manifest["judge"]
    assert (judge["model"], judge["host"], judge["max_tokens"]) == (
        str(embedded_dir),
        endpoint_host(teacher_server),
        16,
    )
    assert judge["prompt_sha256"] == judge_prompt_sha256() and manifest["items"] == ITEMS
    for label, path in zip(("answers_a", "answers_b"), answer_files, strict=True):
        entry = manifest["files"][label]
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert (entry["generation"]["max_new_tokens"], entry["generation"]["seed"]) == (8, 0)
    assert manifest["files"]["answers_b"]["generation"]["template"] == "alpaca"
    aggregated = json.loads(out.with_name("reviews.aggregate.manifest.json").read_text())
    assert aggregated["judging"] == manifest and aggregated["judge"] == judge
    assert aggregated["files"]["reviews"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()


def test_statuses_follow_the_parser_and_the_rule(judged):
    out, printed = judged
    records = read_rows(out)
    for r in records:
        scores, reverse = parse_scores(r["review"]), parse_scores(r["review_reverse"])
        outcome = judge_item(r["review"], r["review_reverse"])
        if scores is None or reverse is None:
            assert r["status"] == "failed" and r["result"] is None and r["error"]
            # an unreadable review was asked again before it was given up
            assert (scores is not None or r["reasks"] == 1) and (reverse is not None or r["reasks_reverse"] == 1)
        else:
            assert r["status"] == "ok" and r["result"] == outcome.result and r["error"] is None
            assert (r["score_a"], r["score_b"]) == scores and (r["score_b_reverse"], r["score_a_reverse"]) == reverse
    failures = read_rows(out.with_name("reviews.failures.jsonl"))
    assert failures == [r for r in records if r["status"] == "failed"]
    agg = aggregate_records(records)
    assert agg.overall.n + agg.overall.failed == ITEMS and agg.overall.failed == len(failures)
    assert sum(r["result"] == "tie" for r in records) == agg.overall.tie  # a failure is never a tie
    if agg.overall.n:  # else `srt eval judge` exited 2 (checked in _judge) and printed no tally
        summary = f"win {agg.overall.win} tie {agg.overall.tie} lose {agg.overall.lose} ({len(failures)} failed"
        assert summary in printed
    md = out.with_name("reviews.aggregate.md").read_text()
    assert "smollm2-vicuna vs smollm2-alpaca" in md and out.with_name("reviews.aggregate.png").exists()
    # `srt eval aggregate` on the judge's output reads the same verdicts from the raw reviews
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = srt_main(["eval", "aggregate", "--reviews", str(out), "--json", "--plot", "false"])
    if not agg.overall.n:  # the tiny judge wrote no readable pair: nothing counted is an error (exit 2), said so
        assert code == 2 and "has two readable reviews" in stderr.getvalue()
        return
    assert code == 0
    result = json.loads(stdout.getvalue())
    assert (result["win"], result["tie"], result["lose"], result["failed"]) == (
        agg.overall.win,
        agg.overall.tie,
        agg.overall.lose,
        agg.overall.failed,
    )


def test_unmatched_and_bad_rows_are_rejected(judged, answer_files):
    out, _ = judged
    rejects = read_rows(out.with_name("reviews.rejects.jsonl"))
    b_rows = read_rows(answer_files[1])
    assert [(r["file"], r["row"], r["field"]) for r in rejects] == [
        (str(answer_files[1]), len(b_rows) - 1, "output"),
        (str(answer_files[1]), ITEMS, "id"),
    ]
    assert rejects[1]["reason"] == f"no answer to item vicuna/{ITEMS + 1} in {answer_files[0]}"


def test_rerun_is_served_from_the_cache(judged, answer_files, teacher_server, embedded_dir, tmp_path):
    out, _ = judged
    again = tmp_path / "reviews.jsonl"
    (tmp_path / "reviews.cache.jsonl").write_bytes(out.with_name("reviews.cache.jsonl").read_bytes())
    printed = _judge(*answer_files, again, teacher_server, str(embedded_dir))
    assert read_rows(again) == read_rows(out)
    # every ask, re-asks included, from the cache (the first run: all asked, none cached)
    reasked = sum(r["reasks"] + r["reasks_reverse"] for r in read_rows(again))
    counts = f"asked 0, cached {2 * ITEMS + reasked}, retried 0 (0 requests), re-asked {reasked},"
    assert f"judge: {2 * ITEMS} conversations: {counts}" in printed
