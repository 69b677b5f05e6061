"""The report: headline numbers by section (each ``null`` with a ``*_reason`` beside it when missing), every step's
full result, as JSON (``gpu_report.json``) and markdown (``gpu_report.md``), with the logs in a tarball."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

VERSIONED = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed", "bitsandbytes", "pyarrow")

# section → headline key → (step, key in that step's result)
HEADLINE: Mapping[str, Mapping[str, tuple[str, str]]] = MappingProxyType(
    {
        "scoring": {
            "loop_ratio": ("scoring_small", "loop_ratio"),
            "default_engine": ("scoring_small", "default_engine"),
            "packed_vs_padded_fp32_max_rel": ("scoring_small", "packed_vs_padded_fp32_max_rel"),
            "spearman_fp32_bf16": ("scoring_small", "spearman_fp32_bf16"),
            "mfu_7b": ("scoring_7b", "mfu_7b"),
            "mfu_7b_flex": ("scoring_7b", "mfu_7b_flex"),
            "flex_vs_sdpa_packed": ("scoring_7b", "flex_vs_sdpa_packed"),
            "profile_7b_largest_part": ("scoring_7b", "largest_part"),
            "profile_7b_busy_share": ("scoring_7b", "busy_share"),
            "tokens_per_s_7b": ("scoring_7b", "tokens_per_s"),
            "peak_memory_gib_7b": ("scoring_7b", "peak_memory_gib"),
            "matmul_peak_tflops": ("scoring_7b", "matmul_peak_tflops"),
        },
        "training": {
            "zero3_ok": ("train_zero3", "zero3_ok"),
            "zero3_selected_rows": ("train_zero3", "selected_rows"),
            "zero3_scores_equal": ("train_zero3", "scores_equal"),
            "zero3_scores_vs_one_process_max_rel": ("train_zero3", "scores_vs_one_process_max_rel"),
            "resume_ok": ("train_zero3", "resume_ok"),
            "resume_reused_score_shards": ("train_zero3", "resume_reused_score_shards"),
            "resume_loss_max_rel_diff": ("train_zero3", "resume_loss_max_rel_diff"),
            "resume_weights_max_abs_diff": ("train_zero3", "resume_weights_max_abs_diff"),
            "zero3_step_seconds": ("train_zero3", "step_seconds"),
            "zero3_tokens_per_s": ("train_zero3", "tokens_per_s"),
            "zero3_max_memory_gib": ("train_zero3", "max_memory_gib"),
            "lora_ok": ("train_lora", "ok"),
            "lora_step_seconds": ("train_lora", "step_seconds"),
            "lora_tokens_per_s": ("train_lora", "tokens_per_s"),
            "lora_max_memory_gib": ("train_lora", "max_memory_gib"),
            "qlora_ok": ("train_qlora", "ok"),
            "qlora_step_seconds": ("train_qlora", "step_seconds"),
            "qlora_tokens_per_s": ("train_qlora", "tokens_per_s"),
            "qlora_max_memory_gib": ("train_qlora", "max_memory_gib"),
        },
        "eval": {"ok": ("eval", "ok"), "tokens_per_s": ("eval", "tokens_per_s")},
        "peers": {
            "vllm_vs_scorer": ("scoring_vllm", "vllm_vs_scorer"),
            "vllm_ifd_max_rel": ("scoring_vllm", "vllm_ifd_max_rel"),
        },
    }
)


def versions() -> dict[str, str | None]:
    """Python's version and those of the packages the check runs on (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def device_info() -> dict[str, Any]:
    """The machine, read without creating a CUDA context in the driver (it would hold memory all along)."""
    if shutil.which("nvidia-smi"):
        query = "name,memory.total,driver_version"
        res = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if res.returncode == 0 and res.stdout.strip():
            name, memory, driver = (x.strip() for x in res.stdout.splitlines()[0].split(","))
            return {"kind": "cuda", "name": name, "memory_gib": float(memory) / 1024, "driver": driver}
    return {"kind": "cpu", "name": platform.processor() or platform.machine(), "cores": os.cpu_count()}


def _value(results: Mapping[str, dict[str, Any]], step: str, key: str) -> tuple[Any, str | None]:
    """A number from a step's result, or None with the reason it is missing (a number measured before the step
    failed is kept, with the failure beside it)."""
    r = results.get(step)
    if r is None:
        return None, f"step {step} did not run (not asked for, or the check's deadline passed)"
    failure = None if r.get("ok") else f"step {step} failed: {r.get('error', '?').splitlines()[0][:300]}"
    if r.get(key) is None:
        return None, failure or r.get(f"{key}_reason", f"step {step} gave no {key}")
    return r[key], failure and f"measured before {failure}"


def build_report(
    results: Mapping[str, dict[str, Any]],
    dry: bool,
    seconds: float,
    device: Mapping[str, Any],
    sizes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report of ``results`` (step → result) after ``seconds`` of the check on ``device``."""
    report: dict[str, Any] = {
        "device": "cpu" if dry else device.get("name"),
        "device_info": dict(device),
        "dry_run": dry,
        "versions": versions(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "seconds": seconds,
        "sizes": sizes,
    }
    for section, keys in HEADLINE.items():
        report[section] = {}
        for key, (step, path) in keys.items():
            value, reason = _value(results, step, path)
            report[section][key] = value
            if reason:
                report[section][f"{key}_reason"] = reason
    report["steps"] = dict(results)
    return report


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown(report: Mapping[str, Any]) -> str:
    """The report for people: one table per section, then each step's time and status."""
    lines = [
        f"# GPU check: {report['device']}",
        "",
        f"{report['date']}, {report['seconds']:.0f} s, dry run: {str(report['dry_run']).lower()}",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        "",
    ]
    for section in HEADLINE:
        lines += [f"## {section}", "", "| measure | value | note |", "| --- | --- | --- |"]
        for key, value in report[section].items():
            if not key.endswith("_reason"):
                lines.append(f"| {key} | {_fmt(value)} | {report[section].get(key + '_reason', '')} |")
        lines.append("")
    lines += [
        "## steps",
        "",
        "| step | ok | seconds | limit | peak memory GiB (sampled) | error |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in report["steps"].items():
        error = (r.get("error") or "").splitlines()[0][:200] if r.get("error") else ""
        lines.append(
            f"| {name} | {_fmt(r.get('ok'))} | {r.get('wall_seconds', 0):.0f} | {_fmt(r.get('limit_seconds'))} | "
            f"{r.get('peak_memory_gib_sampled', 0):.1f} | {error} |"
        )
    return "\n".join(lines) + "\n"


def write_report(report: Mapping[str, Any], out: Path, work: Path) -> None:
    """``gpu_report.json``, ``gpu_report.md`` and ``gpu_check_logs.tar.gz`` (logs and step results) in ``out``."""
    (out / "gpu_report.json").write_text(json.dumps(report, indent=2, default=float))
    (out / "gpu_report.md").write_text(markdown(report))
    with tarfile.open(out / "gpu_check_logs.tar.gz", "w:gz") as tar:
        tar.add(work / "logs", arcname="logs")
        tar.add(work / "results", arcname="results")
