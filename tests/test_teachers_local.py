"""Teachers without a server: the durable cache, ``complete_all`` with the real embedded model as a local teacher,
reflection in both modes through it, and the clear errors of teachers that cannot run."""

from __future__ import annotations

import pytest

from srt_trainer.io import read_rows
from srt_trainer.reflection import inspect_instruction_reflection, parse_response_reflection, reflect
from srt_trainer.teachers import (
    Answer,
    ResponseCache,
    SamplingConfig,
    TeacherArguments,
    TeacherError,
    build_teacher,
    cache_key,
    complete_all,
    load_cache_entries,
)
from srt_trainer.teachers.local import TransformersTeacher

SAMPLING = SamplingConfig(max_tokens=12)
CONVERSATIONS = [
    [{"role": "system", "content": "You answer in one short sentence."}, {"role": "user", "content": q}]
    for q in ("What is the capital of France?", "Name a primary color.", "What is 2 + 2?")
]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Generation of a few tokens gains little from a second thread here, and when the two cores are shared with
    other work, spinning torch threads make it many times slower: one thread for this module, then restored."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def local_teacher(embedded_model, embedded_tokenizer) -> TransformersTeacher:
    return TransformersTeacher("embedded", model_obj=embedded_model, tokenizer=embedded_tokenizer, batch_size=2)


def test_cache_keys_and_torn_last_line(tmp_path):
    ident = {"teacher": "openai", "model": "m"}
    msgs = CONVERSATIONS[0]
    key = cache_key(ident, msgs, SAMPLING)
    assert key == cache_key(dict(ident), [dict(m) for m in msgs], SamplingConfig(max_tokens=12))
    others = {
        cache_key(ident, msgs, SAMPLING, ask=1),
        cache_key({**ident, "model": "n"}, msgs, SAMPLING),
        cache_key(ident, msgs, SamplingConfig(max_tokens=13)),
        cache_key(ident, CONVERSATIONS[1], SAMPLING),
    }
    assert key not in others and len(others) == 4

    path = tmp_path / "cache.jsonl"
    with ResponseCache(path) as cache:
        cache.put("a", Answer("first", prompt_tokens=3, completion_tokens=2))
        cache.put("b", Answer("second"))
    with path.open("a") as f:  # what a kill in the middle of a write leaves
        f.write('{"key": "c", "text": "unfini')
    cache = ResponseCache(path)
    assert cache.torn_lines == 1 and len(cache) == 2 and cache.get("a")["text"] == "first"
    cache.put("c", Answer("third"))
    cache.close()
    assert [e["key"] for e in load_cache_entries(path)] == ["a", "b", "c"]  # the torn tail was cut, not glued to
    assert all(read_rows(path))


@pytest.mark.parametrize("mode", ["group", "always"])
def test_cache_lines_are_readable_at_once_and_fsynced(tmp_path, mode):
    path = tmp_path / f"{mode}.jsonl"
    cache = ResponseCache(path, fsync=mode)
    for i in range(20):
        cache.put(f"k{i}", Answer(f"answer {i}"))
        # flushed before put returns: another process (a resumed run) reads it even if this one is killed now
        assert len(load_cache_entries(path)) == i + 1
    cache.close()
    assert 1 <= cache.fsyncs <= 21 if mode == "group" else cache.fsyncs == 21  # group commit batches them
    assert len(ResponseCache(path)) == 20
    with pytest.raises(ValueError, match="fsync must be one of"):
        ResponseCache(path, fsync="sometimes")


def test_complete_all_caches_every_answer_and_resumes_exactly(local_teacher, embedded_dir, tmp_path):
    cache = tmp_path / "teacher-cache.jsonl"
    results, counts = complete_all(local_teacher, CONVERSATIONS, SAMPLING, cache, progress=False)
    assert [r.cached for r in results] == [False] * 3 and all(r.text for r in results)
    assert (counts.asked, counts.cached, counts.requests, counts.failed) == (3, 0, 3, 0)
    assert counts.completion_tokens == sum(r.completion_tokens for r in results) > 0
    assert counts.prompt_tokens == sum(r.prompt_tokens for r in results) > 30
    assert "asked 3, cached 0" in counts.format()
    entries = load_cache_entries(cache)
    assert sorted(e["text"] for e in entries) == sorted(r.text for r in results)

    # a fresh teacher of the same model, never loaded: everything comes from the cache, nothing is generated
    fresh = TransformersTeacher("embedded")
    again, counts2 = complete_all(fresh, CONVERSATIONS, SAMPLING, cache, progress=False)
    assert [r.text for r in again] == [r.text for r in results] and all(r.cached and r.attempts == 0 for r in again)
    assert (counts2.asked, counts2.cached, counts2.requests) == (0, 3, 0) and fresh._model is None

    # a prompt that occurs twice in one run is sent once
    twice = [CONVERSATIONS[0], CONVERSATIONS[1], CONVERSATIONS[0]]
    dup, counts_dup = complete_all(local_teacher, twice, SamplingConfig(max_tokens=5), None, progress=False)
    assert (counts_dup.asked, counts_dup.cached, counts_dup.shared, counts_dup.requests) == (2, 0, 1, 2)
    assert dup[2].text == dup[0].text and (dup[0].attempts, dup[2].attempts, dup[2].cached) == (1, 0, True)

    # other settings are other requests: one new answer per conversation, appended
    _, counts3 = complete_all(local_teacher, CONVERSATIONS[:1], SamplingConfig(max_tokens=6), cache, progress=False)
    assert (counts3.asked, counts3.cached) == (1, 0) and len(load_cache_entries(cache)) == 4


def test_answers_cut_at_the_token_limit_are_counted(local_teacher, tmp_path):
    """An answer stopped by the token limit is used as it is, but counted (and remembered by the cache); one that
    ends with the model's stop token is not."""
    cache = tmp_path / "cut.cache.jsonl"
    one = SamplingConfig(max_tokens=1)
    results, counts = complete_all(local_teacher, CONVERSATIONS, one, cache, progress=False)
    assert all(r.cut and r.completion_tokens == 1 for r in results) and counts.cut == 3
    assert "3 answers cut at the token limit" in counts.format()
    again, counts2 = complete_all(TransformersTeacher("embedded"), CONVERSATIONS, one, cache, progress=False)
    assert counts2.cached == 3 and counts2.cut == 3 and all(r.cut for r in again)
    longer, counts3 = complete_all(local_teacher, CONVERSATIONS, SamplingConfig(max_tokens=24), None, progress=False)
    assert all(r.cut == (r.completion_tokens == 24) for r in longer) and counts3.cut == sum(r.cut for r in longer)
    assert counts3.cut < 3  # one short answer at least ends by itself


def test_unusable_answers_are_reasked_as_distinct_requests(local_teacher, tmp_path):
    cache = tmp_path / "cache.jsonl"
    results, counts = complete_all(
        local_teacher, CONVERSATIONS[:2], SAMPLING, cache, validate=lambda t: "@@" in t, max_reasks=2, progress=False
    )
    assert (counts.asked, counts.reasked, counts.invalid, counts.failed) == (6, 4, 2, 0)
    assert all(r.valid is False and r.reasks == 2 and len(r.texts) == 3 and r.attempts == 3 for r in results)
    assert len(load_cache_entries(cache)) == 6  # each ask is its own entry
    # re-asks of a greedy request sample (a greedy teacher would repeat itself), so the answers may differ
    again, counts2 = complete_all(
        local_teacher, CONVERSATIONS[:2], SAMPLING, cache, validate=lambda t: "@@" in t, max_reasks=2, progress=False
    )
    assert (counts2.asked, counts2.cached) == (0, 6) and [r.texts for r in again] == [r.texts for r in results]
    # a validator that accepts the first answer: nothing re-asked
    ok, counts3 = complete_all(local_teacher, CONVERSATIONS[:2], SAMPLING, cache, validate=bool, progress=False)
    assert counts3.reasked == 0 and counts3.cached == 2 and all(r.valid for r in ok)


def test_reflection_with_the_embedded_teacher_both_modes(local_teacher, alpaca_rows, tmp_path):
    rows = [dict(alpaca_rows[i], row_index=i) for i in (7, 19)]
    asking = TeacherArguments(teacher_max_tokens=16)
    q = reflect(rows, "instruction", local_teacher, asking, cache_path=tmp_path / "q.jsonl", progress=False)
    assert q.variant == "Q" and len(q.rows) == 2 and sum(q.statuses.values()) == 2
    for src, out, raw in zip(rows, q.rows, q.raw, strict=True):
        assert out["source_index"] == src["row_index"] and out["variant"] == "Q"
        assert (out["teacher"], out["teacher_model"]) == ("transformers", "embedded")
        assert raw["prefix"] == "[New Instruction]" and raw["texts"]  # prefilled: a small teacher starts on format
        # each part on its own, as released: a usable part is kept, the other stays original
        fields = inspect_instruction_reflection(raw["prefix"] + raw["texts"][-1])
        folded = f"{src['instruction']}\n{src['input']}" if src["input"] else src["instruction"]
        if out["reflection_status"] == "ok":
            assert (out["instruction"], out["input"], out["output"]) == (
                fields.instruction if fields.instruction is not None else folded,
                "",
                fields.output if fields.output is not None else src["output"],
            )
            kept = {(True, True): None, (True, False): "answer", (False, True): "instruction"}
            assert out["reflection_fallback"] == kept[(fields.instruction is not None, fields.output is not None)]
        else:  # fallback keeps the original instruction (the input folded into it) and answer
            assert out["reflection_status"] == "fallback" and out["reflection_fallback"] == "row"
            assert fields.instruction is None and fields.output is None and len(raw["texts"]) == 2
            assert (out["instruction"], out["output"]) == (folded, src["output"])
            assert "no usable" in out["reflection_error"]

    qa = reflect(q.rows, "response", local_teacher, asking, cache_path=tmp_path / "qa.jsonl", progress=False)
    assert qa.variant == "QA"
    for q_row, out, raw in zip(q.rows, qa.rows, qa.raw, strict=True):
        assert out["source_index"] == q_row["source_index"] and out["instruction"] == q_row["instruction"]
        assert out["q_reflection_status"] == q_row["reflection_status"]
        better = parse_response_reflection(raw["prefix"] + raw["texts"][-1])
        assert out["output"] == (better if out["reflection_status"] == "ok" else q_row["output"])
    assert qa.statuses["ok"] >= 1  # prefilled with [Better Answer], even a 135M model gives a usable answer


def test_teachers_that_cannot_run_say_why(monkeypatch):
    with pytest.raises(TeacherError, match=r"pip install 'srt-trainer\[vllm\]'"):
        build_teacher("vllm", model="embedded")  # vLLM is not installed here
    with pytest.raises(TeacherError, match="needs a model name"):
        build_teacher("openai", base_url="http://127.0.0.1:9/v1")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(TeacherError, match="set OPENAI_API_KEY"):
        build_teacher("openai", model="gpt-4o-mini")
    with pytest.raises(ValueError, match="unknown teacher"):
        build_teacher("claude")
    with pytest.raises(ValueError, match="--base-url is for the openai teacher"):
        build_teacher("transformers", base_url="http://127.0.0.1:9/v1")
