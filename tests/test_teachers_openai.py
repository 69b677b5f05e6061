"""The OpenAI-compatible teacher against a real ``transformers serve`` (the embedded model), directly and through a
proxy that injects 429 + Retry-After, 500, stalls, dropped connections and truncated JSON."""

from __future__ import annotations

import email.utils
import time

import pytest

from srt_trainer.reflection import load_prompt, parse_instruction_reflection, parse_response_reflection, reflect
from srt_trainer.teachers import (
    SamplingConfig,
    TeacherArguments,
    TeacherError,
    build_teacher,
    complete_all,
    load_cache_entries,
)
from tests.serving import FaultPlan, FaultProxy, prompt_hash

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
