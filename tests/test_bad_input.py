"""Real-world input: one test per failure class, through the real ``srt`` commands (in process) on real rows.

Optional columns that start after row 0, outputs that are inputs, bytes that are not UTF-8 and lone surrogates, our
own outputs read by our own stages, a teacher cache with bad lines or no write access, two runs on one output, a
teacher slower than its time-out, and user errors that must print one line."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from srt_trainer.cli import main as srt_main
from srt_trainer.io import read_rows, write_rows
from tests.processes import lock_held_elsewhere
from tests.serving import SlowTeacher


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _rejects(path: Path) -> list[dict]:
    return read_rows(path)


def _score(capsys, *args: str) -> tuple[int, str]:
    code = srt_main(["score", "--no_plot", "--shard_size", "4", *args])
    return code, capsys.readouterr().err


# -- 1. optional columns after row 0 ---------------------------------------------------------------------------


def test_optional_columns_after_row_0_come_through_unchanged(short_rows, tmp_path, capsys, embedded_dir):
    rows = [dict(r) for r in short_rows[:4]]
    rows[2].update(id=17, category=["writing", 3])
    rows[3].update(id="alpaca-3", source={"name": "alpaca", "page": 2})
    # columns the stage writes itself: kept under a clear name, never overwritten
    rows[1].update(ifd=0.5, score_error="from an earlier run", row_index=99)
    data = _jsonl(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "scores.jsonl"
    code, err = _score(capsys, "--data", str(data), "--output", str(out))
    assert code == 0, err
    got = read_rows(out)
    assert len(got) == 4 and all(r["ifd"] is not None for r in got)
    for src, row in zip(rows, got, strict=True):
        for key in ("id", "source", "category"):
            assert (key in row) == (key in src) and row.get(key) == src.get(key)  # as read: no JSON text, no nulls
    assert got[1]["orig_ifd"] == 0.5 and got[1]["orig_score_error"] == "from an earlier run"
    assert got[1]["orig_row_index"] == 99 and got[1]["row_index"] == 1 and got[1]["ifd"] != 0.5
    summary = json.loads((tmp_path / "scores.summary.json").read_text())
    assert summary["renamed_columns"] == {
        "row_index": "orig_row_index",
        "ifd": "orig_ifd",
        "score_error": "orig_score_error",
    }


def test_optional_columns_survive_parquet_and_the_arrow_view(short_rows, tmp_path):
    from srt_trainer.data import load_instruction_data

    rows = [dict(r) for r in short_rows[:4]]
    rows[1]["id"] = 5
    rows[3].update(id="x-3", tags=["a"])
    loaded = load_instruction_data(_jsonl(tmp_path / "r.jsonl", rows))
    assert [r.get("id") for r in loaded.rows] == [None, 5, None, "x-3"] and "id" not in loaded.rows[0]
    assert loaded.dataset["id"] == [None, "5", None, '"x-3"']  # Arrow: one type per column
    write_rows(loaded.rows, tmp_path / "r.parquet")
    back = read_rows(tmp_path / "r.parquet")
    assert [r["tags"] for r in back] == [None, None, None, ["a"]] and len(back) == 4


# -- 2. an output that is an input -----------------------------------------------------------------------------


def _stage_args(stage: str, data: Path, out: Path) -> list[str]:
    return {
        "score": ["score", "--data", str(data), "--output", str(out)],
        "reflect": ["reflect", "--mode", "response", "--data", str(data), "--output", str(out)],
        "select": [
            "select",
            "--ori",
            str(data),
            "--q",
            str(data),
            "--a",
            str(data),
            "--qa",
            str(data),
            "--output",
            str(out),
        ],
        "generate": ["eval", "generate", "--test_sets", str(data), "--output", str(out)],
        "judge": ["eval", "judge", "--answers_a", str(data), "--answers_b", str(data), "--output", str(out)],
    }[stage]


@pytest.mark.parametrize("link", ["same", "symlink", "hardlink", "dotdot"])
@pytest.mark.parametrize("stage", ["score", "reflect", "select", "generate", "judge"])
def test_an_output_that_is_an_input_is_refused_before_any_work(stage, link, short_rows, tmp_path, capsys):
    data = _jsonl(tmp_path / "rows.jsonl", short_rows[:3])
    before = data.read_bytes()
    out = {
        "same": data,
        "symlink": tmp_path / "link.jsonl",
        "hardlink": tmp_path / "hard.jsonl",
        "dotdot": tmp_path / "sub" / ".." / "rows.jsonl",
    }[link]
    if link == "symlink":
        out.symlink_to(data)
    elif link == "hardlink":
        os.link(data, out)
    assert srt_main(_stage_args(stage, data, out)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert ("same file" in err and "destroy" in err) or "also the" in err  # select words it its own way
    assert data.read_bytes() == before


def test_a_file_beside_the_output_that_is_the_input_is_refused(short_rows, tmp_path, capsys):
    data = _jsonl(tmp_path / "scores.rejects.jsonl", short_rows[:3])  # the rejects file of scores.jsonl
    code, err = _score(capsys, "--data", str(data), "--output", str(tmp_path / "scores.jsonl"))
    assert code == 2 and "the rejects file is the same file as --data" in err
    cache = _jsonl(tmp_path / "c.jsonl", short_rows[:3])
    code = srt_main([*_stage_args("reflect", cache, tmp_path / "q.jsonl"), "--teacher_cache", str(cache)])
    assert code == 2 and "--teacher_cache is the same file as --data" in capsys.readouterr().err


def test_reflection_keeps_the_columns_it_would_overwrite(short_rows, embedded_model, embedded_tokenizer):
    from srt_trainer.reflection import reflect
    from srt_trainer.teachers import TeacherArguments
    from srt_trainer.teachers.local import TransformersTeacher

    teacher = TransformersTeacher("embedded", model_obj=embedded_model, tokenizer=embedded_tokenizer, batch_size=2)
    asking = TeacherArguments(teacher_max_tokens=2, max_reasks=0)
    rows = [{**r, "teacher": "my label", "reflection_error": "x"} for r in short_rows[:1]]
    result = reflect(rows, "response", teacher, asking, progress=False)
    assert [r["orig_teacher"] for r in result.rows] == ["my label"]
    assert all(r["teacher"] == "transformers" and r["orig_reflection_error"] == "x" for r in result.rows)
    # a Q file reflected again (QA): the Q rewrite's own columns are kept as q_<name>
    q = [
        {**r, "variant": "Q", "source_index": i, "reflection_status": "ok", "teacher": "t"}
        for i, r in enumerate(short_rows[1:2])
    ]
    qa = reflect(q, "response", teacher, asking, progress=False)
    assert [(r["q_reflection_status"], r["q_teacher"], r["variant"]) for r in qa.rows] == [("ok", "t", "QA")]
    from srt_trainer.reflection.runner import REFLECTION_COLUMNS

    assert list(qa.rows[0])[len(REFLECTION_COLUMNS)] == "q_reflection_status"  # after the reflection's own columns


# -- 3. text encoding ------------------------------------------------------------------------------------------


def test_bad_bytes_and_lone_surrogates_cost_their_row_only(short_rows, tmp_path, capsys, embedded_dir):
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in short_rows[:5]]
    lines[0] = b"\xef\xbb\xbf" + lines[0]  # a byte order mark: row 0 must not be lost
    lines[1] = lines[1].replace(b'"output": "', b'"output": "caf\xe9 ', 1)  # Latin-1, not UTF-8
    lines[3] = lines[3].replace(b'"instruction": "', b'"instruction": "\\ud83d ', 1)  # half an emoji
    lines[4] = lines[4].replace(b'"output": "', b'"output": "one\xe2\x80\xa8two\xc2\x85three ', 1)  # separators
    data = tmp_path / "rows.jsonl"
    data.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "scores.jsonl"
    code, err = _score(capsys, "--data", str(data), "--output", str(out))
    assert code == 0, err
    got = read_rows(out)
    assert [r["row_index"] for r in got] == [0, 2, 4]
    assert got[0]["instruction"] == short_rows[0]["instruction"]
    assert got[2]["output"].startswith("one\u2028two\x85three ")
    rejects = _rejects(tmp_path / "scores.rejects.jsonl")
    assert [(r["row"], r["line"]) for r in rejects] == [(1, 2), (3, 4)]
    assert rejects[0]["reason"].startswith("not UTF-8 text: byte 0xe9") and "caf\ufffd" in rejects[0]["raw"]
    assert "lone surrogate" in rejects[1]["reason"] and rejects[1]["field"] == "instruction"


def test_a_json_list_with_bad_rows_keeps_the_others_with_their_lines(short_rows, tmp_path):
    from srt_trainer.data import load_instruction_data

    body = ",\n".join(json.dumps(r) for r in short_rows[:3]).replace('"input": ""', '"input": "\\udc00"', 1)
    data = tmp_path / "rows.json"
    data.write_bytes(b"\xef\xbb\xbf[\n" + body.encode() + b",\n" + b'{"instruction": "\xff", "output": "x"}\n]')
    loaded = load_instruction_data(data)
    assert len(loaded.rows) == 2 and [(r.row, r.line) for r in loaded.rejects] == [(0, 2), (3, 5)]


# -- 4. our own outputs are readable by our own stages ---------------------------------------------------------


def test_sharegpt_reflection_output_can_be_scored(short_rows, tmp_path, capsys, embedded_dir):
    conversations = [
        {
            "id": f"sg-{i}",
            "conversations": [{"from": "human", "value": r["instruction"]}, {"from": "gpt", "value": r["output"]}],
        }
        for i, r in enumerate(short_rows[:2])
    ]
    data = _jsonl(tmp_path / "sharegpt.jsonl", conversations)
    q = tmp_path / "a.jsonl"
    args = ["reflect", "--mode", "response", "--data", str(data), "--output", str(q), "--teacher", "transformers"]
    assert srt_main([*args, "--teacher_max_tokens", "4", "--max_reasks", "0", "--no_progress"]) == 0
    reflected = read_rows(q)
    assert [r["source_conversations"] for r in reflected] == [c["conversations"] for c in conversations]
    assert "conversations" not in reflected[0] and [r["id"] for r in reflected] == ["sg-0", "sg-1"]
    capsys.readouterr()
    code, err = _score(capsys, "--data", str(q), "--output", str(tmp_path / "a.scores.jsonl"))
    assert code == 0, err
    scored = read_rows(tmp_path / "a.scores.jsonl")
    assert len(scored) == 2 and all(r["ifd"] is not None for r in scored)
    assert [r["output"] for r in scored] == [r["output"] for r in reflected]  # the rewrite, not the source
    assert _rejects(tmp_path / "a.scores.rejects.jsonl") == []


def test_eval_aggregate_reads_line_separators_in_reviews(tmp_path, capsys):
    reviews = [
        {"id": i, "review": f"8 {i % 3 + 5}\u2028Assistant 1\u2029is better\x85{sep}", "review_reverse": "6 7\u2028ok"}
        for i, sep in enumerate(["\u2028", "\r", "\x0b", "\x1c", "\x0c"])
    ]
    path = write_rows(reviews, tmp_path / "reviews.jsonl")
    assert srt_main(["eval", "aggregate", "--reviews", str(path), "--json", "--plot", "false"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 5 and result["failed"] == 0 and result["win"] == 5


def test_a_stage_left_with_no_usable_row_fails_and_says_why(tmp_path, capsys):
    data = _jsonl(tmp_path / "bad.jsonl", [{"instruction": "", "output": "x"}, {"instruction": 3, "output": "y"}])
    code, err = _score(capsys, "--data", str(data), "--output", str(tmp_path / "s.jsonl"))
    assert code == 2 and "none of its 2 rows is usable for scoring" in err and "s.rejects.jsonl" in err
    assert not (tmp_path / "s.jsonl").exists() and len(_rejects(tmp_path / "s.rejects.jsonl")) == 2
    code = srt_main(["reflect", "--mode", "instruction", "--data", str(data), "--output", str(tmp_path / "q.jsonl")])
    assert code == 2 and "none of its 2 rows is usable for reflection" in capsys.readouterr().err


def test_score_with_no_statistics_at_all_fails_after_writing_every_row(short_rows, tmp_path, capsys, embedded_dir):
    rows = [{**r, "output": ""} for r in short_rows[:2]]
    out = tmp_path / "s.jsonl"
    code, err = _score(capsys, "--data", str(_jsonl(tmp_path / "e.jsonl", rows)), "--output", str(out))
    assert code == 2 and "none of its 2 rows could be scored" in err and "empty response" in err
    assert [r["score_error"] for r in read_rows(out)] == ["empty response"] * 2


# -- 6. the teacher cache never blocks a resume ----------------------------------------------------------------


def test_bad_cache_entries_are_asked_again(embedded_model, embedded_tokenizer, tmp_path, caplog):
    from srt_trainer.teachers import SamplingConfig, cache_key, complete_all
    from srt_trainer.teachers.local import TransformersTeacher

    teacher = TransformersTeacher("embedded", model_obj=embedded_model, tokenizer=embedded_tokenizer, batch_size=3)
    sampling = SamplingConfig(max_tokens=3)
    conversations = [[{"role": "user", "content": f"Name a color, {n}."}] for n in ("Ann", "Bob", "Cy")]
    keys = [cache_key(teacher.identity(), c, sampling) for c in conversations]
    path = tmp_path / "cache.jsonl"
    path.write_bytes(
        json.dumps({"key": keys[0], "text": "Blue."}).encode()
        + b'\n{"key": "'
        + keys[1].encode()
        + b'", "text": "R\xe9d"}\n'  # a byte that is not UTF-8
        + json.dumps({"key": keys[2], "text": None}).encode()  # an entry without text
        + b"\n"
    )
    results, counts = complete_all(teacher, conversations, sampling, path, progress=False)
    assert results[0].text == "Blue." and results[0].cached
    assert counts.cached == 1 and counts.asked == 2 and counts.failed == 0
    assert all(r.text for r in results) and "asked again" in caplog.text
    _, again = complete_all(teacher, conversations, sampling, path, progress=False)
    assert again.cached == 3 and again.asked == 0  # the answers asked again are cached now


def test_an_unwritable_cache_fails_before_the_teacher_is_asked(short_rows, tmp_path, capsys):
    data = _jsonl(tmp_path / "rows.jsonl", short_rows[:2])
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    args = ["reflect", "--mode", "response", "--data", str(data), "--output", str(tmp_path / "a.jsonl")]
    args += ["--teacher", "openai", "--teacher_model", "m", "--base_url", "http://127.0.0.1:9/v1"]
    start = time.perf_counter()
    assert srt_main([*args, "--teacher_cache", str(blocker / "cache.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "not-a-folder/cache.jsonl: the teacher cache cannot be written" in err and time.perf_counter() - start < 5
    assert not (tmp_path / "a.jsonl").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only files")
def test_a_read_only_cache_fails_before_the_teacher_is_asked(tmp_path):
    from srt_trainer.teachers.cache import ResponseCache, TeacherCacheError

    path = tmp_path / "cache.jsonl"
    path.write_text("")
    path.chmod(0o444)
    with pytest.raises(TeacherCacheError, match=r"cache\.jsonl: the teacher cache cannot be written"):
        ResponseCache(path)


# -- 7. two runs on one output ---------------------------------------------------------------------------------


def test_a_second_run_on_the_same_output_stops_with_a_message(short_rows, tmp_path, capsys):
    data = _jsonl(tmp_path / "rows.jsonl", short_rows[:2])
    out = tmp_path / "scores.jsonl"
    with lock_held_elsewhere(out):
        code, err = _score(capsys, "--data", str(data), "--output", str(out))
        assert code == 2 and "another run is writing this score output" in err and "scores.lock" in err
    # the lock dies with its process: a killed run never blocks the next one
    from srt_trainer.io import output_lock

    with output_lock(out):
        pass


def test_concurrent_writes_of_one_file_never_collide(short_rows, tmp_path):
    path = tmp_path / "out.jsonl"
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for _ in range(15):
                write_rows([{**r, "writer": k} for r in short_rows], path)
        except BaseException as e:  # collected: the assertion below names it
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = read_rows(path)
    assert len(rows) == len(short_rows) and len({r["writer"] for r in rows}) == 1  # one whole file, one writer's
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temporary file left behind


# -- 8. a teacher slower than its time-out ---------------------------------------------------------------------


def test_time_outs_do_not_multiply_the_servers_work(tmp_path, caplog):
    from srt_trainer.teachers import SamplingConfig, build_teacher, complete_all
    from srt_trainer.teachers.openai_teacher import LOCAL_TIMEOUT, default_timeout

    assert default_timeout("http://127.0.0.1:8000/v1") == LOCAL_TIMEOUT >= 600
    assert default_timeout(None) == 120.0 and default_timeout("https://api.example.com/v1") == 120.0
    # each answer takes longer than the time-out, so the first request of every prompt times out whatever the
    # machine's speed; the second, with twice the time-out, has 1.8 s to spare for a loaded machine
    server = SlowTeacher(seconds=2.2)
    try:
        teacher = build_teacher(
            "openai", model="m", base_url=server.base_url, timeout=2.0, max_retries=8, concurrency=4
        )
        conversations = [[{"role": "user", "content": f"Question {i}"}] for i in range(4)]
        results, counts = complete_all(teacher, conversations, SamplingConfig(max_tokens=4), None, progress=False)
    finally:
        server.close()
    assert [r.text for r in results] == ["Done."] * 4  # the second request had twice the time
    per_prompt = {c: server.requests.count(c) for c in set(server.requests)}
    assert per_prompt == {f"Question {i}": 2 for i in range(4)}  # never max_retries + 1 = 9 copies
    assert counts.timed_out == 4 and counts.requests == 8 and "4 requests timed out" in counts.format()
    assert "timed out after 2 s" in caplog.text and "request(s) in flight" in caplog.text


# -- 9. one line for a user error, tracebacks for bugs ---------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["score", "--config", "{tmp}/missing.yaml"], "missing.yaml: No such file"),
        (["reflect", "--config", "{tmp}/broken.yaml"], "broken.yaml"),
        (["run", "{tmp}/missing.yaml"], "missing.yaml: No such file"),
        (["score", "--config", "{tmp}/unknown.yaml"], "no_such_option"),
        (["score", "--data", "{tmp}/rows.jsonl", "--output", "{tmp}/a-file/scores.jsonl"], "a-file/scores.jsonl"),
        (["score", "--data", "{tmp}/folder", "--output", "{tmp}/scores.jsonl"], "folder: not a dataset"),
        (["reflect", "--mode", "response", "--data", "{tmp}/rows.jsonl", "--output", "{tmp}/a-file/q.jsonl"], "a-file"),
    ],
)
def test_user_errors_print_one_line_naming_the_file(argv, named, short_rows, tmp_path, capsys):
    _jsonl(tmp_path / "rows.jsonl", short_rows[:2])
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "folder").mkdir()
    (tmp_path / "broken.yaml").write_text("mode: [response\n")
    (tmp_path / "unknown.yaml").write_text("data: rows.jsonl\noutput: out.jsonl\nno_such_option: 1\n")
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert srt_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"srt {argv[0]}: ") and "Traceback" not in err
    assert named in err
    # --debug, anywhere on the line, shows where it came from
    assert srt_main([*argv, "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback():
    from srt_trainer.errors import run_cli

    def bug() -> None:
        raise KeyError("a bug in the code")

    with pytest.raises(KeyError):
        run_cli("srt test", bug)


def test_eval_aggregate_names_the_file_and_refuses_what_it_cannot_count(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"review": "8 6", "review_reverse": "6 8"}\n{"review": "9 \xff 1", "review_reverse": "1 9"}\n')
    assert srt_main(["eval", "aggregate", "--reviews", str(bad)]) == 2
    assert "bad.jsonl: line 2: not UTF-8 text: byte 0xff" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert srt_main(["eval", "aggregate", "--reviews", str(empty)]) == 2
    assert "empty.jsonl: contains no reviews" in capsys.readouterr().err
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    good = [{"review": "8 6", "review_reverse": "6 8"}]
    a, b = write_rows(good, tmp_path / "a" / "r.jsonl"), write_rows(good, tmp_path / "b" / "r.jsonl")
    assert srt_main(["eval", "aggregate", "--reviews", str(a), str(b), "--output_dir", str(tmp_path / "out")]) == 2
    assert "are the same file" in capsys.readouterr().err and not (tmp_path / "out").exists()
    failed = write_rows([{"review": "no scores", "review_reverse": "none"}], tmp_path / "f.jsonl")
    assert srt_main(["eval", "aggregate", "--reviews", str(failed), "--plot", "false"]) == 2
    assert "none of its 1 items has two readable reviews" in capsys.readouterr().err
