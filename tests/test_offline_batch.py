"""The teacher through batch files: `--export_requests` writes an OpenAI batch input file and stops,
`--import_results` reads a batch output file into the cache; the outputs equal an online run's. Answered once by a
scripted endpoint (online and offline, the same answers), once by the real embedded model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from srt_trainer.cli import main as srt
from srt_trainer.io import read_rows, write_rows
from srt_trainer.teachers.offline import CHAT_URL
from tests.serving import SlowTeacher


@pytest.fixture
def rows_file(alpaca_rows, tmp_path: Path) -> Path:
    rows = [{k: r[k] for k in ("instruction", "input", "output")} for r in alpaca_rows[40:46]]
    path = tmp_path / "rows.jsonl"
    write_rows(rows, path)
    return path


def reflect(data: Path, out: Path, base_url: str, *extra: str) -> int:
    argv = ["reflect", "--mode", "response", "--data", str(data), "--output", str(out), "--teacher", "openai"]
    argv += ["--teacher_model", "m", "--base_url", base_url, "--no_progress", "--max_retries", "0", *extra]
    return srt(argv)


def answer_file(requests: Path, results: Path, reply, fail: set[int] = frozenset()) -> list[dict]:
    """A batch output file for ``requests``: ``reply(user message)`` as each answer, items in ``fail`` failed."""
    lines = [json.loads(line) for line in requests.read_text().splitlines()]
    out = []
    for k, line in enumerate(lines):
        assert line["method"] == "POST" and line["url"] == CHAT_URL and line["body"]["model"] == "m"
        if k in fail:
            out.append(
                {"id": f"b{k}", "custom_id": line["custom_id"], "response": None, "error": {"message": "expired"}}
            )
            continue
        message = {"role": "assistant", "content": reply(line["body"]["messages"][-1]["content"])}
        body = {
            "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2},
        }
        out.append({"id": f"b{k}", "custom_id": line["custom_id"], "response": {"status_code": 200, "body": body}})
    results.write_text("".join(json.dumps(x) + "\n" for x in out))
    return lines


def test_export_answer_import_gives_the_online_outputs(rows_file: Path, tmp_path: Path, capsys):
    server = SlowTeacher(0.0, SlowTeacher.reflection_reply)
    try:
        online = tmp_path / "online" / "a.jsonl"
        assert reflect(rows_file, online, server.base_url) == 0
        asked_online = len(server.requests)
        assert asked_online == 6

        offline = tmp_path / "offline" / "a.jsonl"
        requests, results = tmp_path / "requests.jsonl", tmp_path / "results.jsonl"
        # 1. nothing sent: the six requests written, the run stopped without an output
        assert reflect(rows_file, offline, server.base_url, "--export_requests", str(requests)) == 0
        assert "wrote 6 teacher requests to" in capsys.readouterr().out and not offline.exists()
        # 2. answered, one item failed (expired): five imported, the failed one written again, still no output
        sent = answer_file(requests, results, SlowTeacher.reflection_reply, fail={2})
        assert len({x["custom_id"] for x in sent}) == 6
        again = tmp_path / "requests2.jsonl"
        args = ("--import_results", str(results), "--export_requests", str(again))
        assert reflect(rows_file, offline, server.base_url, *args) == 0
        assert "wrote 1 teacher requests" in capsys.readouterr().out and not offline.exists()
        assert [json.loads(x)["custom_id"] for x in again.read_text().splitlines()] == [sent[2]["custom_id"]]
        # 3. the last one answered: the run completes from the cache and that file
        results2 = tmp_path / "results2.jsonl"
        answer_file(again, results2, SlowTeacher.reflection_reply)
        args = ("--import_results", str(results2), "--export_requests", str(tmp_path / "requests3.jsonl"))
        assert reflect(rows_file, offline, server.base_url, *args) == 0
        assert not (tmp_path / "requests3.jsonl").exists()
        assert len(server.requests) == asked_online  # the offline runs sent nothing
    finally:
        server.close()
    assert read_rows(offline) == read_rows(online)  # every column, the teacher's included
    assert all(r["reflection_status"] == "ok" for r in read_rows(offline))


def test_import_without_export_fails_what_the_results_lack(rows_file: Path, tmp_path: Path, capsys):
    requests, results = tmp_path / "requests.jsonl", tmp_path / "results.jsonl"
    url = "http://127.0.0.1:9/v1"  # nothing listens: nothing may be sent
    assert reflect(rows_file, tmp_path / "x.jsonl", url, "--export_requests", str(requests)) == 0
    answer_file(requests, results, SlowTeacher.reflection_reply, fail={0, 1})
    out = tmp_path / "a.jsonl"
    assert reflect(rows_file, out, url, "--import_results", str(results), "--max_reasks", "0") == 0
    rows = read_rows(out)
    assert [r["reflection_status"] for r in rows].count("failed") == 2 and len(rows) == 6
    assert "2 rows failed" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"custom_id": "x", "response": {"status_code": 200, "body": {}}}\n')
    assert reflect(rows_file, tmp_path / "b.jsonl", url, "--import_results", str(bad)) == 2
    assert "bad.jsonl line 1: a 200 response without choices[0].message.content" in capsys.readouterr().err


def test_the_embedded_model_answers_the_exported_file(alpaca_rows, embedded_dir, embedded_tokenizer, tmp_path):
    """export → the real embedded model answers each request body as a batch runner would → import."""
    import torch

    from srt_trainer.models import load_student

    data = tmp_path / "rows.jsonl"
    write_rows([{k: r[k] for k in ("instruction", "input", "output")} for r in alpaca_rows[120:122]], data)
    requests, results, out = tmp_path / "requests.jsonl", tmp_path / "results.jsonl", tmp_path / "a.jsonl"
    url = "http://127.0.0.1:9/v1"
    extra = ("--teacher_max_tokens", "24", "--max_reasks", "0")
    assert reflect(data, out, url, "--export_requests", str(requests), *extra) == 0
    model = load_student(embedded_dir, device="cpu")
    answers = {}

    def reply_for(line: dict) -> str:
        body = line["body"]
        ids = embedded_tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True, return_tensors="pt")
        ids = ids["input_ids"] if not torch.is_tensor(ids) else ids
        with torch.no_grad():
            new = model.generate(ids, max_new_tokens=body["max_tokens"], do_sample=False)[0, ids.shape[1] :]
        return embedded_tokenizer.decode(new, skip_special_tokens=True)

    lines = [json.loads(x) for x in requests.read_text().splitlines()]
    assert len(lines) == 2 and all(x["body"]["max_tokens"] == 24 for x in lines)
    for line in lines:
        answers[line["body"]["messages"][-1]["content"]] = reply_for(line)
    answer_file(requests, results, lambda prompt: answers[prompt])
    assert reflect(data, out, url, "--import_results", str(results), *extra) == 0
    rows = read_rows(out)
    assert [r["source_index"] for r in rows] == [0, 1] and all(r["teacher"] == "openai" for r in rows)
    raw = read_rows(tmp_path / "a.raw.jsonl")
    assert sorted(rec["texts"][0] for rec in raw) == sorted(answers.values())  # the model's answers, as imported
    summary = json.loads((tmp_path / "a.summary.json").read_text())
    assert summary["counts"]["asked"] == 2


def test_a_request_answered_twice_in_the_results(rows_file: Path, tmp_path: Path, capsys):
    """Results files joined together: the same answer twice is one, a failure and then an answer is the answer, and
    two different answers to one request are refused naming both lines (taking the last would be a guess)."""
    requests, results = tmp_path / "requests.jsonl", tmp_path / "results.jsonl"
    url = "http://127.0.0.1:9/v1"  # nothing listens: nothing may be sent
    assert reflect(rows_file, tmp_path / "x.jsonl", url, "--export_requests", str(requests)) == 0
    answer_file(requests, results, SlowTeacher.reflection_reply)
    lines = results.read_text().splitlines()
    failed = json.loads(lines[0]) | {"response": None, "error": {"message": "expired"}}
    results.write_text("\n".join([json.dumps(failed), *lines, lines[1]]) + "\n")
    out = tmp_path / "a.jsonl"
    assert reflect(rows_file, out, url, "--import_results", str(results), "--max_reasks", "0") == 0
    assert all(r["reflection_status"] == "ok" for r in read_rows(out))
    other = json.loads(lines[2])
    other["response"]["body"]["choices"][0]["message"]["content"] = "[Better Answer] Another answer. [End]"
    results.write_text("\n".join([*lines, json.dumps(other)]) + "\n")
    out = tmp_path / "b.jsonl"
    assert reflect(rows_file, out, url, "--import_results", str(results)) == 2
    err = capsys.readouterr().err
    assert f"results.jsonl line 7: a second, different answer to request {other['custom_id']}" in err
    assert "results.jsonl line 3)" in err and not out.exists()
