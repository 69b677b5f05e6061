"""Several `--base_url` endpoints (replicas of one teacher): two real `transformers serve` processes with the
embedded model, one of them killed mid-run. Every row is answered, once, and the cache keys do not depend on the
replicas."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from srt_trainer.cli import main as srt
from srt_trainer.io import read_rows, write_rows
from srt_trainer.teachers.cache import load_cache_entries
from srt_trainer.teachers.openai_teacher import OpenAITeacher, Replica, Replicas
from tests.serving import start_transformers_serve

ROWS = 10


def test_a_killed_replica_loses_no_row(short_rows, embedded_dir, teacher_server, tmp_path: Path, monkeypatch, caplog):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    data = tmp_path / "rows.jsonl"
    write_rows(short_rows[:ROWS], data)
    second = start_transformers_serve(embedded_dir, tmp_path / "second.log")
    out = tmp_path / "a.jsonl"
    cache = tmp_path / "a.teacher-cache.jsonl"

    answered_at_kill = []

    def kill_after_first_answers() -> None:  # the second replica dies once the run has answers in its cache
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and (not cache.exists() or len(cache.read_text().splitlines()) < 2):
            time.sleep(0.05)
        second.process.kill()  # SIGKILL: no goodbye to the requests in flight
        answered_at_kill.append(len(cache.read_text().splitlines()))

    killer = threading.Thread(target=kill_after_first_answers, daemon=True)
    killer.start()
    try:
        argv = ["reflect", "--mode", "response", "--data", str(data), "--output", str(out), "--teacher", "openai"]
        argv += ["--teacher_model", str(embedded_dir), "--base_url", f"{teacher_server},{second.base_url}"]
        argv += ["--teacher_max_tokens", "8", "--max_reasks", "0", "--no_progress", "--teacher_concurrency", "4"]
        with caplog.at_level("INFO", logger="srt_trainer.teachers.openai_teacher"):
            assert srt(argv) == 0
        killer.join(timeout=60)
    finally:
        second.stop()
    assert 2 <= answered_at_kill[0] < ROWS  # killed mid-run
    assert f"teacher replica {second.base_url} failed" in caplog.text  # its requests went to the other
    served = [m for m in caplog.messages if m.startswith("answers per replica")]
    assert served and f"{teacher_server} " in served[0]
    rows = read_rows(out)
    assert [r["source_index"] for r in rows] == list(range(ROWS))
    assert all(r["reflection_status"] != "failed" for r in rows)
    entries = load_cache_entries(cache)
    assert len(entries) == ROWS and len({e["key"] for e in entries}) == ROWS  # each row answered once
    summary = json.loads((tmp_path / "a.summary.json").read_text())["counts"]
    assert summary["asked"] == ROWS and summary["failed"] == 0
    # the cache keys do not name the replicas: the same run with the dead replica first sends nothing
    again = tmp_path / "again.jsonl"
    argv2 = list(argv)
    argv2[argv2.index("--base_url") + 1] = f"{second.base_url},{teacher_server}"
    argv2[argv2.index("--output") + 1] = str(again)
    assert srt([*argv2, "--teacher_cache", str(cache)]) == 0
    assert json.loads((tmp_path / "again.summary.json").read_text())["counts"]["asked"] == 0
    assert read_rows(again) == rows


def test_requests_go_to_the_least_loaded_replica_that_is_not_resting():
    a, b = Replica("http://a/v1", None), Replica("http://b/v1", None)
    replicas = Replicas([a, b])
    a.active = 2
    assert replicas.pick() is b
    replicas.failed(b, "connection error")
    assert replicas.pick() is a and b.rest_until > time.monotonic()
    replicas.failed(a, "HTTP 503")
    assert replicas.pick() is b  # both rest: the one whose rest ends first
    replicas.answered(b)
    assert b.failures == 0 and b.answered == 1


def test_the_cache_identity_names_no_replica():
    one = OpenAITeacher("m", base_url="http://a/v1").identity()
    two = OpenAITeacher("m", base_url="http://a/v1, http://b/v1").identity()
    three = OpenAITeacher("m", base_url="http://b/v1,http://c/v1,http://a/v1").identity()
    assert one["base_url"] == "http://a/v1" and "base_url" not in two and two == three
