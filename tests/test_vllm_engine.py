"""vLLM's offline engine for real (its CPU build, in the vLLM environment): `srt reflect --teacher vllm` answers every
row, caches, resumes after a stop and matches `--teacher transformers` at temperature 0 in float32; `srt eval
generate --engine vllm` answers the test items as `--engine transformers` does.

One engine serves the whole module: starting one takes 20-30 s and 4 GiB on the 2-core machine, so each command's
request for ``vllm.LLM(...)`` gets the engine started here, after checking that it asks for the same model and
settings. Everything else (the commands, the teacher, the wrapper, the engine's answers) is the real thing.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from srt_trainer.cli import main as srt
from srt_trainer.io import read_rows, write_rows
from srt_trainer.teachers import ResponseCache, load_cache_entries
from srt_trainer.templates import get_template
from tests.processes import interrupted_after, interrupted_after_shards
from tests.vllm_support import CPU_ENGINE, explain_differences

pytestmark = pytest.mark.vllm

ROWS = 6
# the reflection prompts of these rows take 156-189 tokens: the release's budget rule (context - prompt tokens)
# gives each row its own answer budget of 31-64 tokens, so the engine is asked in several groups
CONTEXT = 220


@pytest.fixture(scope="module")
def engine_requests(embedded_dir: Path):
    """The module's one real engine (the embedded student, float32, eager, 1 GiB KV cache); yields the arguments
    of every ``vllm.LLM(...)`` call the commands made, each answered with that engine."""
    import vllm

    engine = vllm.LLM(model=str(embedded_dir), dtype="float32", **CPU_ENGINE)
    requests: list[dict] = []

    def same_engine(**kwargs):
        requests.append(kwargs)
        assert kwargs["model"] == str(embedded_dir) and kwargs["dtype"] == "float32", kwargs
        assert {k: kwargs.get(k) for k in CPU_ENGINE} == CPU_ENGINE, kwargs
        return engine

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vllm, "LLM", same_engine)
        yield requests
    engine.llm_engine.engine_core.shutdown()


def _reflect(data: Path, out: Path, *teacher: str) -> int:
    argv = ["reflect", "--mode", "response", "--data", str(data), "--output", str(out), "--no_progress"]
    return srt([*argv, "--teacher_context_length", str(CONTEXT), "--max_reasks", "0", *teacher])


def test_vllm_teacher_answers_caches_resumes_and_matches_transformers(
    short_rows, embedded_dir, engine_requests, tmp_path: Path
):
    data = tmp_path / "rows.jsonl"
    write_rows(short_rows[:ROWS], data)
    teacher = ("--teacher", "vllm", "--teacher_vllm_options", json.dumps(CPU_ENGINE))
    out, cache = tmp_path / "vllm" / "a.jsonl", tmp_path / "vllm" / "a.teacher-cache.jsonl"

    # stopped dead after three answers reached the cache (the state a kill leaves), then the same command again
    with interrupted_after(ResponseCache, "put", 3, "answers"):
        _reflect(data, out, *teacher)
    assert len(load_cache_entries(cache)) == 3 and not out.exists()
    assert _reflect(data, out, *teacher) == 0
    summary = json.loads((tmp_path / "vllm" / "a.summary.json").read_text())
    assert summary["counts"]["cached"] == 3 and summary["counts"]["asked"] == ROWS - 3
    assert summary["teacher"] == {"teacher": "vllm", "model": "embedded", "dtype": "float32"}
    rows = read_rows(out)
    assert [r["source_index"] for r in rows] == list(range(ROWS))
    assert summary["failed"] == 0 and all(r["reflection_status"] in ("ok", "fallback") for r in rows)
    entries = load_cache_entries(cache)
    assert len(entries) == ROWS and len({e["key"] for e in entries}) == ROWS  # each row answered once
    # each answer had the release's budget, CONTEXT minus the prompt's tokens as vLLM counted them: the teacher's
    # own count (the model's tokenizer and chat template) is the engine's
    assert all(e["prompt_tokens"] + e["completion_tokens"] <= CONTEXT for e in entries)
    cut = [e for e in entries if e["cut"]]
    assert cut and all(e["prompt_tokens"] + e["completion_tokens"] == CONTEXT for e in cut)
    assert len({CONTEXT - e["prompt_tokens"] for e in entries}) > 1  # several budgets, so several engine calls

    # once more: everything from the cache, the same bytes, and no engine started
    before, started = out.read_bytes(), len(engine_requests)
    assert _reflect(data, out, *teacher) == 0
    assert out.read_bytes() == before and len(engine_requests) == started

    # the transformers teacher on the same rows, greedy in float32, gives the same answers (on this machine all
    # six; elsewhere an answer may part from the other only at a near-tie, which is reported)
    ref = tmp_path / "transformers" / "a.jsonl"
    assert _reflect(data, ref, "--teacher", "transformers", "--teacher_dtype", "float32") == 0
    by_vllm = [r["texts"][0] for r in read_rows(tmp_path / "vllm" / "a.raw.jsonl")]
    by_transformers = [r["texts"][0] for r in read_rows(tmp_path / "transformers" / "a.raw.jsonl")]
    prompts = [_rendered(embedded_dir, r) for r in short_rows[:ROWS]]
    _same_or_near_ties(embedded_dir, zip(prompts, by_vllm, by_transformers, strict=True), "reflect")
    same = [k for k in range(ROWS) if by_vllm[k] == by_transformers[k]]
    by_reference = read_rows(ref)
    assert [by_reference[k]["output"] for k in same] == [rows[k]["output"] for k in same]


def test_eval_generate_with_vllm_matches_transformers(data_dir, embedded_dir, engine_requests, tmp_path: Path):
    def generate(out: Path, *engine: str) -> int:
        argv = ["eval", "generate", "--test_sets", str(data_dir / "eval"), "--limit", "1", "--max_new_tokens", "24"]
        return srt([*argv, "--shard_size", "3", "--output", str(out), *engine])

    out = tmp_path / "vllm.jsonl"
    engine = ("--engine", "vllm", "--vllm_options", json.dumps(CPU_ENGINE))
    with interrupted_after_shards(1):  # one item of each of the five sets, in two shards: stopped between them
        generate(out, *engine)
    assert generate(out, *engine) == 0
    summary = json.loads((tmp_path / "vllm.summary.json").read_text())
    assert summary["items"] == 5 and summary["generated_now"] == 2  # the second shard only
    assert engine_requests[-1]["seed"] == 0  # the run's seed reaches the engine

    ref = tmp_path / "transformers.jsonl"
    assert generate(ref, "--engine", "transformers") == 0
    by_vllm, by_transformers = read_rows(out), read_rows(ref)
    assert [r["id"] for r in by_vllm] == [r["id"] for r in by_transformers]
    assert all(r["output"] for r in by_vllm)
    template = get_template("vicuna")
    prompts = [template.prompt(r["instruction"], r["input"]) for r in by_vllm]
    outputs = zip(prompts, [r["output"] for r in by_vllm], [r["output"] for r in by_transformers], strict=True)
    _same_or_near_ties(embedded_dir, outputs, "eval generate")


def _rendered(model_dir: Path, row: dict) -> str:
    """The prompt the teacher continues for a row: the response-reflection chat, started with its tag."""
    from srt_trainer.models import load_tokenizer
    from srt_trainer.reflection import load_prompt

    messages = load_prompt("response").messages(
        row["instruction"].strip(), row["input"].strip(), row["output"].strip(), prefill=True
    )
    return load_tokenizer(model_dir).apply_chat_template(messages, tokenize=False, continue_final_message=True)


def _same_or_near_ties(model_dir: Path, triples, what: str) -> None:
    """vLLM's and transformers' answers are equal, or part only at near-ties (reported as a warning)."""
    differ = [t for t in triples if t[1] != t[2]]
    if differ:
        from srt_trainer.models import load_student, load_tokenizer

        model = load_student(model_dir, dtype="float32", device="cpu")
        lines = explain_differences(differ, model, load_tokenizer(model_dir))
        warnings.warn(
            f"{what}: {len(lines)} answers of vLLM part from transformers' at near-ties: {lines}", stacklevel=2
        )
