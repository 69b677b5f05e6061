"""The GPU check cannot rot between GPU runs: its dry run (every step on the CPU, tiny shapes, real rows) runs
here through the same shell script, and must show the behaviour each step checks on the GPU: the scorer's
engines agree in fp32, the recipe's ZeRO-3 path scores as one process does, selects, trains and resumes to the
same weights. No assertion here depends on the machine's speed (the dry run has no per-step limits)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from gpu_check.assets import truncate_bpe, variant_rows  # noqa: E402
from gpu_check.config import DRY, GPU, PEERS, STEPS  # noqa: E402
from gpu_check.report import HEADLINE, build_report  # noqa: E402

# the numbers a CPU cannot give: torch and the trainer measure peak memory on CUDA devices only
CUDA_ONLY = {
    ("scoring", "peak_memory_gib_7b"),
    ("training", "zero3_max_memory_gib"),
    ("training", "lora_max_memory_gib"),
    ("training", "qlora_max_memory_gib"),
}
# the peers' numbers need vLLM, which lives in an environment of its own (not this one, where the dry run runs)
VLLM_HERE = importlib.util.find_spec("vllm") is not None
VLLM_ONLY = {("peers", "vllm_vs_scorer"), ("peers", "vllm_ifd_max_rel")}


def test_truncated_tokenizer_is_a_real_32k_tokenizer(embedded_dir):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    cut = truncate_bpe(json.loads((embedded_dir / "tokenizer.json").read_text()), 32000)
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(cut)))
    assert len(tok) == 32000
    full = PreTrainedTokenizerFast(tokenizer_file=str(embedded_dir / "tokenizer.json"))
    for row in json.loads((REPO / "tests" / "data" / "cherry_alpaca_5_percent.json").read_text())[:20]:
        text = row["instruction"] + "\n" + row["output"]
        ids = tok(text)["input_ids"]
        assert max(ids) < 32000 and tok.decode(ids) == text
        assert len(full(text)["input_ids"]) <= len(ids)  # fewer merges: never more compact than the original


def test_variants_pair_each_row_with_its_rewrite_and_a_short_answer(data_dir):
    rows = json.loads((data_dir / "cherry_alpaca_5_percent.json").read_text())
    compressed = json.loads((data_dir / "cherry_alpaca_5_percent_compressed.json").read_text())
    variants = variant_rows(rows, compressed)
    assert all(len(v) == len(rows) for v in variants.values())
    rewritten = {r["output"]: r["instruction"] for r in compressed}
    for i, row in enumerate(rows):
        ori, q, a, qa = (variants[v][i] for v in ("ori", "Q", "A", "QA"))
        assert ori == {k: row[k] for k in ("instruction", "input", "output")}
        assert q["instruction"] == qa["instruction"] == rewritten[row["output"]] and q["input"] == ""
        assert q["output"] == row["output"] and a["output"] == qa["output"]
        assert a["output"].endswith(".") and 1 < len(a["output"]) <= len(row["output"]) + 1
        assert q["source_index"] == a["source_index"] == qa["source_index"] == i
    # the release rewrote the rows with an input (folding it in): those Q instructions are new
    assert sum(q["instruction"] != r["instruction"] for q, r in zip(variants["Q"], rows, strict=True)) >= 5


def test_gpu_limits_fit_the_deadline_and_the_dry_run_has_none():
    assert set(GPU.limits) == set(STEPS) and STEPS[-len(PEERS) :] == PEERS  # the peers last
    # one rerun fits in a session's device time; the peers get what the deadline leaves
    assert sum(v for k, v in GPU.limits.items() if k not in PEERS) <= GPU.deadline_s <= 300
    assert DRY.limits is None and math.isinf(DRY.limit("train_zero3"))


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory, embedded_dir):
    out = tmp_path_factory.mktemp("gpu_check")
    env = {k: v for k, v in os.environ.items() if k != "SRT_SHARED_DATA"}  # the dry run reads tests/data itself
    env["PYTHON"] = sys.executable  # where the checkout has no .venv: the interpreter running the tests
    res = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out, json.loads((out / "gpu_report.json").read_text())


def test_dry_run_runs_every_step_and_reports_every_number(dry_run):
    out, report = dry_run
    assert report["device"] == "cpu" and report["dry_run"] is True
    assert all(report["versions"][k] for k in ("torch", "trl", "deepspeed", "bitsandbytes"))
    failed = {name: r.get("error") for name, r in report["steps"].items() if not r["ok"]}
    assert not failed, failed
    assert list(report["steps"]) == list(STEPS)
    for section, keys in HEADLINE.items():
        for key in keys:
            value = report[section][key]
            if (section, key) in CUDA_ONLY:
                assert value is None and "CUDA" in report[section][f"{key}_reason"], (section, key)
            elif (section, key) in VLLM_ONLY and not VLLM_HERE:
                assert value is None and "vllm is not installed" in report[section][f"{key}_reason"], (section, key)
            else:
                assert value is not None and f"{key}_reason" not in report[section], (section, key)
                assert isinstance(value, str) or math.isfinite(value), (section, key, value)
    assert "## training" in (out / "gpu_report.md").read_text()
    assert (out / "gpu_check_logs.tar.gz").stat().st_size > 0


def test_dry_run_scoring(dry_run):
    _, report = dry_run
    scoring, small = report["scoring"], report["steps"]["scoring_small"]
    # the embedded weights are installed here: the headline engine is the packed one, and it agrees with the
    # padded one in fp32; bf16 ranks the rows as fp32 does
    assert scoring["default_engine"] == "packed" and small["weights"] == "embedded weights"
    assert scoring["packed_vs_padded_fp32_max_rel"] < 1e-4
    assert scoring["spearman_fp32_bf16"] > 0.8 and small["spearman_rows"] == DRY.fp32_rows
    assert list(small["engines"]) == ["packed"][: DRY.timed_engines] and small["loop_rows"] == DRY.loop_rows
    assert scoring["loop_ratio"] == small["engines"]["packed"]["ratio_vs_loop"] > 0
    # the MFU is executed FLOPs over a peak measured on this machine: both counted, both positive
    big = report["steps"]["scoring_7b"]
    assert big["engines"]["packed"]["flops"] > 0 and scoring["matmul_peak_tflops"] > 0
    assert scoring["mfu_7b"] == big["engines"]["packed"]["mfu"] > 0
    # the profile splits the default engine's time by what it computes; every part of the forward took some
    profile = big["profile"]
    assert profile["engine"] == "packed" and profile["rows"] == DRY.profile_rows_7b
    assert all(profile["parts"][p]["seconds"] > 0 for p in ("attention", "linear layers", "output layer"))
    assert sum(p["share"] for p in profile["parts"].values()) == pytest.approx(1.0, abs=0.05)
    assert scoring["profile_7b_largest_part"] == profile["largest_part"] and 0 < scoring["profile_7b_busy_share"] <= 1
    # and the packed engine under flex attention ran (its BlockMask path) on the first of the same rows
    flex = big["engines"]["packed_flex"]
    assert flex["engine"] == "packed" and flex["samples"] == DRY.flex_rows_7b and flex["flops"] > 0
    assert scoring["mfu_7b_flex"] == flex["mfu"] > 0 and scoring["flex_vs_sdpa_packed"] > 0


def test_dry_run_zero3_scores_selects_trains_and_resumes(dry_run):
    _, report = dry_run
    training, zero3 = report["training"], report["steps"]["train_zero3"]
    assert zero3["processes"] == 2  # scoring shared between ranks, ZeRO-3-partitioned student
    assert training["zero3_ok"] and zero3["scored_rows"] == dict.fromkeys(("ori", "Q", "A", "QA"), DRY.zero3_rows)
    assert training["zero3_selected_rows"] == DRY.zero3_rows  # every source row kept one variant
    assert set(zero3["selected_variants"]) <= {"ori", "Q", "A", "QA"}
    assert zero3["steps"] == DRY.zero3_steps and training["zero3_step_seconds"] > 0
    # the ZeRO-3 launch's statistics are one process's (fp32 on the CPU)
    assert training["zero3_scores_equal"] and training["zero3_scores_vs_one_process_max_rel"] < 1e-5
    # the run killed after its midway checkpoint resumes there, rescoring nothing, and ends where the
    # uninterrupted run ended: same losses and weights (fp32 on the CPU: exactly)
    assert training["resume_ok"]
    assert zero3["resumed_first_step"] == DRY.zero3_save + 1 and zero3["resumed_final_step"] == DRY.zero3_steps
    assert (
        zero3["resume_rescored_shards"] == 0 and training["resume_reused_score_shards"] == zero3["resume_score_shards"]
    )
    # 4 variants of 6 rows in shards of 2
    assert zero3["resume_score_shards"] == 4 * DRY.zero3_rows // DRY.zero3_shard_size
    assert zero3["resume_same_selection"]
    assert training["resume_loss_max_rel_diff"] < 1e-6 and training["resume_weights_max_abs_diff"] < 1e-6


def test_dry_run_adapters_and_eval(dry_run):
    _, report = dry_run
    training, steps = report["training"], report["steps"]
    for name in ("train_lora", "train_qlora"):
        assert steps[name]["steps"] == DRY.adapter_steps and steps[name]["final_loss"] > 0
    assert training["lora_ok"] and training["qlora_ok"] and training["lora_tokens_per_s"] > 0
    assert report["eval"]["ok"] and steps["eval"]["answers"] == DRY.eval_items
    assert steps["eval"]["generated_tokens"] > 0 and report["eval"]["tokens_per_s"] > 0


def test_dry_run_vllm_peer(dry_run):
    """Where vLLM is absent (here, and on the GPU machine unless it is carried) the peer step says why and takes no
    time; where it is installed it measures vLLM beside the scorer on the same rows."""
    _, report = dry_run
    peer = report["steps"]["scoring_vllm"]
    assert peer["ok"]
    if not VLLM_HERE:
        assert "vllm is not installed" in peer["skipped"] and peer["wall_seconds"] < 60
        assert report["peers"]["vllm_vs_scorer"] is None
    else:
        assert peer["rows"] == DRY.scorer_rows and report["peers"]["vllm_vs_scorer"] > 0
        assert report["peers"]["vllm_ifd_max_rel"] < 1e-3  # fp32 on the CPU


def test_report_keeps_what_a_stopped_step_measured():
    results = {
        "scoring_7b": {"ok": False, "error": "stopped at its time limit of 100 s", "mfu_7b": 0.41},
        "train_lora": {"ok": True, "steps": 3, "max_memory_gib": None, "max_memory_gib_reason": "CPU"},
    }
    report = build_report(results, dry=True, seconds=0.0, device={"kind": "cpu"})
    assert report["scoring"]["mfu_7b"] == 0.41
    assert report["scoring"]["mfu_7b_reason"].startswith("measured before step scoring_7b failed")
    assert report["scoring"]["tokens_per_s_7b"] is None and "time limit" in report["scoring"]["tokens_per_s_7b_reason"]
    assert (
        report["training"]["lora_max_memory_gib"] is None and report["training"]["lora_max_memory_gib_reason"] == "CPU"
    )
    assert report["training"]["zero3_ok"] is None and "did not run" in report["training"]["zero3_ok_reason"]
