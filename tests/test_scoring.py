"""The batched scorer against the golden file and against the slow one-sample-at-a-time reference."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from srt_trainer.io import read_rows
from srt_trainer.models import load_student, load_tokenizer
from srt_trainer.models.config import SRTModelConfig
from srt_trainer.models.loading import load_configured_student
from srt_trainer.scoring import STAT_COLUMNS, IFDScorer
from srt_trainer.scoring.loss import tiled_nll
from srt_trainer.scoring.planning import common_prefix_length, pack_by_token_budget
from srt_trainer.scoring.runner import assign_shards
from srt_trainer.templates import get_template
from tests.reference_scorer import reference_sample

CHECKED = ("loss_ins_alone", "loss_out_alone", "loss_ins_cond", "loss_out_cond", "ifd", "rifd")


def assert_close_rel(got: dict, want: dict, rel: float = 1e-4) -> None:
    for k in CHECKED:
        assert got[k] == pytest.approx(want[k], rel=rel), k


@pytest.fixture(scope="module")
def fp32_scores_64(embedded_model, embedded_tokenizer, alpaca_rows):
    """fp32 statistics of the 64 golden rows (shared by the golden and the bf16 tests)."""
    return IFDScorer(embedded_model, embedded_tokenizer, "vicuna").score(alpaca_rows[:64])


def test_golden_fp32(fp32_scores_64, data_dir):
    golden = read_rows(data_dir / "golden_smollm2_vicuna_64.jsonl")
    assert len(golden) == 64
    for got, want in zip(fp32_scores_64, golden, strict=True):
        assert got["score_error"] is None
        assert_close_rel(got, want, rel=1e-4)
        assert got["ifd_loss"] == pytest.approx(want["loss_out_cond"] / want["loss_out_alone"], rel=1e-4)


def test_bf16_ranks_agree_with_fp32(fp32_scores_64, data_dir, embedded_dir, embedded_tokenizer, alpaca_rows):
    """bf16 against fp32 on 32 real rows other than the golden ones. The fp32 side is this scorer's fp32 IFD as
    tests/data carries it (scoring them again in fp32 took most of this module's time); its first 64 rows must
    equal the live fp32 run of the golden rows, so it cannot go stale unseen."""
    fp32 = read_rows(data_dir / "fp32_ifd_smollm2_vicuna_200.jsonl")
    assert [r["index"] for r in fp32] == list(range(200))
    for got, want in zip(fp32_scores_64, fp32[:64], strict=True):
        assert got["ifd"] == pytest.approx(want["ifd"], rel=1e-4)
        assert got["rifd"] == pytest.approx(want["rifd"], rel=1e-4)
    model = load_student(embedded_dir, dtype="bfloat16", device="cpu")
    bf16 = IFDScorer(model, embedded_tokenizer, "vicuna").score(alpaca_rows[64:96])
    a = np.array([r["ifd"] for r in fp32[64:96]])
    b = np.array([r["ifd"] for r in bf16])
    ranks = lambda x: np.argsort(np.argsort(x))  # noqa: E731
    rho = np.corrcoef(ranks(a), ranks(b))[0, 1]
    print(f"Spearman(IFD fp32, bf16) over 32 real samples = {rho:.4f}")
    # bf16 kernels differ by CPU: measured 0.9952 on an AVX2 AMD EPYC and 0.9875 on an Intel Xeon with AMX (the same
    # 32 rows; 0.998 over 300 rows in benchmarks/RESULTS.md); below 0.98 the ranks, and so the selection, would differ
    assert rho >= 0.98


@pytest.mark.parametrize("template", ["alpaca", "wizardlm", "chat"])
def test_embedded_other_templates_match_reference(template, embedded_model, embedded_tokenizer, alpaca_rows):
    t = get_template(template, embedded_tokenizer)
    rows = alpaca_rows[177:179]  # other data than the golden rows; 177 has an input, 178 none
    got = IFDScorer(embedded_model, embedded_tokenizer, t).score(rows)
    for g, r in zip(got, rows, strict=True):
        assert_close_rel(g, reference_sample(embedded_model, embedded_tokenizer, t, r), rel=1e-4)


def test_compressed_data_and_truncation_match_reference(embedded_model, embedded_tokenizer, data_dir):
    """Other data (inputs folded into the instruction), with max_length just past the r-IFD context, so the
    conditioned response view and the response alone are cut."""
    t, tok = get_template("vicuna"), embedded_tokenizer
    n = lambda text: len(tok(text)["input_ids"])  # noqa: E731
    data = json.loads((data_dir / "alpaca_slice_compressed.json").read_text())
    rows = [{**r, "input": ""} for r in data if n(t.prompt(r["instruction"])) > 80][:4]
    assert len(rows) == 4
    for r in rows:
        max_length = n(t.reverse_prompt(r["output"])) + 4
        assert n(t.prompt(r["instruction"]) + r["output"]) > max_length  # the cut is real
        (got,) = IFDScorer(embedded_model, tok, t, max_length=max_length).score([r])
        assert got["score_error"] is None
        assert_close_rel(got, reference_sample(embedded_model, tok, t, r, max_length=max_length))


@pytest.mark.parametrize("arch", ["llama", "mistral", "gpt2", "qwen2"])
def test_other_tokenizers_with_and_without_bos_match_reference(arch, tiny_models, alpaca_rows):
    tok = load_tokenizer(tiny_models[arch])
    model = load_student(tiny_models[arch], device="cpu")
    t = get_template("vicuna")
    rows = alpaca_rows[10:30]
    scorer = IFDScorer(model, tok, t, token_budget=1024)
    assert scorer.fast_path
    for g, r in zip(scorer.score(rows), rows, strict=True):
        assert_close_rel(g, reference_sample(model, tok, t, r), rel=1e-4)


def test_multi_turn_per_turn_and_mean(embedded_model, embedded_tokenizer, alpaca_rows):
    a, b = alpaca_rows[5], alpaca_rows[6]
    msgs = [
        {"role": "user", "content": a["instruction"]},
        {"role": "assistant", "content": a["output"]},
        {"role": "user", "content": b["instruction"]},
        {"role": "assistant", "content": b["output"]},
    ]
    sample = {"instruction": a["instruction"], "input": "", "output": a["output"], "messages": msgs}
    t = get_template("vicuna")
    (got,) = IFDScorer(embedded_model, embedded_tokenizer, t).score([sample])
    assert got["num_turns"] == 2 and len(got["ifd_turns"]) == 2
    assert got["ifd"] == pytest.approx(sum(got["ifd_turns"]) / 2)
    assert_close_rel(got, reference_sample(embedded_model, embedded_tokenizer, t, sample))


def test_shared_prefix_is_exact(embedded_model, embedded_tokenizer, alpaca_rows):
    rows = alpaca_rows[43:46]  # 45 has an input
    shared = IFDScorer(embedded_model, embedded_tokenizer, "vicuna")
    plain = IFDScorer(embedded_model, embedded_tokenizer, "vicuna", share_prefix=False)
    views = [v for sv in shared.collator.views(rows) for v in sv.views]
    assert shared.shared_prefix_length([v for v in views if v.kind == "out_cond"]) >= 30
    assert shared.shared_prefix_length([v for v in views if v.kind == "ins_cond"]) >= 45
    for x, y in zip(shared.score(rows), plain.score(rows), strict=True):
        assert_close_rel(x, y, rel=1e-5)


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ["q_proj", "v_proj", "lm_head"]])
def test_lora_adapter_on_its_base(targets, tiny_models, alpaca_rows, tmp_path):
    """With ``lm_head`` adapted the output layer is no plain linear layer: it runs whole, in row chunks."""
    from peft import LoraConfig, get_peft_model

    folder = tiny_models["llama"]
    tok = load_tokenizer(folder)
    torch.manual_seed(1)
    lora = LoraConfig(r=4, target_modules=targets, init_lora_weights=False)
    peft_model = get_peft_model(load_student(folder, device="cpu"), lora)
    peft_model.save_pretrained(tmp_path / "adapter")
    adapted = load_student(folder, device="cpu", adapter=tmp_path / "adapter")
    merged = load_student(folder, device="cpu", adapter=tmp_path / "adapter").merge_and_unload()
    base = load_student(folder, device="cpu")
    t = get_template("vicuna")
    rows = alpaca_rows[:8]
    scorer = IFDScorer(adapted, tok, t)
    assert scorer.fast_path and scorer.forwards.tiled == ("lm_head" not in targets)
    got = scorer.score(rows)
    for g, r in zip(got, rows, strict=True):
        assert_close_rel(g, reference_sample(merged, tok, t, r), rel=1e-4)
    plain = IFDScorer(base, tok, t).score(rows)
    assert any(abs(g["ifd"] - p["ifd"]) > 1e-4 for g, p in zip(got, plain, strict=True))  # the adapter counts


def test_models_whose_logits_need_more_than_the_head_fall_back(soft_capped_gemma2, alpaca_rows):
    """Gemma-2 soft-caps its logits: the fast path disagrees with forward(), so full forwards are used."""
    model, tok = soft_capped_gemma2
    t = get_template("vicuna")
    scorer = IFDScorer(model, tok, t)
    assert not scorer.fast_path
    rows = alpaca_rows[:6]
    for g, r in zip(scorer.score(rows), rows, strict=True):
        assert_close_rel(g, reference_sample(model, tok, t, r), rel=1e-4)


def test_edge_rows_are_kept_and_marked(embedded_model, embedded_tokenizer):
    rows = [
        {"instruction": "Name a color.", "input": "", "output": ""},
        {"instruction": "", "input": "Summarize: the cat sat on the mat all day.", "output": "A cat rested."},
        {"instruction": "Write a long story.", "input": "", "output": "Once upon a time " * 200},
    ]
    got = IFDScorer(embedded_model, embedded_tokenizer, "vicuna", max_length=128).score(rows)
    assert got[0]["score_error"] == "empty response" and all(got[0][c] is None for c in STAT_COLUMNS)
    assert got[1]["score_error"] is None and math.isfinite(got[1]["ifd"])
    # the response fills the r-IFD context: no r-IFD, but an IFD
    assert got[2]["score_error"] is None and got[2]["rifd"] is None and math.isfinite(got[2]["ifd"])
    assert got[2]["rifd_error"].startswith("reverse prompt is")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tiled_nll_equals_cross_entropy(dtype):
    torch.manual_seed(0)
    hidden, weight, bias = torch.randn(11, 16), torch.randn(1000, 16), torch.randn(1000)
    targets = torch.tensor([0, 999, 255, 256, 511, 512, 3, 768, 767, 1, 998])  # both sides of every tile edge
    hidden, weight, bias = hidden.to(dtype), weight.to(dtype), bias.to(dtype)
    want = torch.nn.functional.cross_entropy(
        torch.nn.functional.linear(hidden, weight, bias).float(), targets, reduction="none"
    )
    for rows, vocab in [(3, 256), (11, 1000), (4, 300)]:
        got = tiled_nll(hidden, weight, bias, targets, rows=rows, vocab=vocab)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
    no_bias = torch.nn.functional.cross_entropy((hidden @ weight.T).float(), targets, reduction="none")
    got = tiled_nll(hidden, weight, None, targets, rows=3, vocab=256)
    torch.testing.assert_close(got, no_bias, rtol=1e-6, atol=1e-5)


def test_packing_and_shard_assignment():
    lengths = [5, 300, 40, 41, 300, 7, 120, 119, 2000]
    batches = pack_by_token_budget(lengths, token_budget=700, max_batch_size=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 700)
    assert [8] in batches  # an over-budget view still gets a batch of its own
    work = [10, 50, 30, 30, 20, 60]
    owned = assign_shards(work, 2)
    assert sorted(k for ks in owned for k in ks) == list(range(6))
    assert abs(sum(work[k] for k in owned[0]) - sum(work[k] for k in owned[1])) <= 10
    assert common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2 and common_prefix_length([]) == 0


@pytest.mark.parametrize("bits", [4, 8])
def test_bitsandbytes_quantized_student_matches_reference(bits, embedded_dir, embedded_tokenizer, alpaca_rows):
    student = SRTModelConfig(model_name_or_path=str(embedded_dir), **{f"load_in_{bits}bit": True})
    model = load_configured_student(student, device="cpu")
    assert type(model.model.layers[0].mlp.up_proj).__name__ == ("Linear4bit" if bits == 4 else "Linear8bitLt")
    t = get_template("vicuna")
    rows = alpaca_rows[64:67]
    want = [reference_sample(model, embedded_tokenizer, t, r) for r in rows]
    # one view per forward, as the reference runs: the scorer's arithmetic is the reference's
    alone = IFDScorer(model, embedded_tokenizer, t, max_batch_size=1, share_prefix=False).score(rows)
    for g, w in zip(alone, want, strict=True):
        assert_close_rel(g, w, rel=1e-4)
    # batched (the default): bitsandbytes' 4-bit CPU kernel takes another path for several rows (measured up to
    # 6e-3 on r-IFD); an 8-bit student is scored one view per forward, since LLM.int8() picks outlier columns from
    # every row of a product (batched, r-IFD moved by 11%), so it matches the reference tightly
    scorer = IFDScorer(model, embedded_tokenizer, t)
    assert (scorer.max_batch_size, scorer.share_prefix) == ((128, True) if bits == 4 else (1, False))
    for g, w in zip(scorer.score(rows), want, strict=True):
        assert_close_rel(g, w, rel=1e-2 if bits == 4 else 1e-4)
