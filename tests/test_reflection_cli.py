"""`srt reflect` as users run it: a real subprocess against the real server, killed mid-run and resumed, with the
API key kept out of every file; the offline local teacher; and the clear refusal of a teacher that is absent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from srt_trainer.cli import main as srt_main
from srt_trainer.io import read_rows
from srt_trainer.reflection import parse_instruction_reflection
from srt_trainer.teachers import load_cache_entries
from tests.processes import kill_when
from tests.serving import FaultProxy

SRT = str(Path(sys.executable).parent / "srt")


def _data_file(alpaca_rows: list[dict], path: Path, start: int, n: int, broken_at: int | None = None) -> Path:
    lines = [json.dumps(r) for r in alpaca_rows[start : start + n]]
    if broken_at is not None:
        lines.insert(broken_at, '{"instruction": "a row cut short", "outp')
    path.write_text("\n".join(lines) + "\n")
    return path


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **extra}


def test_killed_run_resumes_without_asking_again_and_never_writes_the_key(
    teacher_server, embedded_dir, alpaca_rows, tmp_path
):
    secret = f"sk-test-{os.urandom(8).hex()}"
    data = _data_file(alpaca_rows, tmp_path / "rows.jsonl", 80, 6, broken_at=2)
    out, cache = tmp_path / "out" / "q.jsonl", tmp_path / "out" / "q.teacher-cache.jsonl"
    port = int(teacher_server.rsplit(":", 1)[1].split("/")[0])
    with FaultProxy(port) as proxy:
        # hyphenated and underscored flags alike
        cmd = [
            SRT,
            "reflect",
            "--mode",
            "instruction",
            "--data",
            str(data),
            "--output",
            str(out),
            "--teacher",
            "openai",
            "--teacher-model",
            str(embedded_dir),
            "--base-url",
            proxy.base_url,
            "--max-tokens",
            "12",
            "--concurrency",
            "1",
            "--max_reasks",
            "1",
            "--no_progress",
        ]
        env = _env(OPENAI_API_KEY=secret)
        logs = []
        logs.append(
            kill_when(cmd, lambda: cache.exists() and len(load_cache_entries(cache)) >= 3, timeout=240, env=env)
        )
        first = {e["key"] for e in load_cache_entries(cache)}
        sent_first = sum(proxy.counts().values())
        assert 3 <= len(first) < 12 and not out.exists()

        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        logs.append(res.stdout + res.stderr)
        assert res.returncode == 0, logs[-1][-3000:]
        summary = json.loads((tmp_path / "out" / "q.summary.json").read_text())
        assert summary["counts"]["cached"] >= len(first)
        # every request is identified by its prompt and sampling: none answered before the kill was sent again
        # (with one request in flight, at most one was sent twice: the one the kill interrupted)
        sent = Counter((k, h.temperature) for k, hits in proxy.hits.items() for h in hits)
        assert sum(c - 1 for c in sent.values()) <= 1
        assert sum(sent.values()) == sent_first + summary["counts"]["requests"]

        rows, raw = read_rows(out), read_rows(tmp_path / "out" / "q.raw.jsonl")
        rejects = [json.loads(x) for x in (tmp_path / "out" / "q.rejects.jsonl").read_text().splitlines()]
        assert [r["row"] for r in rejects] == [2] and "invalid JSON" in rejects[0]["reason"]
        assert [r["source_index"] for r in rows] == [0, 1, 3, 4, 5, 6]
        texts = {e["text"] for e in load_cache_entries(cache)}
        for row, rec in zip(rows, raw, strict=True):  # the output is a function of the cached answers alone
            assert set(rec["texts"]) <= texts and row["reflection_status"] in ("ok", "fallback")
            parsed = parse_instruction_reflection(rec["texts"][-1])
            assert row["reflection_status"] == ("ok" if parsed else "fallback")
        assert summary["ok"] + summary["fallback"] == 6 and summary["failed"] == 0 and summary["rejected_rows"] == 1

        # the same command once more: nothing sent, the same bytes
        before = out.read_bytes()
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        logs.append(res.stdout + res.stderr)
        assert res.returncode == 0 and sum(proxy.counts().values()) == sum(sent.values())
        assert "asked 0" in res.stdout and out.read_bytes() == before
        assert proxy.authorizations == {f"Bearer {secret}"}

    leaks = [str(p) for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaks == [] and not any(secret in log for log in logs)


def test_offline_local_teacher(alpaca_rows, embedded_dir, tmp_path):
    data = _data_file(alpaca_rows, tmp_path / "rows.jsonl", 120, 2)
    out = tmp_path / "a.parquet"
    res = subprocess.run(
        [
            SRT,
            "reflect",
            "--mode",
            "response",
            "--data",
            str(data),
            "--output",
            str(out),
            "--teacher",
            "transformers",
            "--max-tokens",
            "8",
            "--max-reasks",
            "0",
            "--batch-size",
            "2",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rows = read_rows(out)
    assert [r["variant"] for r in rows] == ["A", "A"] and [r["source_index"] for r in rows] == [0, 1]
    assert all(r["teacher"] == "transformers" and r["teacher_model"] == "embedded" for r in rows)
    assert [r["instruction"] for r in rows] == [r["instruction"] for r in alpaca_rows[120:122]]
    raw = read_rows(tmp_path / "a.raw.jsonl")
    for row, rec in zip(rows, raw, strict=True):  # prefilled with [Better Answer]: the continuation is the answer
        assert rec["prefix"] == "[Better Answer]"
        if row["reflection_status"] == "ok":
            assert row["output"] and row["output"] in rec["prefix"] + rec["texts"][0]
    summary = json.loads((tmp_path / "a.summary.json").read_text())
    assert summary["counts"]["asked"] == 2 and summary["teacher"] == {
        "teacher": "transformers",
        "model": "embedded",
        "dtype": "float32",
    }
    assert "rows reflected (variant A)" in res.stdout


def test_missing_vllm_is_a_clear_error(alpaca_rows, tmp_path, capsys):
    data = _data_file(alpaca_rows, tmp_path / "rows.jsonl", 0, 1)
    code = srt_main(
        [
            "reflect",
            "--mode",
            "response",
            "--data",
            str(data),
            "--output",
            str(tmp_path / "o.jsonl"),
            "--teacher",
            "vllm",
        ]
    )
    assert code == 2 and "pip install 'srt-trainer[vllm]'" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
