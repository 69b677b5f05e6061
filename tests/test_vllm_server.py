"""vLLM's OpenAI server and batch runner for real (its CPU build, in the vLLM environment): two server replicas as
the `--base_url` teacher, one killed mid-run, lose no row; `--export_requests` → vLLM's `run_batch` →
`--import_results` ends with the online run's outputs.

The two replicas are the only time two vLLM processes run at once (4 GiB each); the batch runner starts after they
are stopped.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest

from srt_trainer.cli import main as srt
from srt_trainer.io import read_rows, write_rows
from srt_trainer.teachers.cache import load_cache_entries
from tests.vllm_support import kill_group, run_batch, start_vllm_servers, stop_all

pytestmark = pytest.mark.vllm

ROWS = 10


def _argv(data: Path, out: Path, model: Path, base_url: str) -> list[str]:
    """Greedy, 24 tokens an answer, the reply started with the mode's tag (the server continues it)."""
    argv = ["reflect", "--mode", "response", "--data", str(data), "--output", str(out), "--teacher", "openai"]
    argv += ["--teacher_model", str(model), "--base_url", base_url, "--no_progress", "--prefill", "on"]
    return [*argv, "--teacher_max_tokens", "24", "--max_reasks", "0", "--teacher_concurrency", "4"]


def _texts(output: Path) -> list[list[str]]:
    """The teacher's answers of each row (the raw file beside the output)."""
    return [r["texts"] for r in read_rows(output.with_name(output.stem + ".raw.jsonl"))]


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def online(short_rows, embedded_dir: Path, tmp_path_factory):
    """The online run: `srt reflect` (no API key: a server on loopback needs none) against two vLLM server replicas,
    the second SIGKILLed once two answers are in the cache; both servers are stopped before the tests look at it."""
    tmp = tmp_path_factory.mktemp("vllm_online")
    data = tmp / "rows.jsonl"
    write_rows(short_rows[:ROWS], data)
    first, second = start_vllm_servers(embedded_dir, [tmp / "first.log", tmp / "second.log"])
    out, cache = tmp / "a.jsonl", tmp / "a.teacher-cache.jsonl"
    answered_at_kill: list[int] = []

    def kill_after_first_answers() -> None:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and (not cache.exists() or len(cache.read_text().splitlines()) < 2):
            time.sleep(0.05)
        kill_group(second.process)  # SIGKILL, the engine too: no goodbye to the requests in flight
        answered_at_kill.append(len(cache.read_text().splitlines()))

    killer = threading.Thread(target=kill_after_first_answers, daemon=True)
    handler = _Lines()
    log = logging.getLogger("srt_trainer.teachers.openai_teacher")
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    killer.start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.delenv("OPENAI_API_KEY", raising=False)
            code = srt(_argv(data, out, embedded_dir, f"{first.base_url},{second.base_url}"))
        killer.join(timeout=60)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        stop_all([first, second])
    return {
        "code": code,
        "data": data,
        "out": out,
        "cache": cache,
        "answered_at_kill": answered_at_kill,
        "logs": handler.lines,
        "urls": (first.base_url, second.base_url),
    }


def test_a_killed_vllm_replica_loses_no_row(online):
    assert online["code"] == 0
    first, second = online["urls"]
    assert 2 <= online["answered_at_kill"][0] < ROWS  # killed mid-run
    assert any(line.startswith(f"teacher replica {second} failed") for line in online["logs"])
    served = [line for line in online["logs"] if line.startswith("answers per replica")]
    assert served and f"{first} " in served[0]
    rows = read_rows(online["out"])
    assert [r["source_index"] for r in rows] == list(range(ROWS))
    assert all(r["reflection_status"] != "failed" for r in rows)
    # the server continued the started reply (continue_final_message): most answers are usable rewrites
    assert sum(r["reflection_status"] == "ok" for r in rows) >= ROWS // 2
    entries = load_cache_entries(online["cache"])
    assert len(entries) == ROWS and len({e["key"] for e in entries}) == ROWS  # each row answered once
    summary = json.loads(online["out"].with_name("a.summary.json").read_text())["counts"]
    assert summary["asked"] == ROWS and summary["failed"] == 0


def test_run_batch_answers_the_exported_file_as_the_server_did(online, embedded_dir: Path, tmp_path: Path, capsys):
    data, nobody = online["data"], "http://127.0.0.1:9/v1"  # nothing listens there: nothing may be sent
    requests, results, out = tmp_path / "requests.jsonl", tmp_path / "results.jsonl", tmp_path / "a.jsonl"
    assert srt([*_argv(data, out, embedded_dir, nobody), "--export_requests", str(requests)]) == 0
    assert f"wrote {ROWS} teacher requests" in capsys.readouterr().out and not out.exists()
    run_batch(embedded_dir, requests, results, tmp_path / "run_batch.log")
    answered = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(answered) == ROWS and all(a["response"]["status_code"] == 200 for a in answered)
    assert srt([*_argv(data, out, embedded_dir, nobody), "--import_results", str(results)]) == 0
    assert read_rows(out) == read_rows(online["out"])  # every column of every row
    assert _texts(out) == _texts(online["out"])  # and the teacher's answers, to the character
    summary = json.loads((tmp_path / "a.summary.json").read_text())
    assert summary["counts"]["asked"] == ROWS and summary["failed"] == 0
