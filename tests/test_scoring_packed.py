"""The packed engine (views back to back in rows under a block-diagonal causal mask) against the padded engine and
the golden file; how the engine is chosen; packing plans; device-sized token budgets; out-of-memory retries."""

from __future__ import annotations

import logging
import time

import pytest
import torch

from srt_trainer.io import read_rows
from srt_trainer.models import load_student, load_tokenizer
from srt_trainer.scoring import IFDScorer
from srt_trainer.scoring import engine as engine_module
from srt_trainer.scoring.collator import View
from srt_trainer.scoring.engine import block_causal_block_mask, block_causal_mask
from srt_trainer.scoring.planning import (
    MAX_TOKEN_BUDGET,
    activation_bytes_per_token,
    attention_weight,
    device_token_budget,
    pack_rows,
)
from srt_trainer.templates import get_template

LOSSES = ("loss_ins_alone", "loss_out_alone", "loss_ins_cond", "loss_out_cond")
CHECKED = (*LOSSES, "ifd", "rifd")


def assert_rows_close(got: list[dict], want: list[dict], rel: float = 1e-4, keys: tuple[str, ...] = CHECKED) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g["score_error"] is None
        for k in keys:
            assert g[k] == pytest.approx(w[k], rel=rel), k


def spy_forwards(monkeypatch: pytest.MonkeyPatch, scorer: IFDScorer) -> list[tuple[int, list[int]]]:
    """Record (shared prefix length, views per row) of every forward the scorer runs."""
    seen: list[tuple[int, list[int]]] = []
    run = scorer._batch_nll

    def spy(rows, prefix_len, prefix_kv):
        seen.append((prefix_len, [len(r) for r in rows]))
        return run(rows, prefix_len, prefix_kv)

    monkeypatch.setattr(scorer, "_batch_nll", spy)
    return seen


def conversation(a: dict, b: dict) -> dict:
    msgs = [
        {"role": "user", "content": a["instruction"]},
        {"role": "assistant", "content": a["output"]},
        {"role": "user", "content": b["instruction"]},
        {"role": "assistant", "content": b["output"]},
    ]
    return {"instruction": a["instruction"], "input": "", "output": a["output"], "messages": msgs}


def test_packed_equals_padded_and_golden_fp32(embedded_model, embedded_tokenizer, alpaca_rows, data_dir, monkeypatch):
    """Real rows under the real student: several views share a row, behind the shared template prefix and without
    one, and every loss matches the padded engine and the one-sample-at-a-time golden file to 1e-4."""
    golden = read_rows(data_dir / "golden_smollm2_vicuna_64.jsonl")
    rows = alpaca_rows[:8]
    packed = IFDScorer(embedded_model, embedded_tokenizer, "vicuna", engine="packed")
    padded = IFDScorer(embedded_model, embedded_tokenizer, "vicuna", engine="padded")
    assert (packed.engine, padded.engine) == ("packed", "padded")
    seen = spy_forwards(monkeypatch, packed)
    start = time.perf_counter()
    got = packed.score(rows)
    t_packed = time.perf_counter() - start
    start = time.perf_counter()
    want = padded.score(rows)
    t_padded = time.perf_counter() - start
    print(f"{len(rows)} rows, CPU: packed {t_packed:.2f} s ({len(seen)} forwards), padded {t_padded:.2f} s")
    assert any(plen > 0 and max(per_row) > 1 for plen, per_row in seen)  # shared prefix and several views per row
    assert any(plen == 0 and max(per_row) > 1 for plen, per_row in seen)
    assert_rows_close(got, want, rel=1e-4)
    assert_rows_close(got, golden[: len(rows)], rel=1e-4, keys=LOSSES)


def test_packed_flex_attention_equals_golden_fp32(embedded_dir, embedded_tokenizer, alpaca_rows, data_dir):
    """The real student under flex attention: packed rows under a BlockMask (behind the shared prefix and without
    one) give the one-sample-at-a-time golden losses to 1e-4, as the padded engine does."""
    golden = read_rows(data_dir / "golden_smollm2_vicuna_64.jsonl")
    model = load_student(embedded_dir, dtype="float32", device="cpu", attn_implementation="flex_attention")
    scorer = IFDScorer(model, embedded_tokenizer, "vicuna")
    assert scorer.engine == "packed"
    assert_rows_close(scorer.score(alpaca_rows[:4]), golden[:4], rel=1e-4, keys=LOSSES)


def test_packed_conversation_and_unscorable_rows_match_padded(embedded_model, embedded_tokenizer, alpaca_rows):
    """A two-turn conversation (per-turn views of several lengths, the longest cut at max_length) packed with rows
    of which one has no r-IFD at this max_length (its reverse prompt fills it): it is marked and keeps its IFD, the
    rest match."""
    # rows 140-143: 143 is the one whose reverse prompt fills max_length 320; 140 and 141 have an input
    rows = [conversation(alpaca_rows[5], alpaca_rows[6]), *alpaca_rows[140:144]]
    kw = {"max_length": 320, "token_budget": 1024}
    got = IFDScorer(embedded_model, embedded_tokenizer, "vicuna", engine="packed", **kw).score(rows)
    want = IFDScorer(embedded_model, embedded_tokenizer, "vicuna", engine="padded", **kw).score(rows)
    scored = [r["rifd"] is not None for r in got]
    assert scored == [r["rifd"] is not None for r in want] and scored.count(False) == 1
    assert all(r["score_error"] is None for r in got)
    assert_rows_close([r for r in got if r["rifd"] is not None], [r for r in want if r["rifd"] is not None])
    partial = scored.index(False)
    assert got[partial]["rifd_error"].startswith("reverse prompt is ")
    assert_rows_close([got[partial]], [want[partial]], keys=("loss_out_alone", "loss_out_cond", "ifd"))
    assert got[0]["num_turns"] == 2 and got[0]["ifd_turns"] == pytest.approx(want[0]["ifd_turns"], rel=1e-4)


@pytest.mark.parametrize(
    ("arch", "attn"),
    [
        ("llama", "sdpa"),
        ("llama", "eager"),
        ("mistral", "sdpa"),
        ("gpt2", "eager"),
        ("gpt2", "sdpa"),
        ("qwen2", "sdpa"),
    ],
)
def test_packed_equals_padded_on_tiny_models(arch, attn, tiny_models, alpaca_rows, monkeypatch):
    """Other architectures (learned positions, GQA, biases), both mask forms (boolean for sdpa, additive for
    eager), a small budget so forwards hold several rows with tails."""
    tok = load_tokenizer(tiny_models[arch])
    model = load_student(tiny_models[arch], device="cpu", attn_implementation=attn)
    t = get_template("vicuna")
    rows = [*alpaca_rows[30:42], conversation(alpaca_rows[7], alpaca_rows[8])]
    packed = IFDScorer(model, tok, t, token_budget=512, engine="packed")
    assert IFDScorer(model, tok, t).engine == "packed"
    # in a 32-wide model attention outweighs the linear layers, so the plan would give most views a row of their
    # own; plan as for a wide model, so rows hold several views
    packed.planner.attention_weight = 0.0
    seen = spy_forwards(monkeypatch, packed)
    got = packed.score(rows)
    assert any(len(per_row) > 1 and max(per_row) > 1 for _, per_row in seen)
    assert_rows_close(got, IFDScorer(model, tok, t, token_budget=512, engine="padded").score(rows), rel=1e-5)


def test_auto_engine_choice(tiny_models, alpaca_rows, monkeypatch, caplog):
    """auto: packed for sdpa and eager; padded for an attention implementation outside those (here sdpa under
    another name, registered the way custom kernels are), for a model that does not honour the mask, and for
    one view per forward."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import sdpa_mask

    folder = tiny_models["llama"]
    tok, t = load_tokenizer(folder), get_template("vicuna")
    for attn in ("sdpa", "eager"):
        assert IFDScorer(load_student(folder, device="cpu", attn_implementation=attn), tok, t).engine == "packed"

    AttentionInterface.register("sdpa_renamed", sdpa_attention_forward)
    AttentionMaskInterface.register("sdpa_renamed", sdpa_mask)
    other = load_student(folder, device="cpu", attn_implementation="sdpa_renamed")
    scorer = IFDScorer(other, tok, t)
    assert scorer.fast_path and scorer.engine == "padded"
    assert "sdpa_renamed" in scorer.packed_refusal()
    with pytest.raises(ValueError, match="engine='packed' cannot score"):
        IFDScorer(other, tok, t, engine="packed")
    with pytest.raises(ValueError, match="engine must be one of"):
        IFDScorer(other, tok, t, engine="flat")
    rows = alpaca_rows[60:64]
    sdpa = load_student(folder, device="cpu")
    assert_rows_close(scorer.score(rows), IFDScorer(sdpa, tok, t).score(rows), rel=1e-5)

    assert IFDScorer(sdpa, tok, t, max_batch_size=1).engine == "padded"

    def plain_causal(view_index: torch.Tensor, prefix_len: int = 0) -> torch.Tensor:  # a mask that lets views leak
        return block_causal_mask(torch.zeros_like(view_index), prefix_len)

    monkeypatch.setattr(engine_module, "block_causal_mask", plain_causal)
    with caplog.at_level(logging.WARNING, logger="srt_trainer.scoring"):
        assert IFDScorer(sdpa, tok, t).engine == "padded"
    assert "does not honour an explicit attention mask" in caplog.text


def test_block_causal_mask_and_packed_layout(embedded_tokenizer):
    view_index = torch.tensor([[0, 0, 1, 1, 1, -1], [2, 2, 2, 2, 2, 2]])
    mask = block_causal_mask(view_index, prefix_len=2)
    assert mask.shape == (2, 1, 6, 8) and mask.dtype == torch.bool
    assert mask[:, :, :, :2].all()  # every token sees the prefix
    row = mask[0, 0, :, 2:].int().tolist()
    assert row == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ]
    assert torch.equal(mask[1, 0, :, 2:], torch.ones(6, 6, dtype=torch.bool).tril())

    from srt_trainer.scoring.collator import DataCollatorForIFD

    collator = DataCollatorForIFD(embedded_tokenizer, get_template("vicuna"))
    a, b, c = (
        View(0, 0, "out_cond", [7, 8, 10, 11, 12], 3),
        View(0, 0, "out_cond", [7, 8, 20, 21], 2),
        View(1, 0, "out_cond", [7, 8, 30, 31, 32, 33], 4),
    )
    batch = collator.pack([[a, b], [c]], prefix_len=2)
    assert batch["input_ids"].tolist()[0] == [10, 11, 12, 20, 21]
    assert batch["position_ids"].tolist() == [[2, 3, 4, 2, 3], [2, 3, 4, 5, 2]]
    assert batch["view_index"].tolist() == [[0, 0, 0, 1, 1], [2, 2, 2, 2, -1]]
    # targets: a from its 4th token; b from its 3rd, which is its first after the prefix: no state of its own
    # predicts it (the padded engine drops it the same way); c from its 5th
    assert batch["labels"].tolist() == [[-100, 11, 12, -100, 21], [-100, -100, 32, 33, -100]]


def test_block_mask_sees_what_the_boolean_mask_sees():
    """flex attention's BlockMask of packed rows gives every query the keys of the boolean mask (with and without a
    shared prefix, views across 128-token tiles, a tail), and the tiles between views are skipped, not computed."""
    from torch.nn.attention.flex_attention import create_mask

    mixed = torch.tensor([[0] * 100 + [1] * 200 + [2] * 30 + [-1] * 54])
    for view_index in (mixed, torch.tensor([[3] * 384])):
        for prefix_len in (0, 5):
            block = block_causal_block_mask(view_index, prefix_len)
            dense = create_mask(block.mask_mod, 1, 1, 384, prefix_len + 384, device="cpu")
            assert torch.equal(dense, block_causal_mask(view_index, prefix_len))

    def tiles_read(view_index: torch.Tensor) -> list[int]:
        block = block_causal_block_mask(view_index)
        return (block.kv_num_blocks + block.full_kv_num_blocks)[0, 0].tolist()

    # three views of one tile each: every query tile reads its own tile only; one view: the causal triangle
    assert tiles_read(torch.tensor([[0] * 128 + [1] * 128 + [2] * 128])) == [1, 1, 1]
    assert tiles_read(torch.tensor([[3] * 384])) == [1, 2, 3]


def test_pack_rows_plans():
    lengths = [5, 300, 40, 41, 300, 7, 120, 119, 2000, 180, 60, 60, 250]
    plan = pack_rows(lengths, token_budget=1200, max_batch_size=4)
    assert sorted(i for f in plan for row in f for i in row) == list(range(len(lengths)))
    for forward in plan:
        views = [i for row in forward for i in row]
        width = max(lengths[i] for i in views)
        assert len(views) <= 4
        assert all(sum(lengths[i] for i in row) <= width for row in forward)  # rows as wide as the longest view
        assert len(views) == 1 or len(forward) * width <= 1200
    assert [[8]] in plan  # an over-budget view gets a forward of its own
    assert any(len(row) > 1 for f in plan for row in f)
    # the short views fill the tail of the second row; counting attention, they get rows of their own width
    lengths = [1000, 600] + [20] * 20
    assert pack_rows(lengths, token_budget=10**6, max_batch_size=64) == [[[0], [1, *range(2, 22)]]]
    costly = pack_rows(lengths, token_budget=10**6, max_batch_size=64, attention_weight=1 / 500)
    assert costly == [[[0]], [[1]], [[i] for i in range(2, 22)]]


def test_device_token_budget_estimate(embedded_model, embedded_tokenizer):
    config = embedded_model.config  # SmolLM2-135M: d 576, 30 layers, 9 query / 3 key-value heads, ff 1536
    assert attention_weight(config) == pytest.approx(2 * 576 / (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536))
    fp32 = activation_bytes_per_token(config, torch.float32, 2048)
    assert fp32 == 4 * (6 * 576 + 576 + 2 * 192 + 2 * 576 + 4 * 1536) + 2 * 4 * 2 * 30 * 192 + 2048
    assert activation_bytes_per_token(config, torch.bfloat16, 2048) < fp32
    assert activation_bytes_per_token(config, torch.float32, 2048, eager=True) > fp32
    assert device_token_budget(80 * 2**30, fp32) == MAX_TOKEN_BUDGET
    assert device_token_budget(2 * 2**30, fp32) == (2**30 // fp32) // 256 * 256
    assert device_token_budget(10 * 2**20, fp32) == 1024
    assert IFDScorer(embedded_model, embedded_tokenizer, "vicuna").token_budget == 4096  # the CPU default
    assert IFDScorer(embedded_model, embedded_tokenizer, "vicuna", token_budget=999).token_budget == 999


@pytest.mark.parametrize("engine", ["packed", "padded"])
def test_out_of_memory_halves_the_budget_and_repacks(engine, tiny_models, alpaca_rows, monkeypatch, caplog):
    folder = tiny_models["llama"]
    tok, t = load_tokenizer(folder), get_template("vicuna")
    model = load_student(folder, device="cpu")
    rows = alpaca_rows[80:96]
    want = IFDScorer(model, tok, t, token_budget=1024, engine=engine).score(rows)

    scorer = IFDScorer(model, tok, t, token_budget=1024, engine=engine)
    forward, calls = scorer.forwards.forward_nll, []

    def once(*args, **kwargs):  # the second forward runs out of memory, once
        calls.append(1)
        if len(calls) == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return forward(*args, **kwargs)

    monkeypatch.setattr(scorer.forwards, "forward_nll", once)
    with caplog.at_level(logging.WARNING, logger="srt_trainer.scoring"):
        got = scorer.score(rows)
    assert scorer.token_budget == 512 and "token budget halved to 512" in caplog.text
    assert_rows_close(got, want, rel=1e-5)

    def never(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(scorer.forwards, "forward_nll", never)
    with pytest.raises(RuntimeError, match="out of memory even at a token budget of 256"):
        scorer.score(rows[:2])


def test_score_config_engine():
    from trl import TrlParser

    from srt_trainer.models.config import SRTModelConfig
    from srt_trainer.scoring.config import ScoreArguments, ScoringArguments, fingerprint_settings

    _, scoring, model_args = TrlParser((ScoreArguments, ScoringArguments, SRTModelConfig)).parse_args_and_config(
        ["--data", "x.json", "--output", "y.jsonl", "--engine", "padded"]
    )
    assert scoring.engine == "padded" and scoring.token_budget is None
    assert fingerprint_settings(scoring, model_args)["engine"] == "padded"
    assert ScoringArguments().engine == "auto"


def test_packed_engine_without_the_fast_path(soft_capped_gemma2, alpaca_rows):
    """Asked for, the packed engine also runs through a model's full forward (here Gemma-2, whose soft-capped
    logits keep it off the fast path, so auto picks padded)."""
    model, tok = soft_capped_gemma2
    t = get_template("vicuna")
    auto = IFDScorer(model, tok, t)
    assert not auto.fast_path and auto.engine == "padded"
    rows = alpaca_rows[:6]
    got = IFDScorer(model, tok, t, engine="packed").score(rows)
    assert_rows_close(got, auto.score(rows), rel=1e-5)
