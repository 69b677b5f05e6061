"""Several `--base_url` endpoints (replicas of one teacher): two real `transformers serve` processes with the
embedded model, one of them killed mid-run. Every row is answered, once, and the cache keys do not depend on the
replicas."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from srt_trainer.cli import main as srt
from srt_trainer.io import read_rows, write_rows
from srt_trainer.teachers import SamplingConfig, TeacherConfigError, complete_all
from srt_trainer.teachers.cache import load_cache_entries
from srt_trainer.teachers.openai_teacher import OpenAITeacher, Replica, Replicas
from tests.serving import Misbehaving, SlowTeacher, start_transformers_serve

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


def _replica_run(data: Path, out: Path, base_url: str, embedded_dir, *extra: str) -> list[str]:
    argv = ["reflect", "--mode", "response", "--data", str(data), "--output", str(out), "--teacher", "openai"]
    argv += ["--teacher_model", str(embedded_dir), "--base_url", base_url, "--teacher_max_tokens", "8"]
    return [*argv, "--max_reasks", "0", "--no_progress", *extra]


def test_a_replica_answering_html_rests_and_the_other_answers(short_rows, embedded_dir, teacher_server, tmp_path):
    """A gateway's HTML page with HTTP 200 is no answer: its replica rests like a failing one, and the real server
    answers every row, one request at a time."""
    data = tmp_path / "rows.jsonl"
    write_rows(short_rows[:4], data)
    bad = Misbehaving("html")
    try:
        argv = _replica_run(data, tmp_path / "a.jsonl", f"{bad.base_url},{teacher_server}", embedded_dir)
        assert srt([*argv, "--teacher_concurrency", "1"]) == 0
    finally:
        bad.close()
    rows = read_rows(tmp_path / "a.jsonl")
    assert [r["reflection_status"] != "failed" for r in rows] == [True] * 4
    assert bad.requests == 1  # the first request; then it rests, and the healthy replica is preferred while idle
    counts = json.loads((tmp_path / "a.summary.json").read_text())["counts"]
    assert counts["failed"] == 0 and counts["requests"] == 5


def test_a_replica_that_never_answers_gives_its_requests_to_the_other(embedded_dir, teacher_server, tmp_path, caplog):
    """A replica that accepts requests and never answers: its requests are taken back once it has kept them for a
    few times the healthy replica's answer time and does not answer a look at its models either; none waits for
    the request time-out."""
    hung = Misbehaving("hang")
    try:
        teacher = OpenAITeacher(
            str(embedded_dir), base_url=f"{hung.base_url},{teacher_server}", concurrency=2, timeout=600, stall_seconds=1
        )
        conversations = [[{"role": "user", "content": f"Say the number {i}."}] for i in range(4)]
        with caplog.at_level("INFO", logger="srt_trainer.teachers.openai_teacher"):
            results, counts = complete_all(
                teacher, conversations, SamplingConfig(max_tokens=4), tmp_path / "c.jsonl", progress=False
            )
    finally:
        hung.close()
    assert all(r.text is not None for r in results) and counts.failed == 0
    assert counts.timed_out == 0  # taken back, not waited for
    assert hung.requests >= 2 and "/v1/models" in hung.paths  # it got requests, and was looked at
    assert f"teacher replica {hung.base_url} failed (it kept" in caplog.text
    assert "requests taken back from hung replicas" in caplog.text
    assert len(load_cache_entries(tmp_path / "c.jsonl")) == 4


def test_base_url_has_one_spelling(capsys, tmp_path):
    """Spaces, a trailing slash or comma, and the host's case do not make another endpoint nor another cache key;
    a value that names no endpoint is refused instead of falling back to the provider's host with the key."""
    one = OpenAITeacher("m", base_url="http://127.0.0.1:8000/v1").identity()
    for spelling in (" http://127.0.0.1:8000/v1/ ", "http://127.0.0.1:8000/v1,", "HTTP://LOCALHOST:8000/v1"):
        same = OpenAITeacher("m", base_url=spelling).identity()
        assert same == one or (spelling.startswith("HTTP") and same["base_url"] == "http://localhost:8000/v1")
    with pytest.raises(TeacherConfigError, match="names the endpoint http://a/v1 twice"):
        OpenAITeacher("m", base_url="http://a/v1,http://a/v1/")
    data = tmp_path / "rows.jsonl"
    write_rows([{"instruction": "a", "input": "", "output": "b"}], data)
    for value, message in ((",", "names no endpoint"), (" , ", "names no endpoint"), ("localhost:8000", "not an")):
        argv = ["reflect", "--mode", "response", "--data", str(data), "--output", str(tmp_path / "a.jsonl")]
        assert srt([*argv, "--teacher", "openai", "--teacher_model", "m", "--base_url", value]) == 2
        assert f"--base_url {value!r} {message}" in capsys.readouterr().err or message == "not an"


def test_a_respelled_base_url_reuses_the_cache(short_rows, tmp_path):
    server = SlowTeacher(0.0, SlowTeacher.reflection_reply)
    data = tmp_path / "rows.jsonl"
    write_rows(short_rows[:3], data)
    try:
        for k, url in enumerate((server.base_url, f" {server.base_url}/ ,")):
            argv = _replica_run(data, tmp_path / f"a{k}.jsonl", url, "m", "--teacher_cache", str(tmp_path / "c.jsonl"))
            assert srt(argv) == 0
    finally:
        server.close()
    assert len(server.requests) == 3  # the second spelling asked nothing
    assert read_rows(tmp_path / "a0.jsonl") == read_rows(tmp_path / "a1.jsonl")
