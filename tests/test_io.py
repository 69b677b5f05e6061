"""The row files' package on its own: each format written and read back, rows read again at their offsets, writes
that are whole or absent, the output lock, and the resumable shard store."""

from __future__ import annotations

import fcntl
import json
import math
import os
import random

import pytest

from srt_trainer.io import (
    FORMATS,
    DataLoadError,
    OutputLockedError,
    ResumeMismatchError,
    ShardStore,
    iter_raw_rows,
    output_lock,
    read_rows,
    read_rows_at,
    write_json,
    write_rows,
)
from tests.processes import lock_held_elsewhere

ROWS = [
    {"instruction": "Say hi.", "input": "", "output": "Hi!", "score": 0.5},
    {"instruction": "Übersetze «chat».", "input": "chat", "output": "Katze\u2028(a line separator inside)", "score": 1},
    {"instruction": "Nested?", "input": "", "output": "yes", "score": None, "tags": ["a", "b"]},
    {"instruction": "No score", "input": "", "output": "x", "score": math.nan},
]


def _expected(fmt: str) -> list[dict]:
    """What a format gives back: NaN as null; Parquet gives every row every column."""
    rows = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in ROWS]
    if fmt == "parquet":
        columns = list(dict.fromkeys(k for r in rows for k in r))
        rows = [{c: r.get(c) for c in columns} for r in rows]
        for r in rows:  # one Arrow type per column: the ints of a float column come back as floats
            r["score"] = None if r["score"] is None else float(r["score"])
    return rows


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
def test_each_format_round_trips_and_reads_again_at_offsets(tmp_path, fmt):
    path = write_rows(ROWS, tmp_path / f"rows.{fmt}")
    expected = _expected(fmt)
    assert read_rows(path) == expected
    raws = list(iter_raw_rows(path))
    assert [r.row for r in raws] == [0, 1, 2, 3] and all(r.error is None for r in raws)
    if fmt != "parquet":
        assert [r.line for r in raws] == ([1, 2, 3, 4] if fmt == "jsonl" else [2, 3, 4, 5])
    # any order, repeats included: what a stage that kept only the offsets of its rows reads back
    picks = [3, 0, 2, 2, 1]
    assert read_rows_at(path, [raws[i].offset for i in picks]) == [expected[i] for i in picks]


def test_a_json_object_with_a_data_list_reads_at_offsets_too(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps({"data": ROWS[:3]}), encoding="utf-8")
    offsets = [r.offset for r in iter_raw_rows(path)]
    assert read_rows_at(path, offsets[::-1]) == ROWS[:3][::-1]


def test_parquet_offsets_across_batches(tmp_path, monkeypatch):
    from srt_trainer.io import readers

    monkeypatch.setattr(readers, "PARQUET_BATCH_ROWS", 3)  # rows spread over several batches
    rows = [{"i": i, "text": f"row {i}"} for i in range(10)]
    path = write_rows(rows, tmp_path / "rows.parquet")
    offsets = [r.offset for r in iter_raw_rows(path)]
    picks = random.Random(0).sample(range(10), 6)
    assert read_rows_at(path, [offsets[i] for i in picks]) == [rows[i] for i in picks]


def test_one_table_of_formats_serves_both_reads(tmp_path):
    assert set(FORMATS) == {"json", "jsonl", "parquet"}
    path = tmp_path / "rows.csv"
    path.write_text("a,b\n1,2\n")
    message = f"{path}: unknown file type (expected .json, .jsonl or .parquet)"
    with pytest.raises(DataLoadError) as whole:
        iter_raw_rows(path)
    with pytest.raises(DataLoadError) as at:
        read_rows_at(path, [0])
    assert str(whole.value) == str(at.value) == message
    # a format named by the caller goes through the same table: the file's text read as JSONL
    jsonl = write_rows(ROWS[:2], tmp_path / "rows.jsonl")
    renamed = jsonl.rename(tmp_path / "rows.txt")
    offsets = [r.offset for r in iter_raw_rows(renamed, "jsonl")]
    assert read_rows_at(renamed, offsets[::-1], "jsonl") == ROWS[:2][::-1]


def test_a_write_that_fails_leaves_the_old_file_whole_and_no_temporary_file(tmp_path):
    path = write_rows(ROWS[:2], tmp_path / "out.jsonl")
    before = path.read_bytes()

    def rows_then_failure():
        yield ROWS[0]
        raise RuntimeError("the disk is gone")

    with pytest.raises(RuntimeError, match="the disk is gone"):
        write_rows(rows_then_failure(), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_write_json_is_readable_utf8_and_keeps_a_lone_surrogate_as_its_escape(tmp_path):
    path = write_json({"data": "café"}, tmp_path / "a.summary.json")
    assert "café" in path.read_text(encoding="utf-8") and json.loads(path.read_text())["data"] == "café"
    bad = write_json({"data": "x\udc80"}, tmp_path / "b.summary.json")  # a path of bytes that are not UTF-8
    assert "\\udc80" in bad.read_text(encoding="utf-8") and json.loads(bad.read_text())["data"] == "x\udc80"


def test_the_lock_stops_a_second_run_and_a_run_leaves_no_lock_file(tmp_path):
    output = tmp_path / "scores.jsonl"
    lock = tmp_path / "scores.lock"
    with (
        lock_held_elsewhere(output),
        pytest.raises(OutputLockedError, match="another run is writing this"),
        output_lock(output),
    ):
        pass
    lock.unlink()
    with pytest.raises(ValueError, match="refused"), output_lock(output):
        assert lock.exists()
        raise ValueError("refused")
    assert not lock.exists()  # created by the refused run, removed by it
    with output_lock(output):
        assert lock.exists()
    assert not lock.exists()  # a finished run removes its lock file too
    lock.touch()  # an older run's
    with output_lock(output):
        pass
    with pytest.raises(ValueError), output_lock(output):
        raise ValueError("refused")
    assert lock.exists()  # not these runs' own: left as it was


def test_a_lock_file_removed_by_its_holder_is_locked_again_on_the_new_file(tmp_path, monkeypatch):
    """A run opens the lock file, its holder (refused) removes it and lets go, another run makes a new one: the
    first must not hold a lock on the removed file while the other holds the new one."""
    output = tmp_path / "scores.jsonl"
    lock = tmp_path / "scores.lock"
    holder = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    newcomer: list[int] = []
    real_flock = fcntl.flock

    def flock_after_the_holder_left(fd, op):
        if not newcomer:  # between this run's open and its flock: the holder removes the file and goes
            lock.unlink()
            os.close(holder)
            newcomer.append(os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL))
            real_flock(newcomer[0], fcntl.LOCK_EX)
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock_after_the_holder_left)
    with pytest.raises(OutputLockedError), output_lock(output):
        pass
    os.close(newcomer[0])


def _squares(k: int, start: int, end: int) -> list[dict]:
    return [{"i": i, "square": i * i} for i in range(start, end)]


def test_shards_resume_where_a_run_stopped_with_the_same_result(tmp_path):
    store = ShardStore(tmp_path / "out.score-shards")
    manifest = {"settings": {"model": "m"}, "num_rows": 10}
    plan = store.resume(manifest, 10, 3, "scored")
    assert plan.bounds == [(0, 3), (3, 6), (6, 9), (9, 10)] and plan.done == []
    finished = []
    with pytest.raises(KeyboardInterrupt):  # stopped during the third shard
        for k, rows in store.run(plan, plan.todo, lambda k, s, e: _squares(k, s, e) if k < 2 else _stop()):
            finished.append((k, rows))
    assert [k for k, _ in finished] == [0, 1]

    computed = []
    plan = store.resume(manifest, 10, 3, "scored")
    assert plan.done == [0, 1] and plan.todo == [2, 3] and plan.rows_done == 6
    new = list(store.run(plan, plan.todo, lambda k, s, e: computed.append(k) or _squares(k, s, e)))
    assert computed == [2, 3]
    assert store.collect(plan, new, "scored") == _squares(0, 0, 10)

    with pytest.raises(ResumeMismatchError, match="different settings"):
        store.resume({**manifest, "settings": {"model": "other"}}, 10, 3, "scored")
    store.clear()
    assert store.resume({**manifest, "settings": {"model": "other"}}, 10, 3, "scored").done == []


def test_collect_names_a_shard_no_process_computed(tmp_path):
    store = ShardStore(tmp_path / "shards")
    plan = store.resume({"n": 4}, 4, 2, "scored")
    with pytest.raises(RuntimeError, match=r"shards \[1\] were not scored by any rank"):
        store.collect(plan, [(0, _squares(0, 0, 2))], "scored")


def _stop() -> list[dict]:
    raise KeyboardInterrupt
