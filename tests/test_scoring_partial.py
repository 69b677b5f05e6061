"""Scoring with incomplete statistics: IFD and r-IFD each stand alone, as in the released scorer, where a view with
no target gives a NaN loss and only the statistics built on it are lost."""

from __future__ import annotations

import math

import pytest

from srt_trainer.scoring import ERROR_COLUMNS, STAT_COLUMNS, IFDScorer, stats_from_losses
from srt_trainer.scoring.collator import DataCollatorForIFD
from srt_trainer.scoring.report import format_summary, summarize
from srt_trainer.templates import get_template
from tests.reference_scorer import _loss

SINGLE = "response is a single token: its unconditioned loss has no target (every token after the first)"


def release_losses(model, tok, template, row: dict, max_length: int, rfind: bool = False) -> dict[str, float]:
    """The four losses as the released scorer computes them, one ``model(ids, labels=...)`` call each: NaN where a
    view has no target (transformers' mean over zero targets); a negative truncation length is no truncation, as
    the release's slow Llama tokenizer treats it. ``rfind``: the r-IFD target starts where the release's text
    search puts it (the last occurrence of the instruction), not after the reverse prompt."""
    enc = lambda text, limit: tok(text, truncation=limit > 0, max_length=max(limit, 1))["input_ids"]  # noqa: E731
    x, y = row["instruction"] + row["input"], row["output"]
    prompt, reverse = template.prompt(row["instruction"], row["input"]), template.reverse_prompt(y)
    n_ctx, n_rev = len(tok(prompt)["input_ids"]), len(tok(reverse)["input_ids"])
    views = {
        "loss_out_alone": (enc(y, max_length - n_ctx + 1), 0),
        "loss_out_cond": (enc(prompt + y, max_length), n_ctx),
        "loss_ins_alone": (enc(x, max_length - n_rev + 1), 0),
        "loss_ins_cond": (enc(reverse + x, max_length), n_rev),
    }
    if rfind:
        whole = reverse + x
        views["loss_ins_cond"] = (
            views["loss_ins_cond"][0],
            len(tok(whole[: whole.rfind(row["instruction"])])["input_ids"]),
        )
    return {k: _loss(model, ids, start) if len(ids) > max(start, 1) else math.nan for k, (ids, start) in views.items()}


def assert_like_release(got: dict, release: dict[str, float]) -> None:
    """Each loss and statistic is there exactly where the release's is a number, and equal to it."""
    want = {k: (None if math.isnan(v) else v) for k, v in release.items()}
    want = stats_from_losses(want)
    for k in STAT_COLUMNS:
        if want[k] is None:
            assert got[k] is None, k
        else:
            assert got[k] == pytest.approx(want[k], rel=1e-4), k
    assert (got["ifd_error"] is None) == (got["ifd"] is not None)
    assert (got["rifd_error"] is None) == (got["rifd"] is not None)


ROWS = [
    {"instruction": "Say yes.", "input": "", "output": "Yes"},  # a one-token response: no IFD, an r-IFD
    {"instruction": "Name a color.", "input": "", "output": " "},  # whitespace only: one token, scored like "Yes"
    {"instruction": "Print a blank line.", "input": "", "output": "  \n "},  # whitespace, two tokens: both
    {"instruction": "Name a color.", "input": "", "output": ""},  # empty: nothing
    {"instruction": "", "input": "", "output": "A reply to nothing at all."},  # no instruction: an IFD only
]


@pytest.mark.parametrize("engine", ["packed", "padded"])
def test_each_statistic_stands_alone(engine, embedded_model, embedded_tokenizer, alpaca_rows):
    t = get_template("vicuna")
    rows = [*ROWS, alpaca_rows[0]]
    got = IFDScorer(embedded_model, embedded_tokenizer, t, engine=engine).score(rows)
    for g, r in zip(got, rows, strict=True):
        if r["output"]:
            assert_like_release(g, release_losses(embedded_model, embedded_tokenizer, t, r, 2048))
    one, space, spaces, empty, no_x, real = got
    for g in (one, space):
        assert g["ifd"] is None and g["ifd_error"] == SINGLE and g["score_error"] is None
        assert g["rifd"] > 0 and g["loss_out_cond"] is not None and g["loss_out_alone"] is None
    assert spaces["ifd"] > 0 and spaces["rifd"] > 0 and spaces["score_error"] is None
    assert empty["score_error"] == empty["ifd_error"] == empty["rifd_error"] == "empty response"
    assert all(empty[c] is None for c in STAT_COLUMNS)
    assert no_x["rifd"] is None and no_x["rifd_error"] == "empty instruction and input: nothing to predict"
    assert no_x["ifd"] > 0 and no_x["loss_ins_alone"] is None and no_x["loss_ins_cond"] is None
    assert all(real[c] is not None for c in STAT_COLUMNS) and all(real[c] is None for c in ERROR_COLUMNS)


@pytest.mark.parametrize("engine", ["packed", "padded"])
def test_a_response_that_fills_the_reverse_context_keeps_its_ifd(engine, embedded_model, embedded_tokenizer):
    """max_length 128: the reverse prompt (the response inside the r-IFD instruction) is longer than that, or exactly
    that long, so the r-IFD has no target, while the prompt leaves room for response tokens: the IFD is computed on
    them (cut at max_length in the first row)."""
    t, tok = get_template("vicuna"), embedded_tokenizer
    rows = [
        {"instruction": "Write a long story.", "input": "", "output": "Once upon a time " * 200},
        {"instruction": "Write a short story.", "input": "", "output": "A cat sat. " * 16},  # fills it exactly
    ]
    assert len(tok(t.reverse_prompt(rows[1]["output"]))["input_ids"]) == 128
    got = IFDScorer(embedded_model, tok, t, max_length=128, engine=engine).score(rows)
    for g, r in zip(got, rows, strict=True):
        assert_like_release(g, release_losses(embedded_model, tok, t, r, 128))
        assert g["ifd"] > 0 and g["rifd"] is None and g["score_error"] is None
        assert g["rifd_error"].startswith("reverse prompt is ") and "max_length 128" in g["rifd_error"]
    # the instruction alone is cut to max_length - 128 + 1 = 1 token (no target) where the reverse prompt fills
    # max_length exactly; where it is longer, the release's tokenizer cuts nothing and the loss is there
    assert got[1]["loss_ins_alone"] is None and got[0]["loss_ins_alone"] > 0


@pytest.fixture(scope="module")
def quoting_rows(embedded_model, embedded_tokenizer, alpaca_rows) -> tuple[list[dict], list[tuple[dict, dict]]]:
    """A real row with an input, the same with no instruction, and with an input that quotes the instruction; and
    the release's losses of each (its own target start, then the release's text search), computed once for both
    engines."""
    t = get_template("vicuna")
    real = next(r for r in alpaca_rows if r["input"] and 30 <= len(r["output"]) <= 300)
    rows = [
        real,
        {**real, "instruction": ""},  # only an input
        {**real, "input": real["instruction"] + "\n" + real["input"]},  # the input quotes the instruction
    ]
    refs = [
        tuple(release_losses(embedded_model, embedded_tokenizer, t, r, 2048, rfind=rfind) for rfind in (False, True))
        for r in rows
    ]
    return rows, refs


@pytest.mark.parametrize("engine", ["packed", "padded"])
def test_rifd_target_start_release(engine, embedded_model, embedded_tokenizer, quoting_rows):
    """--rifd_target_start release: the r-IFD target starts at the instruction's last occurrence in the reverse
    text, as the release finds it. On real rows with an input: unchanged where the instruction occurs once; none
    (NaN in the release) where the instruction is empty; inside the input where the input repeats it."""
    t, tok = get_template("vicuna"), embedded_tokenizer
    rows, refs = quoting_rows
    ours = IFDScorer(embedded_model, tok, t, engine=engine).score(rows)
    release = IFDScorer(embedded_model, tok, t, engine=engine, rifd_target_start="release").score(rows)
    for o, g, (want_ours, want_release) in zip(ours, release, refs, strict=True):
        assert_like_release(o, want_ours)
        assert_like_release(g, want_release)
        assert g["ifd"] == pytest.approx(o["ifd"], rel=1e-5) and g["loss_ins_alone"] == o["loss_ins_alone"]
    assert release[0]["rifd"] == pytest.approx(ours[0]["rifd"], rel=1e-5)
    assert ours[1]["rifd"] > 0 and release[1]["rifd"] is None and release[1]["loss_ins_cond"] is None
    assert release[1]["rifd_error"].startswith("empty instruction: the release's text search")
    assert release[1]["score_error"] is None  # the IFD is still there
    assert release[2]["rifd"] > 0 and release[2]["loss_ins_cond"] != pytest.approx(ours[2]["loss_ins_cond"])


def test_no_statistics_at_all_gives_both_reasons(embedded_model, embedded_tokenizer):
    """max_length 16: both contexts fill it. Neither statistic, both reasons; the texts alone are not cut (their
    limits are below zero) and keep their losses, as in the release."""
    row = {"instruction": "Name a color.", "input": "", "output": "Blue is a color."}
    (sv,) = DataCollatorForIFD(embedded_tokenizer, get_template("vicuna"), 16).views([row])
    assert sorted(v.kind for v in sv.views) == ["ins_alone", "out_alone"]
    assert sv.stat_errors["ifd"].startswith("prompt is ") and sv.stat_errors["rifd"].startswith("reverse prompt is ")
    assert sv.error == f"{sv.stat_errors['ifd']}; {sv.stat_errors['rifd']}"
    (got,) = IFDScorer(embedded_model, embedded_tokenizer, "vicuna", max_length=16).score([row])
    assert got["score_error"] == sv.error and got["ifd"] is None and got["rifd"] is None
    assert_like_release(got, release_losses(embedded_model, embedded_tokenizer, get_template("vicuna"), row, 16))


def test_a_conversation_turn_without_a_statistic_names_the_turn(embedded_model, embedded_tokenizer, alpaca_rows):
    a = alpaca_rows[5]
    msgs = [
        {"role": "user", "content": a["instruction"]},
        {"role": "assistant", "content": a["output"]},
        {"role": "user", "content": "Say yes."},
        {"role": "assistant", "content": "Yes"},
    ]
    (got,) = IFDScorer(embedded_model, embedded_tokenizer, "vicuna").score(
        [{"instruction": a["instruction"], "input": "", "output": a["output"], "messages": msgs}]
    )
    assert got["num_turns"] == 2 and got["ifd_turns"][0] > 0 and got["ifd_turns"][1] is None
    assert got["ifd"] is None and got["ifd_error"] == f"{SINGLE} (turn 2)"
    assert got["rifd"] == pytest.approx(sum(got["rifd_turns"]) / 2) and got["rifd_error"] is None


def test_stats_from_partial_losses():
    s = stats_from_losses({"loss_out_cond": 1.0, "loss_out_alone": 2.0, "loss_ins_cond": None, "loss_ins_alone": 3.0})
    assert s["ifd"] == pytest.approx(math.exp(-1.0)) and s["ifd_loss"] == 0.5
    assert s["rifd"] is None and s["rifd_loss"] is None and s["loss_ins_alone"] == 3.0
    assert stats_from_losses({"loss_out_cond": 1.0, "loss_out_alone": 0.0})["ifd_loss"] is None
    assert set(stats_from_losses({})) == set(STAT_COLUMNS) and all(v is None for v in stats_from_losses({}).values())


def test_summary_counts_each_statistic_over_the_rows_that_have_it():
    rows = [
        {"ifd": 0.5, "rifd": 0.4, "score_error": None},
        {"ifd": None, "rifd": 0.9, "score_error": None, "ifd_error": SINGLE},
        {"ifd": 1.5, "rifd": None, "score_error": None, "rifd_error": "reverse prompt is 9 tokens: ..."},
        {"ifd": None, "rifd": None, "score_error": "empty response", "ifd_error": "empty response"},
    ]
    s = summarize(rows)
    assert (s["rows"], s["scored"], s["without_statistics"], s["with_ifd"], s["with_rifd"]) == (4, 3, 1, 2, 2)
    assert s["errors"] == {"empty response": 1} and s["ifd_errors"] == {SINGLE: 1}
    assert s["share_ifd_above_1"] == 0.5 and s["rifd_quantiles"]["0.5"] == pytest.approx(0.65)
    text = format_summary(s)
    assert "scored 3 of 4 rows; 1 without statistics" in text and f"1 × no IFD only: {SINGLE}" in text


def test_summary_groups_reasons_by_kind(embedded_model, embedded_tokenizer, alpaca_rows):
    """A max_length that the reverse prompts overflow, each by its own token count: one line with the count of rows
    and the range of token counts, not one line per token count."""
    rows = [r for r in alpaca_rows if 60 <= len(r["output"]) <= 400][:12]
    scorer = IFDScorer(embedded_model, embedded_tokenizer, "vicuna", max_length=48)
    stats = scorer.score(rows)
    reasons = [s["rifd_error"] for s in stats if s["rifd_error"] and not s["score_error"]]
    assert len(reasons) >= 6 and len(set(reasons)) > 3  # many distinct token counts
    summary = summarize([{**r, **s} for r, s in zip(rows, stats, strict=True)])
    kind = "reverse prompt is N tokens: no room for the instruction within max_length 48"
    assert summary["rifd_errors"][kind] == len(reasons)
    counts = sorted(int(r.split()[3]) for r in reasons)
    assert summary["token_counts"][kind] == [counts[0], counts[-1]]
    text = format_summary(summary)
    lines = [line for line in text.splitlines() if "no r-IFD only" in line]
    assert lines == [f"  {len(reasons)} × no r-IFD only: {kind} (N from {counts[0]} to {counts[-1]})"]
    assert len([line for line in text.splitlines() if " tokens" in line]) == len(summary["token_counts"])
