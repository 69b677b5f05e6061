"""Pairwise aggregation: score parsing, the win / tie / lose rule in both orders, reports, and `srt eval aggregate`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from srt_trainer.cli import main as srt_main
from srt_trainer.evaluation.aggregate import aggregate_records, judge_item, load_review_records
from srt_trainer.evaluation.judge import review_messages
from srt_trainer.evaluation.scores import parse_scores


@pytest.mark.parametrize(
    ("review", "expected"),
    [
        ("8 7\nAssistant 1 is more detailed.", (8, 7)),
        ("8, 7\nBoth are fine.", (8, 7)),
        ("8/10 7/10", (8, 7)),
        ("8 / 10, 7 / 10", (8, 7)),
        ("Assistant 1: 8 Assistant 2: 7", (8, 7)),
        ("Assistant 1: 8/10, Assistant 2: 9/10\nThe second one is more accurate.", (8, 9)),
        ("Score: 8 and 7", (8, 7)),
        ("Scores: 6 9", (6, 9)),
        ("7.5 8\nclose call", (7.5, 8)),
        ("10 9.5", (10, 9.5)),
        ("**8 7**\nexplanation", (8, 7)),
        ("Assistant 1 and 2: 4 9", (4, 9)),
        ("Assistant 2: 7, Assistant 1: 8", (8, 7)),  # labels in the other order
        ("Scores:\n9 6\nAssistant 1 explains more.", (9, 6)),  # header line, then the score line
        ("Assistant 1: 8\nAssistant 2: 3\nBecause ...", (8, 3)),  # one labelled score per line
        ("8 out of 10, 6 out of 10", (8, 6)),
        ("  \n3 5\n", (3, 5)),  # leading blank line
    ],
)
def test_parse_scores_accepts_common_forms(review, expected):
    assert parse_scores(review) == expected


@pytest.mark.parametrize(
    "review",
    [
        None,
        "",
        "I think both answers are good.\nAssistant 1 is 2 points better, 8 vs 6.",  # scores not on the first line
        "8",  # one score
        "8 7 6",  # three numbers
        "12 7",  # outside 1-10
        "Both are good.\n8 7",  # a sentence is not a header
    ],
)
def test_parse_scores_rejects_what_is_not_a_score_pair(review):
    assert parse_scores(review) is None


def test_review_prompt_is_the_pairwise_reviewer():
    system, user = review_messages("Name a prime.", "Two.", "Nine.")
    assert system == {
        "role": "system",
        "content": "You are a helpful and precise assistant for checking the quality of the answer.",
    }
    text = user["content"]
    assert text.startswith("[Question]\nName a prime.\n\n[The Start of Assistant 1's Answer]\nTwo.\n")
    assert text.index("Two.") < text.index("[The Start of Assistant 2's Answer]\nNine.") < text.index("[System]")
    assert "single line containing only two values" in text and "order in which the responses" in text


# Hand-made reviews, one per case of the rule. In `review` model A is Assistant 1; in `review_reverse` model B is.
CASES = [
    # (test_set, review, review_reverse, expected result)
    ("vicuna", "8 6\nA is better.", "6 8\nA (second) is better.", "win"),  # win in both orders
    ("vicuna", "5 9", "9 5", "lose"),  # lose in both orders
    ("vicuna", "8 6", "7 7", "win"),  # win, then tie
    ("vicuna", "7 7", "8 5", "lose"),  # tie, then lose (B as Assistant 1 scored higher)
    ("koala", "8 6", "8 6", "tie"),  # position bias: Assistant 1 wins each time -> one win, one lose
    ("koala", "7 7\nequal", "7 7\nequal", "tie"),  # equal scores in both orders
    ("koala", "8 7", "7 9", "win"),  # swapped semantics: in the reverse review A (Assistant 2) has 9
    ("koala", "7.5 7", "7 7.5", "win"),  # decimals
    ("lima", "I cannot decide.", "8 6", "failed"),  # unparseable first review
    ("lima", "8 6", None, "failed"),  # the reverse request failed
]


def _records() -> list[dict]:
    return [{"test_set": t, "id": str(i), "review": r, "review_reverse": rr} for i, (t, r, rr, _) in enumerate(CASES)]


@pytest.mark.parametrize(("test_set", "review", "review_reverse", "expected"), CASES)
def test_rule_case_by_case(test_set, review, review_reverse, expected):
    outcome = judge_item(review, review_reverse)
    assert outcome.result == expected
    if expected == "failed":
        assert outcome.reason and outcome.d1 is None
    else:
        total = outcome.d1 + outcome.d2
        assert (total > 0) - (total < 0) == {"win": 1, "tie": 0, "lose": -1}[expected]


def test_swapped_order_reads_model_a_as_assistant_2():
    first, reverse = judge_item("8 7", "7 9"), judge_item("8 7", "9 7")
    assert (first.d1, first.d2, first.result) == (1, 1, "win")
    assert (reverse.d1, reverse.d2, reverse.result) == (1, -1, "tie")


def test_tallies_per_test_set_and_overall():
    agg = aggregate_records(_records())
    expected: dict[str, dict[str, int]] = {}
    for t, _, _, result in CASES:
        expected.setdefault(t, {"win": 0, "tie": 0, "lose": 0, "failed": 0})[result] += 1
    for t, counts in expected.items():
        tally = agg.per_test_set[t]
        assert (tally.win, tally.tie, tally.lose, tally.failed) == tuple(counts.values())
        n = counts["win"] + counts["tie"] + counts["lose"]
        assert tally.n == n
        assert tally.winning_score == (pytest.approx((counts["win"] - counts["lose"]) / n + 1) if n else None)
    assert agg.overall.n + agg.overall.failed == len(CASES)
    assert agg.overall.failed == 2 and agg.per_test_set["lima"].tie == 0  # failures never become ties
    assert [f["id"] for f in agg.failures] == ["8", "9"]


def test_records_without_reviews_are_failures():
    agg = aggregate_records(
        [{"test_set": "x", "review": "8 6"}, "not an object", {"review": "1 9", "review_reverse": "9 1"}]
    )
    assert agg.overall.failed == 2 and agg.overall.lose == 1
    assert "missing field review_reverse" in agg.failures[0]["reason"]


@pytest.fixture()
def review_files(tmp_path) -> dict[str, Path]:
    records = _records()
    files = {
        "jsonl": tmp_path / "reviews.jsonl",
        "list": tmp_path / "reviews_list.json",
        "data": tmp_path / "reviews_data.json",
    }
    files["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in records))
    files["list"].write_text(json.dumps(records, indent=1))
    files["data"].write_text(json.dumps({"data": records[:4]}))
    return files


def test_load_review_records_accepts_three_containers(review_files):
    assert load_review_records(review_files["jsonl"]) == load_review_records(review_files["list"]) == _records()
    assert load_review_records(review_files["data"]) == _records()[:4]


def test_srt_eval_aggregate_prints_one_line_per_file(review_files, tmp_path, capsys):
    out_dir = tmp_path / "reports"
    rc = srt_main(
        [
            "eval",
            "aggregate",
            "--reviews",
            str(review_files["jsonl"]),
            str(review_files["data"]),
            "--output_dir",
            str(out_dir),
        ]
    )
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    overall = aggregate_records(_records()).overall
    first4 = aggregate_records(_records()[:4]).overall
    assert lines == [
        f"win {overall.win} tie {overall.tie} lose {overall.lose}",
        f"win {first4.win} tie {first4.tie} lose {first4.lose}",
    ]
    png = out_dir / "reviews.aggregate.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(png).shape
    assert width > 500 and height > 150
    md = (out_dir / "reviews.aggregate.md").read_text()
    ws = (overall.win - overall.lose) / overall.n + 1
    assert f"| **overall** | {overall.n} | {overall.win} | {overall.tie} | {overall.lose} | 2 | {ws:.4f} |" in md
    assert "| koala | 4 |" in md and "## Failures (2)" in md and "![win / tie / lose](reviews.aggregate.png)" in md
    assert (out_dir / "reviews_data.aggregate.md").exists()


def test_srt_eval_aggregate_json(review_files, capsys):
    rc = srt_main(["eval", "aggregate", "--reviews", str(review_files["list"]), "--json", "--plot", "false"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    agg = aggregate_records(_records())
    assert {k: result[k] for k in ("win", "tie", "lose", "failed")} == {
        "win": agg.overall.win,
        "tie": agg.overall.tie,
        "lose": agg.overall.lose,
        "failed": 2,
    }
    assert result["winning_score"] == pytest.approx((agg.overall.win - agg.overall.lose) / agg.overall.n + 1)
    assert set(result["per_test_set"]) == {"vicuna", "koala", "lima"}
    assert "chart" not in result and Path(result["markdown"]).exists()  # beside the reviews file


def test_srt_eval_aggregate_bad_file_names_it(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"review": "8 6", "review_reverse": "6 8"}\n{"review": \n')
    assert srt_main(["eval", "aggregate", "--reviews", str(bad)]) == 2
    assert re.search(r"^srt eval aggregate: .*bad.jsonl: .*line 2 is not valid JSON", capsys.readouterr().err)


def test_srt_eval_lists_its_commands(capsys):
    assert srt_main(["eval", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {c}" in out for c in ("generate", "judge", "aggregate"))
    assert srt_main(["eval"]) == 2 and "usage: srt eval" in capsys.readouterr().err
