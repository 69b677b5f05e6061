"""DataCollatorForIFD on its own: the four views, their targets, truncation and padding."""

from __future__ import annotations

import pytest
import torch

from srt_trainer.models import load_tokenizer
from srt_trainer.scoring.collator import VIEW_KINDS, DataCollatorForIFD
from srt_trainer.templates import get_template


@pytest.fixture(scope="module")
def collator(embedded_tokenizer):
    return DataCollatorForIFD(embedded_tokenizer, get_template("vicuna"), max_length=2048)


def test_four_views_of_a_real_sample(collator, alpaca_rows, embedded_tokenizer):
    tok, t = embedded_tokenizer, get_template("vicuna")
    row = alpaca_rows[0]
    (sv,) = collator.views([row])
    assert sv.error is None and [v.kind for v in sv.views] == list(VIEW_KINDS)
    out_alone, out_cond, ins_alone, ins_cond = sv.views
    prompt = t.prompt(row["instruction"], row["input"])
    reverse = t.reverse_prompt(row["output"])
    assert out_cond.input_ids == tok(prompt + row["output"])["input_ids"]
    assert out_cond.target_start == len(tok(prompt)["input_ids"])
    assert ins_cond.input_ids == tok(reverse + row["instruction"] + row["input"])["input_ids"]
    assert ins_cond.target_start == len(tok(reverse)["input_ids"])
    assert out_alone.input_ids == tok(row["output"])["input_ids"] and out_alone.target_start == 1
    assert ins_alone.input_ids == tok(row["instruction"] + row["input"])["input_ids"]


def test_truncation_rule(embedded_tokenizer, alpaca_rows):
    tok, t = embedded_tokenizer, get_template("vicuna")
    n = lambda text: len(tok(text)["input_ids"])  # noqa: E731

    # a row with a long input, and a max_length just past both contexts: all four views are cut and keep targets
    def fits(r):
        p, rev = n(t.prompt(r["instruction"], r["input"])), n(t.reverse_prompt(r["output"]))
        cut = max(p, rev) + 3
        return cut < p + n(r["output"]) - 1 and cut < rev + n(r["instruction"] + r["input"])

    row = next(r for r in alpaca_rows if r["input"] and fits(r))  # row 36
    x, y = row["instruction"] + row["input"], row["output"]
    n_prompt, n_rev = n(t.prompt(row["instruction"], row["input"])), n(t.reverse_prompt(y))
    max_length = max(n_prompt, n_rev) + 3
    (sv,) = DataCollatorForIFD(tok, t, max_length).views([row])
    assert sv.error is None
    views = {v.kind: v for v in sv.views}
    assert len(views["out_cond"].input_ids) == len(views["ins_cond"].input_ids) == max_length
    assert views["out_alone"].input_ids == tok(y)["input_ids"][: max_length - n_prompt + 1]
    assert views["ins_alone"].input_ids == tok(x)["input_ids"][: max_length - n_rev + 1]
    assert (
        views["out_cond"].num_targets == max_length - n_prompt and views["ins_cond"].num_targets == max_length - n_rev
    )


def test_rows_without_statistics_say_why(collator, embedded_tokenizer):
    rows = [
        {"instruction": "Name a color.", "input": "", "output": ""},
        {"instruction": "Say yes.", "input": "", "output": "Yes"},
        {"instruction": "", "input": "A lone input text to summarize.", "output": "A summary of it."},
    ]
    empty, single, only_input = collator.views(rows)
    assert empty.error == "empty response" and empty.views == []
    # a one-token response has no IFD but keeps its r-IFD (its three other views)
    assert single.error is None and single.stat_errors["ifd"].startswith("response is a single token")
    assert [v.kind for v in single.views] == ["out_cond", "ins_alone", "ins_cond"]
    assert only_input.error is None and len(only_input.views) == 4  # x = "" + input
    short = DataCollatorForIFD(embedded_tokenizer, get_template("vicuna"), max_length=16)
    (too_long,) = short.views([{"instruction": "Name a color.", "input": "", "output": "Blue is a color."}])
    assert too_long.error.startswith("prompt is ") and "max_length 16" in too_long.error


def test_padded_batch_masks_everything_but_targets(collator, alpaca_rows):
    rows = alpaca_rows[:3]
    batch = collator(rows)
    views = [v for sv in collator.views(rows) for v in sv.views]
    assert batch["input_ids"].shape == (12, max(len(v.input_ids) for v in views))
    for i, v in enumerate(views):
        n = len(v.input_ids)
        assert batch["input_ids"][i, :n].tolist() == v.input_ids
        assert batch["attention_mask"][i].sum() == n
        labels = batch["labels"][i]
        assert (labels[: v.target_start] == -100).all() and (labels[n:] == -100).all()
        assert labels[v.target_start : n].tolist() == v.input_ids[v.target_start :]
        assert VIEW_KINDS[batch["view_kind"][i]] == v.kind and batch["view_sample"][i] == v.sample
    # the shared-prefix form drops the first tokens but keeps the same targets
    tail = collator.pad(views[1:2], prefix_len=10)
    assert tail["input_ids"][0].tolist() == views[1].input_ids[10:]
    assert (tail["labels"][0] != -100).sum() == views[1].num_targets


def test_multi_turn_views(collator, embedded_tokenizer):
    msgs = [
        {"role": "user", "content": "Name a primary color."},
        {"role": "assistant", "content": "Red is a primary color."},
        {"role": "user", "content": "And another one?"},
        {"role": "assistant", "content": "Blue is another primary color."},
    ]
    (sv,) = collator.views([{"messages": msgs, "instruction": msgs[0]["content"], "input": "", "output": ""}])
    assert sv.num_turns == 2 and len(sv.views) == 8
    turn2 = {v.kind: v for v in sv.views if v.turn == 1}
    context = get_template("vicuna").conversation_prompt(msgs[:3], eos_token=embedded_tokenizer.eos_token)
    assert turn2["out_cond"].input_ids == embedded_tokenizer(context + msgs[3]["content"])["input_ids"]
    assert turn2["ins_alone"].input_ids == embedded_tokenizer("And another one?")["input_ids"]


def test_bos_tokenizer_targets_every_real_token(tiny_models):
    tok = load_tokenizer(tiny_models["llama"])
    (sv,) = DataCollatorForIFD(tok, get_template("alpaca")).views(
        [{"instruction": "Name a color.", "input": "", "output": "Blue is a color."}]
    )
    out_alone = sv.views[0]
    assert out_alone.input_ids[0] == tok.bos_token_id and out_alone.target_start == 1
    assert out_alone.num_targets == len(tok("Blue is a color.", add_special_tokens=False)["input_ids"])
    with pytest.raises(ValueError, match="none of the samples"):
        DataCollatorForIFD(tok, get_template("alpaca"))([{"instruction": "x", "input": "", "output": ""}])
    assert isinstance(
        DataCollatorForIFD(tok, get_template("alpaca"))(
            [{"instruction": "Name a color.", "input": "", "output": "Blue is a color."}]
        )["labels"],
        torch.Tensor,
    )
