"""`srt reflect` as users run it, in this process (the console script is test_cli's): against the real server,
stopped dead after a few answers and resumed, with the API key kept out of every file and every line it printed;
the offline local teacher; and the clear refusal of a teacher that is absent."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path

from srt_trainer.cli import main as srt_main
from srt_trainer.io import read_rows
from srt_trainer.reflection import inspect_instruction_reflection
from srt_trainer.teachers import ResponseCache, load_cache_entries
from tests.processes import interrupted_after
from tests.serving import FaultProxy


def _data_file(alpaca_rows: list[dict], path: Path, start: int, n: int, broken_at: int | None = None) -> Path:
    lines = [json.dumps(r) for r in alpaca_rows[start : start + n]]
    if broken_at is not None:
        lines.insert(broken_at, '{"instruction": "a row cut short", "outp')
    path.write_text("\n".join(lines) + "\n")
    return path


def test_stopped_run_resumes_without_asking_again_and_never_writes_the_key(
    teacher_server, embedded_dir, alpaca_rows, tmp_path, monkeypatch, capsys, caplog
):
    secret = f"sk-test-{os.urandom(8).hex()}"
    data = _data_file(alpaca_rows, tmp_path / "rows.jsonl", 80, 6, broken_at=2)
    out, cache = tmp_path / "out" / "q.jsonl", tmp_path / "out" / "q.teacher-cache.jsonl"
    port = int(teacher_server.rsplit(":", 1)[1].split("/")[0])
    with FaultProxy(port) as proxy:
        # hyphenated and underscored flags alike
        cmd = [
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
            "--teacher-max-tokens",
            "12",
            "--teacher-concurrency",
            "1",
            "--max_reasks",
            "1",
            "--no_progress",
        ]
        monkeypatch.setenv("OPENAI_API_KEY", secret)
        caplog.set_level(logging.INFO)  # what the command logs (at its INFO level) is checked for the key too
        logs = []

        def run() -> int:
            code = srt_main(cmd)
            captured = capsys.readouterr()
            logs.append(captured.out + captured.err)
            return code

        with interrupted_after(ResponseCache, "put", 3, "answers"):  # a request in flight is lost
            run()
        first = {e["key"] for e in load_cache_entries(cache)}
        sent_first = sum(proxy.counts().values())
        assert len(first) == 3 and not out.exists()

        assert run() == 0
        summary = json.loads((tmp_path / "out" / "q.summary.json").read_text())
        assert summary["counts"]["cached"] >= len(first)
        # every request is identified by its prompt and sampling: none answered before the kill was sent again
        # (with one request in flight, at most one was sent twice: the one the kill interrupted)
        sent = Counter((k, h.temperature) for k, hits in proxy.hits.items() for h in hits)
        assert sum(c - 1 for c in sent.values()) <= 1
        assert sum(sent.values()) == sent_first + summary["counts"]["requests"]

        rows, raw = read_rows(out), read_rows(tmp_path / "out" / "q.raw.jsonl")
        rejects = read_rows(tmp_path / "out" / "q.rejects.jsonl")
        assert [r["row"] for r in rejects] == [2] and "invalid JSON" in rejects[0]["reason"]
        assert [r["source_index"] for r in rows] == [0, 1, 3, 4, 5, 6]
        texts = {e["text"] for e in load_cache_entries(cache)}
        for row, rec in zip(rows, raw, strict=True):  # the output is a function of the cached answers alone
            assert set(rec["texts"]) <= texts and row["reflection_status"] in ("ok", "fallback")
            # a reply with any usable part is used, the other part staying original (as released)
            fields = inspect_instruction_reflection(rec["texts"][-1])
            usable = fields.instruction is not None or fields.output is not None
            assert row["reflection_status"] == ("ok" if usable else "fallback")
        assert summary["ok"] + summary["fallback"] == 6 and summary["failed"] == 0 and summary["rejected_rows"] == 1

        # the same command once more: nothing sent, the same bytes
        before = out.read_bytes()
        assert run() == 0 and sum(proxy.counts().values()) == sum(sent.values())
        assert "asked 0" in logs[-1] and out.read_bytes() == before
        assert proxy.authorizations == {f"Bearer {secret}"}

    leaks = [str(p) for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaks == [] and not any(secret in log for log in [*logs, caplog.text])


def test_offline_local_teacher(alpaca_rows, embedded_dir, tmp_path, capsys):
    import torch

    data = _data_file(alpaca_rows, tmp_path / "rows.jsonl", 120, 2)
    out = tmp_path / "a.parquet"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a few tokens gain little from a second thread (what OMP_NUM_THREADS=1 did for a process)
    try:
        code = srt_main(
            [
                "reflect",
                "--mode",
                "response",
                "--data",
                str(data),
                "--output",
                str(out),
                "--teacher",
                "transformers",
                "--teacher-max-tokens",
                "8",
                "--max-reasks",
                "0",
                "--teacher-batch-size",
                "2",
            ]
        )
    finally:
        torch.set_num_threads(threads)
    assert code == 0
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
    assert "rows reflected (variant A)" in capsys.readouterr().out


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


def test_a_local_teacher_is_refused_for_a_zero3_partitioned_student():
    """Reflection runs on the main process alone, which holds a slice of a ZeRO-3 student: `srt run` and `srt ablate`
    refuse a local teacher there, and take an endpoint."""
    import pytest
    import torch

    from srt_trainer.reflection.variants import TeacherPlacementError, check_teacher_placement
    from srt_trainer.teachers import TeacherArguments

    model = torch.nn.Linear(2, 2)
    local, endpoint = TeacherArguments(teacher="transformers"), TeacherArguments(teacher="openai", teacher_model="t")
    check_teacher_placement(local, model, "use an endpoint")  # a whole student teaches itself
    model.weight.ds_id = 0  # how DeepSpeed marks a partitioned parameter
    with pytest.raises(TeacherPlacementError, match=r"'transformers': under DeepSpeed ZeRO-3.*; use an endpoint$"):
        check_teacher_placement(local, model, "use an endpoint")
    check_teacher_placement(endpoint, model, "use an endpoint")
