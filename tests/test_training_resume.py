"""A training run killed after a checkpoint resumes from it and ends where an uninterrupted run ends."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from srt_trainer.io import write_rows
from tests.processes import kill_when

BIN = Path(sys.executable).parent
STEPS = 6


def _command(data: Path, out: Path) -> list[str]:
    # CPU fp32, seeded, full determinism, no dataloader workers: the resumed run replays the same batches
    # (the trainer skips the ones already seen), the same dropout masks (RNG states are in the checkpoint)
    # and the same optimizer moments, so it must match the uninterrupted run to float rounding.
    return [
        str(BIN / "srt"),
        "train",
        "--dataset",
        str(data),
        "--output_dir",
        str(out),
        "--use_peft",
        "--lora_r",
        "4",
        "--lora_target_modules",
        "q_proj",
        "v_proj",
        "--max_steps",
        str(STEPS),
        "--save_steps",
        "1",
        "--per_device_train_batch_size",
        "2",
        "--global_batch_size",
        "2",
        "--max_length",
        "96",
        "--learning_rate",
        "1e-3",
        "--warmup_steps",
        "0",
        "--report_to",
        "none",
        "--gradient_checkpointing",
        "false",
        "--seed",
        "0",
        "--full_determinism",
        "--dataloader_num_workers",
        "0",
        "--logging_steps",
        "1",
        "--resume_from_checkpoint",
        "auto",
    ]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res


def _losses(out: Path) -> dict[int, float]:
    state = json.loads((out / "trainer_state.json").read_text())
    return {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}


def test_killed_training_resumes_to_the_uninterrupted_result(alpaca_rows, embedded_dir, tmp_path):
    data = write_rows([r for r in alpaca_rows if len(r["output"]) < 300][:12], tmp_path / "selected.jsonl")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _run(_command(data, straight))

    kill_when(_command(data, killed), (killed / "checkpoint-2" / "trainer_state.json").is_file, timeout=600)
    assert not (killed / "adapter_model.safetensors").exists()  # it did not finish
    assert not (killed / f"checkpoint-{STEPS}").exists()

    res = _run(_command(data, killed))  # the same command: it finds its last complete checkpoint
    log = res.stdout + res.stderr
    assert "resuming from" in log and "checkpoint-" in log

    want = load_file(straight / "adapter_model.safetensors")
    got = load_file(killed / "adapter_model.safetensors")
    assert want.keys() == got.keys() and len(want) == 2 * 2 * 30  # q_proj and v_proj, A and B, 30 layers
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-7)
    assert any(v.abs().max() > 0 for k, v in want.items() if "lora_B" in k)  # training moved B off its zero init
    # the steps after the resume logged the same losses as the uninterrupted run
    straight_losses, killed_losses = _losses(straight), _losses(killed)
    assert set(killed_losses) >= {STEPS - 1, STEPS}
    for step, loss in killed_losses.items():
        assert loss == straight_losses[step], step
