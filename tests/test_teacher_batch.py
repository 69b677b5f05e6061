"""The teacher through a provider's Batch API (`--teacher_batch`), against a loopback service that implements the
protocol's files and batches endpoints: the outputs equal an online run's, batches split at the limits, failed and
expired items are submitted again, and a run killed while it waits picks its batch up without submitting again."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from srt_trainer.cli import main as srt
from srt_trainer.io import read_rows, write_rows
from srt_trainer.teachers import SamplingConfig, TeacherConfigError, TeacherError
from srt_trainer.teachers.batch import BatchState, BatchTeacher, SubmittedBatch
from srt_trainer.teachers.cache import batch_state_path
from srt_trainer.teachers.openai_teacher import OpenAITeacher
from tests.processes import kill_when
from tests.serving import BatchService, Misbehaving, SlowTeacher, free_port

REPLY = SlowTeacher.reflection_reply


@pytest.fixture
def rows_file(short_rows, tmp_path: Path) -> Path:
    path = tmp_path / "rows.jsonl"
    write_rows(short_rows[:6], path)
    return path


def reflect_argv(data: Path, out: Path, base_url: str, *extra: str) -> list[str]:
    argv = ["reflect", "--mode", "response", "--data", str(data), "--output", str(out), "--teacher", "openai"]
    return [*argv, "--teacher_model", "m", "--base_url", base_url, "--no_progress", "--max_retries", "0", *extra]


def online_outputs(rows_file: Path, tmp_path: Path, service: BatchService) -> list[dict]:
    out = tmp_path / "online" / "a.jsonl"
    assert srt(reflect_argv(rows_file, out, service.base_url)) == 0
    return read_rows(out)


def test_batches_give_the_online_outputs(rows_file: Path, tmp_path: Path, capsys):
    """Six requests at four a batch: two batches; the first fails one item, the second expires after answering
    one of its two; both left-overs go into a third batch, and the outputs are the online run's."""
    service = BatchService(REPLY, fail=lambda k, n: n == 1 and k == 2, expire=frozenset({2}))
    try:
        online = online_outputs(rows_file, tmp_path, service)
        asked_online = len(service.chats)
        out = tmp_path / "batch" / "a.jsonl"
        extra = ("--teacher_batch", "--teacher_batch_poll", "0.01", "--teacher_batch_max_requests", "4")
        assert srt(reflect_argv(rows_file, out, service.base_url, *extra)) == 0
        assert len(service.chats) == asked_online  # nothing asked online
        assert [service.requests_of(b) for b in service.batches] == [4, 2, 2]
        assert [b["status"] for b in service.batches.values()] == ["completed", "expired", "completed"]
        assert [b["metadata"]["srt_submission"] for b in service.batches.values()] == ["1", "1", "2"]
        assert len(service.uploaded) == 3
    finally:
        service.close()
    assert read_rows(out) == online  # every column, the teacher's included
    counts = json.loads((tmp_path / "batch" / "a.summary.json").read_text())["counts"]
    assert counts["asked"] == 6 and counts["requests"] == 8 and counts["retried"] == 2 and counts["failed"] == 0
    assert not batch_state_path(tmp_path / "batch" / "a.teacher-cache.jsonl").exists()  # nothing left to pick up
    capsys.readouterr()


def test_items_still_failing_after_the_resubmits_fail_their_rows(rows_file: Path, tmp_path: Path, capsys):
    service = BatchService(REPLY, fail=lambda k, n: k == 0)  # the first request of every batch fails
    try:
        out = tmp_path / "a.jsonl"
        extra = ("--teacher_batch", "--teacher_batch_poll", "0.01", "--teacher_batch_resubmits", "1")
        assert srt(reflect_argv(rows_file, out, service.base_url, *extra, "--max_reasks", "0")) == 0
        assert [service.requests_of(b) for b in service.batches] == [6, 1]
    finally:
        service.close()
    rows = read_rows(out)
    assert [r["reflection_status"] for r in rows].count("failed") == 1 and len(rows) == 6
    assert "1 rows failed" in capsys.readouterr().out


def test_a_run_killed_while_waiting_picks_its_batch_up(rows_file: Path, tmp_path: Path):
    service = BatchService(REPLY)
    try:
        online = online_outputs(rows_file, tmp_path, service)
        service.release.clear()  # the batch stays in progress: the run waits on it
        out = tmp_path / "batch" / "a.jsonl"
        state = batch_state_path(tmp_path / "batch" / "a.teacher-cache.jsonl")
        argv = reflect_argv(rows_file, out, service.base_url, "--teacher_batch", "--teacher_batch_poll", "0.05")

        def waiting() -> bool:
            return state.is_file() and all(b["batch_id"] for b in json.loads(state.read_text())["batches"])

        kill_when([sys.executable, "-m", "srt_trainer.cli", *argv], waiting, timeout=600)  # an upper bound only
        assert not out.exists() and list(service.batches) == ["batch_1"]
        recorded = json.loads(state.read_text())["batches"]
        assert [b["batch_id"] for b in recorded] == ["batch_1"] and len(recorded[0]["custom_ids"]) == 6
        service.release.set()
        assert srt(argv) == 0  # the same command again
        assert list(service.batches) == ["batch_1"] and len(service.uploaded) == 1  # not submitted, nor paid, twice
    finally:
        service.close()
    assert read_rows(out) == online
    assert not state.exists()


def test_a_batch_whose_creation_was_not_recorded_is_found_by_its_file(tmp_path: Path):
    """Killed between creating the batch and recording its id: the state holds the uploaded file only; the
    provider's list of batches finds the one made from that file."""
    service = BatchService(lambda prompt: f"answer to {prompt}")
    try:
        online = OpenAITeacher("m", base_url=service.base_url)
        state = BatchState(tmp_path / "t.batches.json")
        teacher = BatchTeacher(online, state.path, poll_seconds=0.01, progress=False)
        conversations = [[{"role": "user", "content": f"question {i}"}] for i in range(3)]
        from srt_trainer.teachers.base import SamplingConfig
        from srt_trainer.teachers.offline import CHAT_URL, custom_id, request_body

        sampling = SamplingConfig()
        bodies = [request_body(online, c, sampling) for c in conversations]
        lines = [{"custom_id": custom_id(b), "method": "POST", "url": CHAT_URL, "body": b} for b in bodies]
        data = "".join(json.dumps(x) + "\n" for x in lines).encode()
        client = online.sync_client()
        uploaded = client.files.create(file=("x.jsonl", data), purpose="batch")
        client.batches.create(input_file_id=uploaded.id, endpoint=CHAT_URL, completion_window="24h")
        state.add(SubmittedBatch([x["custom_id"] for x in lines], input_file_id=uploaded.id))
        answers = {}
        teacher.generate(conversations, sampling, lambda j, a: answers.__setitem__(j, a))
        assert list(service.batches) == ["batch_1"] and teacher.submitted == 0 and teacher.adopted == 1
    finally:
        service.close()
    assert {j: a.text for j, a in answers.items()} == {i: f"answer to question {i}" for i in range(3)}
    assert not state.path.exists()


def test_batch_options_are_checked(tmp_path: Path, capsys):
    data = tmp_path / "rows.jsonl"
    write_rows([{"instruction": "a", "input": "", "output": "b"}], data)
    out = tmp_path / "a.jsonl"
    assert srt(["reflect", "--mode", "response", "--data", str(data), "--output", str(out), "--teacher_batch"]) == 2
    assert "--teacher_batch is for the openai teacher" in capsys.readouterr().err
    argv = reflect_argv(data, out, "http://127.0.0.1:9/v1", "--teacher_batch", "--export_requests", "r.jsonl")
    assert srt(argv) == 2
    assert "--teacher_batch submits the requests itself" in capsys.readouterr().err


def test_the_judge_through_batches_equals_the_judge_online(tmp_path: Path):
    items = [{"id": i, "test_set": "vicuna", "instruction": f"Question {i}?"} for i in range(2)]
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_rows([{**x, "output": f"A short answer {x['id']}."} for x in items], a)
    write_rows([{**x, "output": f"A longer answer {x['id']}, with a reason."} for x in items], b)
    service = BatchService(lambda prompt: "8 6\nAssistant 1 answers better.")
    try:
        argv = ["eval", "judge", "--answers_a", str(a), "--answers_b", str(b), "--teacher", "openai"]
        argv += ["--teacher_model", "m", "--base_url", service.base_url, "--max_retries", "0"]
        assert srt([*argv, "--output", str(tmp_path / "online.jsonl")]) == 0
        assert len(service.chats) == 4  # both orders of both items
        batched = tmp_path / "batched.jsonl"
        assert srt([*argv, "--output", str(batched), "--teacher_batch", "--teacher_batch_poll", "0.01"]) == 0
        assert len(service.chats) == 4 and [service.requests_of(x) for x in service.batches] == [4]
    finally:
        service.close()
    assert read_rows(batched) == read_rows(tmp_path / "online.jsonl")
    assert all(r["status"] == "ok" for r in read_rows(batched))


def test_refusals_and_faults_of_the_batch_api_are_one_line_without_the_key(
    rows_file: Path, tmp_path: Path, capsys, caplog, monkeypatch
):
    """An endpoint that answers 401 and echoes the key, in every mode (online, batches, export and import); a batch
    endpoint that is down; a recorded batch the provider does not know: exit 2 with one line, the key nowhere (not
    in the output, the logs, a traceback under --debug, or a file)."""
    secret = f"sk-test-{time.time_ns()}"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    echo = Misbehaving("echo_key")
    batch = ("--teacher_batch", "--teacher_batch_poll", "0.01")
    try:
        for k, extra in enumerate(((), batch, ("--debug", *batch))):
            argv = reflect_argv(rows_file, tmp_path / f"o{k}.jsonl", echo.base_url, *extra)
            if "--debug" in argv:
                argv.remove("--debug")
                argv.insert(0, "--debug")
            assert srt(argv) == 2
            err = capsys.readouterr().err
            assert "HTTP 401" in err and "Incorrect API key provided: ***" in err
            assert ("check OPENAI_API_KEY" in err) == bool(extra)
            assert ("Traceback" in err) == ("--debug" in argv) and "openai.AuthenticationError" not in err
        assert sum(p.startswith("/v1/batches") for p in echo.paths) == 2  # each batch run stopped at its first call
        sent = echo.requests
        requests, results = tmp_path / "requests.jsonl", tmp_path / "results.jsonl"
        assert (
            srt(reflect_argv(rows_file, tmp_path / "x.jsonl", echo.base_url, "--export_requests", str(requests))) == 0
        )
        results.write_text("")
        argv = reflect_argv(rows_file, tmp_path / "y.jsonl", echo.base_url, "--import_results", str(results))
        assert srt([*argv, "--max_reasks", "0"]) == 2  # no row is in the results: none answered, nothing sent
        assert "not in the results file" in capsys.readouterr().err and echo.requests == sent
    finally:
        echo.close()
    down = f"http://127.0.0.1:{free_port()}/v1"
    assert srt(reflect_argv(rows_file, tmp_path / "d.jsonl", down, *batch)) == 2
    err = capsys.readouterr().err
    assert f"{down}: cannot reach the Batch API to list the batches" in err and "Traceback" not in err
    service = BatchService(REPLY)
    try:
        state = batch_state_path(tmp_path / "u.teacher-cache.jsonl")
        state.write_text(json.dumps({"version": 1, "batches": [{"custom_ids": ["srt-x"], "batch_id": "batch_gone"}]}))
        online = OpenAITeacher("m", base_url=service.base_url)
        teacher = BatchTeacher(online, state, poll_seconds=0.01, progress=False)
        from srt_trainer.teachers.offline import custom_id, request_body

        conversation = [{"role": "user", "content": "question"}]
        name = custom_id(request_body(online, conversation, SamplingConfig()))
        state.write_text(json.dumps({"version": 1, "batches": [{"custom_ids": [name], "batch_id": "batch_gone"}]}))
        with pytest.raises(TeacherError, match=r"does not know batch batch_gone, which .*u.teacher-cache.batches.json"):
            teacher.generate([conversation], SamplingConfig(), lambda j, a: None)
        assert service.batches == {}  # nothing submitted in its place
    finally:
        service.close()
    logged = caplog.text + capsys.readouterr().out
    assert secret not in logged and [str(p) for p in tmp_path.rglob("*") if secret.encode() in p.read_bytes()] == []


class Killed(BaseException):
    """The process dies (here: at its first look at the batches it waits for)."""


@pytest.mark.parametrize("state_left", ["removed", "corrupt"])
def test_a_lost_batch_record_does_not_submit_again(rows_file: Path, tmp_path: Path, monkeypatch, state_left: str):
    """Killed while its batch runs, its record removed (or broken): the same command finds the batch at the provider
    by its requests' fingerprint and waits for it, instead of paying for a second one."""
    service = BatchService(REPLY)
    try:
        online = online_outputs(rows_file, tmp_path, service)
        service.release.clear()
        out = tmp_path / "batch" / "a.jsonl"
        state = batch_state_path(tmp_path / "batch" / "a.teacher-cache.jsonl")
        argv = reflect_argv(rows_file, out, service.base_url, "--teacher_batch", "--teacher_batch_poll", "0.01")

        def die(_: float) -> None:
            raise Killed

        class DiesWaiting(BatchTeacher):
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, **{**kwargs, "sleep": die})

        with monkeypatch.context() as m:
            m.setattr("srt_trainer.teachers.batch.BatchTeacher", DiesWaiting)
            with pytest.raises(Killed):
                srt(argv)
        assert list(service.batches) == ["batch_1"] and state.is_file()
        if state_left == "removed":
            state.unlink()
        else:
            state.write_text('{"version": 1, "batches": [{"custom_')
        service.release.set()
        assert srt(argv) == 0  # the same command again
        assert list(service.batches) == ["batch_1"] and len(service.uploaded) == 1  # not submitted, nor paid, twice
    finally:
        service.close()
    assert read_rows(out) == online
    assert not state.exists()
    assert (state.with_name(state.name + ".corrupt").is_file()) == (state_left == "corrupt")


def test_a_run_of_an_older_version_resumes_from_its_shared_batch_record(tmp_path: Path):
    """`srt run` recorded its batches in one `teacher.batches.json` for its three reflections: read while it is
    there, so such a run resumes; each cache has its own record otherwise."""
    from srt_trainer.teachers import TeacherArguments, TeacherFactory

    args = TeacherArguments(teacher="openai", teacher_model="m", base_url="http://127.0.0.1:9/v1", teacher_batch=True)
    cache = tmp_path / "reflect" / "q.teacher-cache.jsonl"
    teacher = TeacherFactory(args).build(cache)
    assert teacher.state_path == tmp_path / "reflect" / "q.teacher-cache.batches.json"
    legacy = tmp_path / "reflect" / "teacher.batches.json"
    legacy.parent.mkdir()
    legacy.write_text('{"version": 1, "batches": [{"custom_ids": ["srt-x"], "batch_id": "batch_1"}]}')
    assert TeacherFactory(args).build(cache).state_path == legacy
    with pytest.raises(TeacherConfigError, match="--teacher_batch records its batches beside the teacher cache"):
        TeacherFactory(args).build(None)
