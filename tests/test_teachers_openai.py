"""The OpenAI-compatible teacher against a real ``transformers serve`` (the embedded model), directly and through a
proxy that injects 429 + Retry-After, 500, stalls, dropped connections and truncated JSON."""

from __future__ import annotations

import email.utils
import json
import os
import shutil
import subprocess
import threading
import time

import pytest

from srt_trainer.cli import main as srt
from srt_trainer.io import read_rows, write_rows
from srt_trainer.reflection import load_prompt, parse_instruction_reflection, parse_response_reflection, reflect
from srt_trainer.teachers import (
    SamplingConfig,
    TeacherArguments,
    TeacherError,
    build_teacher,
    complete_all,
    load_cache_entries,
)
from tests.serving import FaultPlan, FaultProxy, SlowTeacher, prompt_hash

TIMEOUT = 8.0  # per request; a real answer of a few tokens takes about a second here


def _port(base_url: str) -> int:
    return int(base_url.rsplit(":", 1)[1].split("/")[0])


def _files_containing(root, secret: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_retry_after_forms():
    """The teacher leaves Retry-After to the openai client: every form it honours is read there."""
    import httpx2
    import openai

    parse = openai.AsyncOpenAI(api_key="EMPTY", base_url="http://127.0.0.1:9/v1")._parse_retry_after_header

    def retry_after_seconds(headers: dict) -> float | None:
        return parse(httpx2.Headers(headers))

    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < retry_after_seconds({"retry-after": later}) <= 30
    assert retry_after_seconds({"retry-after": "soon"}) is None and retry_after_seconds({}) is None


def test_faults_are_retried_counted_and_nothing_is_lost(
    teacher_server, embedded_dir, alpaca_rows, tmp_path, monkeypatch
):
    secret = f"sk-test-{time.time_ns()}"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    rows = [dict(alpaca_rows[i], row_index=i) for i in range(40, 47)]
    prompt = load_prompt("response")
    keys = [prompt_hash(prompt.messages(r["instruction"], r["input"], r["output"])) for r in rows]
    schedule = [["429", "500"], ["stall"], ["drop", "badjson"], ["badjson"], ["500", "drop", "429"], [], ["500"] * 9]
    plan = FaultPlan(forced=dict(zip(keys, schedule, strict=True)), retry_after="1", stall_seconds=TIMEOUT + 1)
    cache = tmp_path / "cache.jsonl"
    with FaultProxy(_port(teacher_server), plan) as proxy:
        teacher = build_teacher(
            "openai",
            model=str(embedded_dir),
            base_url=proxy.base_url,
            concurrency=2,
            timeout=TIMEOUT,
            max_retries=3,
        )
        assert secret not in repr(teacher)
        result = reflect(
            rows,
            "response",
            teacher,
            TeacherArguments(teacher_max_tokens=8, max_reasks=0),
            cache_path=cache,
            progress=False,
        )
        sent = proxy.counts()
        hits = {k: list(v) for k, v in proxy.hits.items()}

        # every row is in the output, in order, with a status; the one the server always refused failed
        assert [r["source_index"] for r in result.rows] == list(range(40, 47))
        assert [r["reflection_status"] for r in result.rows][:6] == [
            "ok" if parse_response_reflection(raw["texts"][-1]) else "fallback" for raw in result.raw[:6]
        ]
        failed = result.rows[6]
        assert failed["reflection_status"] == "failed" and failed["output"] == rows[6]["output"]
        assert "HTTP 500" in failed["reflection_error"] and "after 4 attempts" in failed["reflection_error"]
        assert result.counts.failed == 1 and result.statuses["failed"] == 1

        for k, raw, faults in zip(keys, result.raw, schedule, strict=True):
            outcomes = [h.outcome for h in hits[k]]
            assert sent[k] == raw["attempts"] <= 4  # the client's accounting is exact; never past 1 + retries
            assert outcomes[: len(faults)] == faults[: len(outcomes)]
            if raw["reflection_status"] != "failed":
                assert outcomes[-1] == "ok" and raw["texts"]
            for before, after in zip(hits[k], hits[k][1:], strict=False):
                if before.outcome == "429":  # Retry-After: 1 honoured
                    assert after.time - before.time >= 1.0
                if before.outcome == "stall":  # the client gave up at its time-out, then asked again
                    assert after.time - before.time >= TIMEOUT - 0.5
        assert result.counts.requests == sum(sent.values())
        assert result.counts.retried == sum(sent.values()) - 7
        assert result.counts.prompt_tokens > 6 * 200  # the real server's usage, summed over the answered rows

        # answered rows are cached; a rerun asks only for the failed one
        assert len(load_cache_entries(cache)) == 6
        again = reflect(
            rows,
            "response",
            teacher,
            TeacherArguments(teacher_max_tokens=8, max_reasks=0),
            cache_path=cache,
            progress=False,
        )
        after = proxy.counts()
        assert {k: after[k] - sent[k] for k in keys} == {**dict.fromkeys(keys[:6], 0), keys[6]: 4}
        assert [r["output"] for r in again.rows] == [r["output"] for r in result.rows]
        assert again.counts.cached == 6 and again.counts.asked == 1
        assert proxy.authorizations == {f"Bearer {secret}"}  # the key from the environment was used ...
    assert _files_containing(tmp_path, secret) == []  # ... and never written


def test_a_misconfigured_endpoint_stops_the_run(teacher_server, tmp_path):
    teacher = build_teacher("openai", model="not-the-served-model", base_url=teacher_server, max_retries=0)
    conversations = [[{"role": "user", "content": f"Say {i}."}] for i in range(5)]
    with pytest.raises(TeacherError, match=r"refused 5 requests in a row.*pinned"):
        complete_all(teacher, conversations, SamplingConfig(max_tokens=4), tmp_path / "c.jsonl", progress=False)


def test_reflection_end_to_end_with_the_real_server(teacher_server, embedded_dir, alpaca_rows, tmp_path):
    rows = [dict(alpaca_rows[i], row_index=i) for i in range(60, 63)]
    asking = TeacherArguments(teacher_max_tokens=12)
    with FaultProxy(_port(teacher_server)) as proxy:  # no faults: it only counts
        teacher = build_teacher("openai", model=str(embedded_dir), base_url=proxy.base_url, concurrency=4)
        q = reflect(rows, "instruction", teacher, asking, cache_path=tmp_path / "q.cache.jsonl", progress=False)
        # (transformers serve keeps this model's greedy generation config whatever the temperature, so its re-asks
        # repeat the answer: one mode of re-asks is enough here)
        qa = reflect(
            q.rows,
            "response",
            teacher,
            TeacherArguments(teacher_max_tokens=12, max_reasks=0),
            cache_path=tmp_path / "qa.cache.jsonl",
            progress=False,
        )
        sent = sum(proxy.counts().values())
        assert sent == q.counts.requests + qa.counts.requests == q.counts.asked + qa.counts.asked
        assert q.counts.cut >= 1  # 12 tokens do not hold a rewritten instruction: the server says "length"
        assert all(h.temperature in (0.0, 0.7) for hits in proxy.hits.values() for h in hits)
        reasks = sum(h.temperature == 0.7 for hits in proxy.hits.values() for h in hits)
        assert reasks == q.counts.reasked + qa.counts.reasked  # a greedy request is re-asked with sampling on

        assert (q.variant, qa.variant) == ("Q", "QA")
        for src, out, raw in zip(rows, q.rows, q.raw, strict=True):
            assert raw["prefix"] == ""  # API teachers are not prefilled unless asked
            parsed = parse_instruction_reflection(raw["texts"][-1])
            if parsed:
                assert out["reflection_status"] == "ok" and out["instruction"] == parsed.instruction
            else:
                assert out["reflection_status"] == "fallback" and out["instruction"] == src["instruction"]
                assert raw["reasks"] == 1 and len(raw["texts"]) == 2
        for q_row, out in zip(q.rows, qa.rows, strict=True):
            assert out["source_index"] == q_row["source_index"] and out["reflection_status"] in ("ok", "fallback")
            assert out["teacher"] == "openai" and out["teacher_model"] == str(embedded_dir)
        assert q.counts.completion_tokens > 0 and qa.counts.prompt_tokens > 3 * 200

        # the same settings again: zero requests
        again = reflect(
            q.rows,
            "response",
            teacher,
            TeacherArguments(teacher_max_tokens=12, max_reasks=0),
            cache_path=tmp_path / "qa.cache.jsonl",
            progress=False,
        )
        assert sum(proxy.counts().values()) == sent and again.counts.asked == 0 and again.rows == qa.rows


def _reflect_argv(data, out, base_url: str, *extra: str) -> list[str]:
    argv = ["reflect", "--mode", "response", "--data", str(data), "--output", str(out), "--teacher", "openai"]
    return [*argv, "--teacher_model", "m", "--base_url", base_url, "--no_progress", "--max_reasks", "0", *extra]


def test_two_runs_sharing_a_cache_pay_once(short_rows, tmp_path, caplog):
    """The second run on a teacher cache in use waits for the first, then takes its answers: each prompt is paid
    for once, and both outputs are the same."""
    server = SlowTeacher(0.2, SlowTeacher.reflection_reply)
    data = tmp_path / "rows.jsonl"
    write_rows(short_rows[:6], data)
    cache = tmp_path / "shared.teacher-cache.jsonl"
    extra = ("--teacher_cache", str(cache), "--teacher_concurrency", "1")
    codes: list[int] = []
    first = threading.Thread(
        target=lambda: codes.append(srt(_reflect_argv(data, tmp_path / "a.jsonl", server.base_url, *extra)))
    )
    try:
        first.start()
        while not (cache.is_file() and cache.read_text()) and first.is_alive():  # the first run holds the cache
            time.sleep(0.02)
        with caplog.at_level("INFO", logger="srt_trainer.teachers.cache"):
            assert srt(_reflect_argv(data, tmp_path / "b.jsonl", server.base_url, *extra)) == 0
        first.join()
    finally:
        server.close()
    assert codes == [0] and len(server.requests) == 6  # not 12
    assert "another run is using this teacher cache; waiting for it" in caplog.text
    assert json.loads((tmp_path / "b.summary.json").read_text())["counts"]["asked"] == 0
    assert read_rows(tmp_path / "a.jsonl") == read_rows(tmp_path / "b.jsonl")


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB file system (tmpfs), so that a disk fills up for real; the test is skipped where it cannot be
    mounted (not root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk, leave: int):
    """A file that leaves ``leave`` bytes of ``disk`` free."""
    filler = disk / "filler"
    filler.write_bytes(b"")
    filler.write_bytes(b"x" * (shutil.disk_usage(disk).free - leave))
    return filler


def test_a_full_disk_names_the_file_and_nothing_is_paid_twice(short_rows, small_disk, tmp_path, capsys):
    """The cache's disk fills up mid-run: the run stops naming the cache, every answer received is in it (the
    answers on their way go into the reserve beside it), and the rerun asks only for the rest. The output's disk
    full (the cache elsewhere): the output is named, and the rerun asks nothing."""

    def long_reply(prompt: str) -> str:  # about 4 kB a cache line: the disk fills up after a few answers
        return f"[Better Answer] {'A long and careful answer. ' * 150}{SlowTeacher.reflection_reply(prompt)[16:]}"

    server = SlowTeacher(0.0, long_reply)
    data = tmp_path / "rows.jsonl"
    rows = (short_rows * 3)[:30]
    write_rows([{**r, "instruction": f"{r['instruction']} ({i})"} for i, r in enumerate(rows)], data)
    cache = small_disk / "a.teacher-cache.jsonl"
    argv = _reflect_argv(data, tmp_path / "a.jsonl", server.base_url, "--teacher_cache", str(cache))
    argv += ["--teacher_concurrency", "2"]
    try:
        filler = _fill(small_disk, 100_000)
        assert srt(argv) == 2
        err = capsys.readouterr().err
        assert f"{cache}: the teacher cache cannot be written: No space left on device" in err
        assert "run the same command again" in err and not (tmp_path / "a.jsonl").exists()
        kept = load_cache_entries(cache)
        assert 10 < len(kept) < 30 and len(server.requests) == len(kept)  # every answer paid for is kept
        filler.unlink()
        assert srt(argv) == 0
        assert len(server.requests) == 30 and sorted(server.requests) == sorted(set(server.requests))  # each once

        out = small_disk / "b.jsonl"
        argv = _reflect_argv(data, out, server.base_url, "--teacher_cache", str(cache))
        filler = _fill(small_disk, 0)
        assert srt(argv) == 2
        assert f"{out}: No space left on device" in capsys.readouterr().err
        filler.unlink()
        assert srt(argv) == 0 and len(server.requests) == 30  # the answers were all in the cache
    finally:
        server.close()
    assert read_rows(tmp_path / "a.jsonl") == read_rows(small_disk / "b.jsonl")
    assert not list(small_disk.glob("*.reserve"))


def test_a_started_reply_is_continued_by_the_server():
    """`--prefill on` with an OpenAI-compatible server: the request asks it to continue the final assistant message
    (vLLM's and SGLang's fields; tests/test_vllm_server.py runs it against vLLM's server and batch runner)."""
    from srt_trainer.teachers.openai_teacher import OpenAITeacher

    teacher = OpenAITeacher("m", base_url="http://127.0.0.1:9/v1")
    asked = [{"role": "user", "content": "Rewrite it."}]
    started = [*asked, {"role": "assistant", "content": "[Better Answer]"}]
    sampling = SamplingConfig(max_tokens=8)
    assert "extra_body" not in teacher.request_kwargs(asked, sampling)
    assert teacher.request_kwargs(started, sampling)["extra_body"] == {
        "continue_final_message": True,
        "add_generation_prompt": False,
    }
