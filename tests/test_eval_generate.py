"""`srt eval generate` end to end with the embedded model: output contract, AlpacaEval file, resuming a run
stopped between two shards, a LoRA adapter and its merged folder, and the vLLM engine's message where vllm is absent."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
from pathlib import Path

import pytest

from srt_trainer.cli import main as srt_main
from srt_trainer.io import read_rows
from tests.processes import interrupted_after_shards

PER_SET = 2
SETS = ("koala", "lima", "sinstruct", "vicuna", "wizardlm")


def _args(data_dir: Path, output: Path, *extra: str) -> list[str]:
    """Two items of each of the five sets, in shards of 4."""
    return [
        "eval",
        "generate",
        "--test_sets",
        str(data_dir / "eval"),
        "--limit",
        str(PER_SET),
        "--max_new_tokens",
        "8",
        "--shard_size",
        "4",
        "--output",
        str(output),
        *extra,
    ]


def _vicuna_args(data_dir: Path, output: Path, limit: int, *extra: str) -> list[str]:
    """The first vicuna questions (short prompts), one per shard: cheap runs for resume and adapter checks."""
    return [
        "eval",
        "generate",
        "--test_sets",
        str(data_dir / "eval" / "vicuna_test_set.jsonl"),
        "--limit",
        str(limit),
        "--max_new_tokens",
        "8",
        "--shard_size",
        "1",
        "--output",
        str(output),
        *extra,
    ]


def _run_here(args: list[str]) -> str:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert srt_main(args) == 0
    return stdout.getvalue()


@pytest.fixture(scope="module")
def base_run(data_dir, embedded_dir, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("gen") / "base.jsonl"
    return out, _run_here(_args(data_dir, out))


@pytest.fixture(scope="module")
def vicuna_run(data_dir, embedded_dir, tmp_path_factory) -> Path:
    """An uninterrupted run of 6 vicuna questions, one per shard (so each answer is generated alone)."""
    out = tmp_path_factory.mktemp("gen") / "vicuna.jsonl"
    _run_here(_vicuna_args(data_dir, out, 6))
    return out


def test_output_contract(base_run, data_dir, embedded_tokenizer):
    from srt_trainer.evaluation.test_sets import read_test_sets
    from srt_trainer.templates import get_template

    out, stdout = base_run
    rows = read_rows(out)
    items = [it for s in read_test_sets([data_dir / "eval"], limit=PER_SET) for it in s.items]
    assert [(r["test_set"], r["id"], r["instruction"], r["input"]) for r in rows] == [
        (it["test_set"], it["id"], it["instruction"], it["input"]) for it in items
    ]  # every item, in input order
    assert [r["test_set"] for r in rows] == [s for s in SETS for _ in range(PER_SET)]
    assert all(list(r) == ["id", "test_set", "instruction", "input", "output", "generator"] for r in rows)
    assert {r["generator"] for r in rows} == {"SmolLM2-135M-Instruct"}
    assert all(r["output"] and r["output"] == r["output"].strip() for r in rows)
    for r in rows:  # at most max_new_tokens tokens, and never the prompt echoed back
        assert len(embedded_tokenizer(r["output"], add_special_tokens=False)["input_ids"]) <= 8
        assert not r["output"].startswith("A chat between")
    sinstruct = [r for r in rows if r["test_set"] == "sinstruct"]
    assert all(r["input"] for r in sinstruct)  # Self-Instruct items carry an input; the prompt shows it
    assert "\nInput:\n" + sinstruct[0]["input"] in get_template("vicuna").prompt(
        sinstruct[0]["instruction"], sinstruct[0]["input"]
    )
    assert "template vicuna; first prompt:\nA chat between a curious user" in stdout

    alpaca = json.loads(out.with_name("base.alpaca_eval.json").read_text())
    assert [a["output"] for a in alpaca] == [r["output"] for r in rows]
    assert all(set(a) == {"instruction", "output", "generator", "dataset"} for a in alpaca)
    assert alpaca[4]["instruction"] == f"{sinstruct[0]['instruction']}\n\n{sinstruct[0]['input']}"
    summary = json.loads(out.with_name("base.summary.json").read_text())
    assert summary["per_test_set"] == dict.fromkeys(SETS, PER_SET) and summary["generated_now"] == len(rows)
    assert out.with_name("base.rejects.jsonl").read_text() == ""


def test_matches_plain_greedy_generate(base_run, embedded_model, embedded_tokenizer):
    """An answer equals transformers' own greedy decoding of its prompt, one at a time (no padding)."""
    import torch

    from srt_trainer.templates import get_template

    row = read_rows(base_run[0])[6]  # vicuna: a short prompt
    prompt = get_template("vicuna").prompt(row["instruction"], row["input"])
    ids = embedded_tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = embedded_model.generate(
            **ids, max_new_tokens=8, do_sample=False, pad_token_id=embedded_tokenizer.pad_token_id
        )
    expected = embedded_tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    assert row["output"] == expected


def test_stopped_run_resumes_to_identical_output(vicuna_run, data_dir, tmp_path, caplog, capsys):
    """Stopped dead after its second shard (as a kill between two shards would leave it), the same command resumes:
    the finished answers are read back, not generated again, and the output is byte for byte the uninterrupted one."""
    out = tmp_path / "vicuna.jsonl"
    shards = tmp_path / "vicuna.gen-shards"
    args = _vicuna_args(data_dir, out, 6)
    with interrupted_after_shards(2):
        _run_here(args)
    finished = {p.name: p.stat().st_mtime_ns for p in shards.glob("shard-*.jsonl")}
    assert len(finished) == 2 and not out.exists()
    with caplog.at_level(logging.INFO, logger="srt_trainer"):
        _run_here(args)
    assert f"resuming: {len(finished)} of 6 shards already generated" in caplog.text
    assert all(shards.joinpath(n).stat().st_mtime_ns == t for n, t in finished.items())  # not redone
    summary = json.loads(out.with_name("vicuna.summary.json").read_text())
    assert summary["generated_now"] == 6 - len(finished)
    assert out.read_bytes() == vicuna_run.read_bytes()

    capsys.readouterr()
    assert srt_main([*args, "--max_new_tokens", "6"]) == 2
    assert "holds shards of a run with different settings" in capsys.readouterr().err


@pytest.fixture(scope="module")
def lora_dirs(embedded_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A fresh LoRA on the embedded model, initialized non-zero so it changes the answers, and its merged folder."""
    import torch
    from peft import LoraConfig, get_peft_model

    from srt_trainer.models import load_student, load_tokenizer

    root = tmp_path_factory.mktemp("lora")
    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(load_student(embedded_dir, device="cpu"), config)
    model.save_pretrained(root / "lora")
    merged = model.merge_and_unload()
    merged.save_pretrained(root / "merged")
    load_tokenizer(embedded_dir).save_pretrained(root / "merged")
    return root / "lora", root / "merged"


def test_adapter_and_merged_model(vicuna_run, lora_dirs, data_dir, tmp_path):
    lora, merged = lora_dirs
    _run_here(_vicuna_args(data_dir, tmp_path / "lora.jsonl", 3, "--adapter", str(lora)))
    _run_here(_vicuna_args(data_dir, tmp_path / "merged.jsonl", 3, "--model", str(merged)))
    with_adapter, from_merged = read_rows(tmp_path / "lora.jsonl"), read_rows(tmp_path / "merged.jsonl")
    base = read_rows(vicuna_run)[:3]
    assert {r["generator"] for r in with_adapter} == {"SmolLM2-135M-Instruct+lora"}
    assert {r["generator"] for r in from_merged} == {"merged"}
    assert [r["id"] for r in with_adapter] == [r["id"] for r in from_merged] == [r["id"] for r in base]
    # the adapter is applied: its answers differ from the base model's; merging it into the weights changes nothing
    assert sum(a["output"] != b["output"] for a, b in zip(with_adapter, base, strict=True)) >= 2
    assert [r["output"] for r in from_merged] == [r["output"] for r in with_adapter]


def test_vllm_engine_without_vllm_says_what_to_install(data_dir, tmp_path, capsys):
    """vllm is not part of this environment (it needs a GPU): asking for it explains what to do."""
    assert srt_main([*_vicuna_args(data_dir, tmp_path / "v.jsonl", 1), "--engine", "vllm"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"^srt eval generate: --engine vllm needs the vllm package.*or use --engine transformers", err)
