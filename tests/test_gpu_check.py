"""The GPU check cannot rot between GPU runs: its dry run (every step on the CPU, tiny shapes, real rows) runs
here through the same shell script, and the 32k tokenizer it builds for Llama-shaped students is a real one."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import gpu_check  # noqa: E402

REQUIRED = {
    "scoring": ("loop_ratio", "mfu_7b", "spearman_fp32_bf16", "packed_vs_padded_fp32_max_rel"),
    "training": ("zero3_ok", "resume_ok", "lora_ok", "qlora_ok"),
    "eval": ("ok", "tokens_per_s"),
}


def test_truncated_tokenizer_is_a_real_32k_tokenizer(embedded_dir):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    cut = gpu_check.truncate_bpe(json.loads((embedded_dir / "tokenizer.json").read_text()), 32000)
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(cut)))
    assert len(tok) == 32000
    full = PreTrainedTokenizerFast(tokenizer_file=str(embedded_dir / "tokenizer.json"))
    for row in json.loads((REPO / "tests" / "data" / "cherry_alpaca_5_percent.json").read_text())[:20]:
        text = row["instruction"] + "\n" + row["output"]
        ids = tok(text)["input_ids"]
        assert max(ids) < 32000 and tok.decode(ids) == text
        assert len(full(text)["input_ids"]) <= len(ids)  # fewer merges: never more compact than the original


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory, embedded_dir):
    out = tmp_path_factory.mktemp("gpu_check")
    env = {k: v for k, v in os.environ.items() if k != "SRT_SHARED_DATA"}  # the dry run reads tests/data itself
    res = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out, res


def test_dry_run_writes_the_report_with_every_step_ok(dry_run):
    out, _ = dry_run
    report = json.loads((out / "gpu_report.json").read_text())
    assert report["device"] == "cpu" and report["dry_run"] is True
    assert report["versions"]["torch"] and report["versions"]["trl"] and report["versions"]["deepspeed"]
    failed = {name: r.get("error") for name, r in report["steps"].items() if not r["ok"]}
    assert not failed, failed
    assert set(report["steps"]) == set(gpu_check.STEPS)
    for section, keys in REQUIRED.items():
        for key in keys:
            assert key in report[section], (section, key)
            assert report[section][key] is not None or f"{key}_reason" in report[section], (section, key)
    assert "## training" in (out / "gpu_report.md").read_text()
    assert (out / "gpu_check_logs.tar.gz").stat().st_size > 0


def test_dry_run_numbers(dry_run):
    out, _ = dry_run
    report = json.loads((out / "gpu_report.json").read_text())
    scoring, training = report["scoring"], report["training"]
    assert math.isfinite(scoring["loop_ratio"]) and scoring["loop_ratio"] > 0
    assert 0 < scoring["mfu_7b"] < 1.5  # executed FLOPs over a measured matmul rate: a fraction, not nonsense
    assert scoring["spearman_fp32_bf16"] > 0.9  # the embedded weights are installed here
    if scoring["packed_vs_padded_fp32_max_rel"] is not None:
        assert scoring["packed_vs_padded_fp32_max_rel"] < 1e-4
    assert training["zero3_ok"] and training["lora_ok"] and training["qlora_ok"]
    # the resumed ZeRO-3 run repeats the uninterrupted one (fp32 on the CPU: exactly)
    zero3 = report["steps"]["train_zero3"]
    assert training["resume_ok"] and zero3["resumed_first_step"] == 4 and zero3["resumed_final_step"] == 4
    assert zero3["resume_loss_max_rel_diff"] < 1e-6 and zero3["resume_weights_max_abs_diff"] < 1e-6
    assert training["zero3_step_seconds"] > 0 and training["lora_tokens_per_s"] > 0
    assert report["eval"]["ok"] and report["eval"]["tokens_per_s"] > 0


def test_report_keeps_what_a_stopped_step_measured():
    results = {
        "scoring_7b": {"ok": False, "error": "stopped at its time limit of 100 s", "mfu_7b": 0.41},
        "train_lora": {"ok": True, "steps": 3, "max_memory_gib": None, "max_memory_gib_reason": "CPU"},
    }
    report = gpu_check.build_report(results, dry=True, started=0.0)
    assert report["scoring"]["mfu_7b"] == 0.41
    assert report["scoring"]["mfu_7b_reason"].startswith("measured before step scoring_7b failed")
    assert report["scoring"]["tokens_per_s_7b"] is None and "time limit" in report["scoring"]["tokens_per_s_7b_reason"]
    assert (
        report["training"]["lora_max_memory_gib"] is None and report["training"]["lora_max_memory_gib_reason"] == "CPU"
    )
    assert report["training"]["zero3_ok"] is None and "did not run" in report["training"]["zero3_ok_reason"]
