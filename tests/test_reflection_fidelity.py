"""Reflection as the paper's release ran it (Li et al. 2024, Sections 2-3), each difference switchable: field-by-field
fallback of Q, the rejection rules for unusable parts, the teacher's view of a pair (stripped, input folded, answer
cut), and the per-request answer budget. Real rows from tests/data; a scripted teacher gives the replies a real
teacher cannot be made to give on demand."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import pytest
from trl import TrlParser

from srt_trainer.reflection import (
    PromptTemplateError,
    ReflectArguments,
    ReflectConfigError,
    ReflectionArguments,
    inspect_instruction_reflection,
    inspect_tagged,
    load_prompt,
    reflect,
    run_reflect,
    teacher_view_of,
)
from srt_trainer.reflection.runner import ReflectionInputError
from srt_trainer.teachers import Answer, SamplingConfig, Teacher, TeacherArguments, TeacherConfigError
from srt_trainer.teachers.base import approx_conversation_tokens, approx_text_tokens


class ScriptedTeacher(Teacher):
    """Answers each conversation with ``reply(user_message, ask)``; records every request it was sent."""

    kind = "scripted"
    model_name = "script"

    def __init__(self, reply: Callable[[str, int], str]) -> None:
        self.reply = reply
        self.requests: list[tuple[list[dict[str, str]], SamplingConfig]] = []
        self.asks: dict[str, int] = {}

    def generate(self, conversations: Sequence[list[dict[str, str]]], sampling: SamplingConfig, on_answer) -> None:
        for j, conversation in enumerate(conversations):
            self.requests.append((conversation, sampling))
            user = next(m["content"] for m in conversation if m["role"] == "user")
            ask = self.asks[user] = self.asks.get(user, -1) + 1
            on_answer(j, Answer(self.reply(user, ask)))


def _rows(alpaca_rows: list[dict], *indices: int) -> list[dict]:
    return [dict(alpaca_rows[i], source_index=i) for i in indices]


def _by_instruction(replies: dict[str, str], default: str = "") -> Callable[[str, int], str]:
    """A reply chosen by which original instruction the prompt shows."""

    def reply(user: str, ask: int) -> str:
        return next((text for key, text in replies.items() if key in user), default)

    return reply


NO_PREFILL = TeacherArguments(prefill="off")  # a scripted teacher answers whole replies
AS_IS = ReflectionArguments(teacher_view="as_is")
GOOD = "[New Instruction] Plan a week of meals for a vegetarian marathon runner. [End]\n[New Answer] Day 1: ... [End]"


# --- 1 and 2: field-by-field fallback and the rejection rules ---------------------------------------------------------


@pytest.fixture
def four_rows(alpaca_rows):
    # real rows without an input, so the instruction the teacher sees is the row's own
    rows = [r for r in _rows(alpaca_rows, *range(40)) if not r["input"]][:5]
    assert len(rows) == 5
    return rows


def _four_replies(rows: list[dict]) -> dict[str, str]:
    return {
        rows[0]["instruction"]: GOOD,
        # a usable new instruction, an answer that is only "N/A"
        rows[1]["instruction"]: "[New Instruction] Compare three sorting algorithms by stability. [End]\n"
        "[New Answer] N/A [End]",
        # the instruction still the template's placeholder, a usable answer
        rows[2]["instruction"]: "[New Instruction] your instruction [End]\n[New Answer] A full, usable answer. [End]",
        # nothing usable at all, on the first ask and on the re-ask
        rows[3]["instruction"]: "I cannot help with that.",
        # an answer that merely mentions N/A: usable under the whole-part rule, rejected by the release's substring
        rows[4]["instruction"]: "[New Instruction] Fill in the missing cells of a table. [End]\n"
        "[New Answer] Cells with no data are written N/A; the others hold the yearly totals. [End]",
    }


def test_q_keeps_each_usable_part_and_counts_each_case(four_rows):
    teacher = ScriptedTeacher(_by_instruction(_four_replies(four_rows)))
    result = reflect(four_rows, "instruction", teacher, NO_PREFILL, progress=False)
    rows = result.rows
    assert [r["reflection_status"] for r in rows] == ["ok", "ok", "ok", "fallback", "ok"]
    assert [r["reflection_fallback"] for r in rows] == [None, "answer", "instruction", "row", None]
    # a new instruction with the original answer (the QA step writes its answer)
    assert rows[1]["instruction"] == "Compare three sorting algorithms by stability."
    assert rows[1]["output"] == four_rows[1]["output"] and "n/a" in rows[1]["reflection_error"]
    # the original instruction with the new answer
    assert rows[2]["instruction"] == four_rows[2]["instruction"] and rows[2]["output"] == "A full, usable answer."
    assert (rows[3]["instruction"], rows[3]["output"]) == (four_rows[3]["instruction"], four_rows[3]["output"])
    assert rows[4]["output"].startswith("Cells with no data")
    assert all(r["input"] == "" for r in rows)
    assert result.fallbacks == {"answer_kept": 1, "instruction_kept": 1, "row": 1}
    assert result.rejected == {
        "answer/missing": 1,
        "answer/n/a": 1,
        "instruction/missing": 1,
        "instruction/placeholder": 1,
    }
    # as released, a reply is asked again only when no part of it is usable
    assert result.counts.reasked == 1 and teacher.asks[next(iter(teacher.asks))] == 0
    assert "originals kept: answer_kept 1, instruction_kept 1, row 1" in result.format()


def test_whole_row_fallback_and_the_release_substring_rule(four_rows):
    teacher = ScriptedTeacher(_by_instruction(_four_replies(four_rows)))
    release = ReflectionArguments(fallback="row", reject_rule="substring")
    result = reflect(four_rows, "instruction", teacher, NO_PREFILL, release, progress=False)
    assert [r["reflection_status"] for r in result.rows] == ["ok", "fallback", "fallback", "fallback", "fallback"]
    for row, source in zip(result.rows[1:], four_rows[1:], strict=True):
        assert (row["instruction"], row["output"]) == (source["instruction"], source["output"])
    assert result.fallbacks == {"answer_kept": 0, "instruction_kept": 0, "row": 4}
    # under the release's test an answer that mentions N/A anywhere is unusable
    assert result.rejected["answer/n/a"] == 2
    # row fallback re-asks every row with an unusable part
    assert result.counts.reasked == 4


@pytest.mark.parametrize(
    ("text", "tag", "whole", "substring"),
    [
        ("[New Answer] N/A [End]", "New Answer", (None, "n/a"), (None, "n/a")),
        # the release's test is case-sensitive
        ("[New Answer] **n/a.** [End]", "New Answer", (None, "n/a"), ("**n/a.**", None)),
        ("[New Answer] Not applicable. [End]", "New Answer", (None, "n/a"), ("Not applicable.", None)),
        ("[New Answer] Use N/A for missing values. [End]", "New Answer", ("Use N/A for missing values.", None), None),
        ("[New Instruction] Your new instruction. [End]", "New Instruction", (None, "placeholder"), None),
        (
            "[New Instruction] Rewrite your instruction manual for clarity. [End]",
            "New Instruction",
            ("Rewrite your instruction manual for clarity.", None),
            (None, "placeholder"),
        ),
        ("[New Answer] [End]", "New Answer", (None, "missing"), (None, "missing")),
        ("no tags at all", "New Answer", (None, "missing"), (None, "missing")),
        # the release rejected "N/A" in Q's answer only; response reflection keeps it, under either rule
        ("[Better Answer] N/A [End]", "Better Answer", ("N/A", None), ("N/A", None)),
        # a repeated tag: the first usable answer, or (as released) no answer at all
        (
            "[Better Answer] One. [End] [Better Answer] Two. [End]",
            "Better Answer",
            ("One.", None),
            (None, "not exactly one tag"),
        ),
    ],
)
def test_rejection_rules(text, tag, whole, substring):
    assert inspect_tagged(text, tag) == whole
    if substring is not None:
        assert inspect_tagged(text, tag, rule="substring") == substring


def test_a_later_usable_segment_wins_over_a_rejected_one():
    fields = inspect_instruction_reflection(
        "[New Instruction] your instruction [End] [New Answer] N/A [End]\n"
        "[New Instruction] Explain TCP slow start. [End] [New Answer] The window doubles each round trip. [End]"
    )
    assert (fields.instruction, fields.output) == ("Explain TCP slow start.", "The window doubles each round trip.")
    assert fields.instruction_rejected is None and fields.output_rejected is None


# --- 3: what the teacher sees -----------------------------------------------------------------------------------------


def test_instruction_reflection_sees_the_input_folded_and_q_has_none(alpaca_rows):
    rows = _rows(alpaca_rows, 0, 1, 4)  # two real rows with an input, one without
    assert rows[0]["input"] and rows[1]["input"] and not rows[2]["input"]
    teacher = ScriptedTeacher(lambda user, ask: "[New Instruction] x [End] [New Answer] N/A [End]")
    result = reflect(rows, "instruction", teacher, NO_PREFILL, progress=False)
    users = [next(m["content"] for m in c if m["role"] == "user") for c, _ in teacher.requests]
    for user, row in zip(users, rows, strict=True):
        assert user.startswith(f"[Instruction]\n{row['instruction']}\n{row['input']}".rstrip("\n") + "\n")
        assert "[Input]" not in user  # no input section: the input is part of the instruction
    assert result.view == {"stripped": 0, "input_folded": 2, "answer_cut": 0}
    assert all(r["input"] == "" for r in result.rows)
    # no usable answer: the new instruction keeps the original answer, and the row has no input
    assert [r["output"] for r in result.rows] == [r["output"] for r in rows]

    # the earlier view: the input in its own section, and Q takes a tagged [New Input]
    teacher = ScriptedTeacher(lambda user, ask: "[New Instruction] x [End] [New Input] y [End] [New Answer] z [End]")
    result = reflect(rows, "instruction", teacher, NO_PREFILL, AS_IS, progress=False)
    user = next(m["content"] for m in teacher.requests[0][0] if m["role"] == "user")
    assert f"[Input]\n{rows[0]['input']}" in user and result.view["input_folded"] == 0
    assert [r["input"] for r in result.rows] == ["y", "y", "y"]


def test_the_released_compressed_rows_are_shown_as_they_are(data_dir, alpaca_rows):
    """The release reflected its compressed file (the input already folded in by ChatGPT): nothing to fold there."""
    compressed = json.loads((data_dir / "alpaca_slice_compressed.json").read_text())
    teacher = ScriptedTeacher(lambda user, ask: "")
    for row in compressed:
        view = teacher_view_of(row, "instruction", "release", teacher)
        assert (view.instruction, view.input, view.output) == (row["instruction"], "", row["output"])
        assert not (view.stripped or view.input_folded or view.answer_cut)


def test_fields_are_stripped_as_released(alpaca_rows):
    row = dict(alpaca_rows[0], source_index=0)
    padded = {**row, "instruction": "  " + row["instruction"] + "\n", "output": row["output"] + " \n\n"}
    teacher = ScriptedTeacher(lambda user, ask: GOOD)
    released = reflect([padded], "response", teacher, NO_PREFILL, progress=False)
    user = next(m["content"] for m in teacher.requests[0][0] if m["role"] == "user")
    assert user.startswith(f"[Instruction]\n{row['instruction']}\n\n[Input]\n{row['input']}\n\n")
    assert f"{row['output']}\n[The End of Answer]" in user and released.view["stripped"] == 1
    teacher = ScriptedTeacher(lambda user, ask: GOOD)
    reflect([padded], "response", teacher, NO_PREFILL, AS_IS, progress=False)
    user = next(m["content"] for m in teacher.requests[0][0] if m["role"] == "user")
    assert user.startswith("[Instruction]\n  " + row["instruction"] + "\n")


def test_an_overlong_pair_loses_the_end_of_its_answer(alpaca_rows):
    i = max(range(len(alpaca_rows)), key=lambda k: len(alpaca_rows[k]["output"]))
    rows = _rows(alpaca_rows, i, 4)
    row = rows[0]
    teacher = ScriptedTeacher(lambda user, ask: "[New Instruction] x [End] [New Answer] y [End]")
    limit = 200
    pair = row["instruction"] + row["input"] + row["output"]
    gap = approx_text_tokens(pair) - limit
    assert gap > 0
    short = ReflectionArguments(max_pair_tokens=limit)
    result = reflect(rows, "instruction", teacher, NO_PREFILL, short, progress=False)
    user = next(m["content"] for m in teacher.requests[0][0] if m["role"] == "user")
    # the release's rule: as many characters as there are tokens too many, from the answer's end only
    assert f"[The Start of Answer]\n{row['output'][:-gap]}\n[The End of Answer]" in user
    assert user.startswith(f"[Instruction]\n{row['instruction']}")
    assert result.view["answer_cut"] == 1 and result.raw[0]["answer_cut"] == gap and "answer_cut" not in result.raw[1]
    teacher = ScriptedTeacher(lambda user, ask: "")
    result = reflect(rows, "instruction", teacher, NO_PREFILL, AS_IS, progress=False)
    assert row["output"] in teacher.requests[0][0][-1]["content"] and result.view["answer_cut"] == 0


def test_a_prompt_file_without_an_input_field_runs_on_folded_rows(alpaca_rows, tmp_path):
    """A template laid out as the release's instruction prompt (no input field: its rows were compressed)."""
    path = tmp_path / "release_style.yaml"
    path.write_text(
        "system: You check instructions.\n"
        'user: "[Instruction]\\n{instruction}\\n\\n[The Start of Answer]\\n{output}\\n\\n'
        '[The End of Answer]\\n\\n[System]\\nWrite [New Instruction] ... [End] and [New Answer] ... [End]\\n\\n"\n'
    )
    rows = _rows(alpaca_rows, 0, 4)
    with pytest.raises(PromptTemplateError, match="input"):
        load_prompt("instruction", path)
    prompt = load_prompt("instruction", path, needs_input=False)
    teacher = ScriptedTeacher(lambda user, ask: GOOD)
    result = reflect(rows, "instruction", teacher, NO_PREFILL, prompt=prompt, progress=False)
    user = teacher.requests[0][0][1]["content"]
    assert user.startswith(f"[Instruction]\n{rows[0]['instruction']}\n{rows[0]['input']}\n\n[The Start of Answer]")
    assert result.statuses["ok"] == 2
    with pytest.raises(ReflectionInputError, match="input"):
        reflect(rows, "instruction", teacher, NO_PREFILL, AS_IS, prompt=prompt, progress=False)


# --- 4: the answer budget ---------------------------------------------------------------------------------------------


def test_release_answer_budget_per_request(alpaca_rows):
    from srt_trainer.teachers.openai_teacher import OpenAITeacher

    sampling = TeacherArguments().sampling()
    assert (sampling.max_tokens, sampling.context_length) == (None, 4096)
    assert sampling.max_new_tokens(100) == 2048 and sampling.max_new_tokens(3000) == 1096
    assert sampling.max_new_tokens(5000) == 1  # a prompt over the context still asks for one token
    assert SamplingConfig(max_tokens=77).max_new_tokens(3000) == 77  # the explicit override
    # the context decides answers only without a fixed limit: caches made with one keep their keys
    assert "context_length" not in SamplingConfig(max_tokens=77).as_dict()
    assert SamplingConfig().as_dict()["context_length"] == 4096

    teacher = OpenAITeacher("gpt-3.5-turbo", base_url="http://127.0.0.1:9/v1")
    rows = _rows(alpaca_rows, 4, max(range(len(alpaca_rows)), key=lambda k: len(alpaca_rows[k]["output"])))
    small = SamplingConfig(context_length=1024)
    budgets = []
    for row in rows:
        messages = [{"role": "system", "content": "s"}, {"role": "user", "content": row["output"]}]
        budgets.append(teacher.request_kwargs(messages, small)["max_tokens"])
        assert budgets[-1] == max(1, min(2048, 1024 - approx_conversation_tokens(messages)))
    assert budgets[0] > budgets[1]  # each request its own budget
    assert teacher.request_kwargs(messages, SamplingConfig(max_tokens=9))["max_tokens"] == 9


def test_local_teacher_counts_exactly_and_groups_by_budget(embedded_tokenizer, alpaca_rows, monkeypatch):
    from types import SimpleNamespace

    from srt_trainer import generation
    from srt_trainer.teachers.local import TransformersTeacher

    # no weights needed: generation is replaced below, and counting needs only the tokenizer
    teacher = TransformersTeacher(model_obj=SimpleNamespace(dtype="float32"), tokenizer=embedded_tokenizer)
    conversations = [[{"role": "user", "content": r["output"]}] for r in _rows(alpaca_rows, 4, 147)]
    rendered = [teacher.render(c) for c in conversations]
    exact = [len(embedded_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in rendered]
    assert [teacher.count_prompt_tokens(c) for c in conversations] == exact
    calls = []

    def fake_generate(model, tokenizer, prompts, max_new_tokens, **kwargs):
        calls.append((list(prompts), max_new_tokens))
        return []

    monkeypatch.setattr(generation, "generate_batched", fake_generate)
    teacher.generate(conversations, SamplingConfig(context_length=600), lambda j, a: None)
    assert sorted(calls, key=lambda c: c[1]) == sorted(
        [([t], min(2048, 600 - n)) for t, n in zip(rendered, exact, strict=True)], key=lambda c: c[1]
    )
    calls.clear()
    teacher.generate(conversations, SamplingConfig(max_tokens=5, context_length=600), lambda j, a: None)
    assert calls == [(rendered, 5)]


def test_vllm_teacher_gives_each_request_its_budget(alpaca_rows, embedded_tokenizer):
    """vLLM's chat() takes one sampling per call: requests are grouped by budget (and prefill), each answer goes back
    to its own position. vLLM lives in its own environment (tests/test_vllm_engine.py runs the real engine there),
    so here a recording engine stands in for it; the budgets are the real code's, counted with the model's tokenizer
    as the transformers teacher counts them."""
    from types import SimpleNamespace

    from srt_trainer.teachers.local import TransformersTeacher
    from srt_trainer.teachers.vllm_teacher import VLLMTeacher

    calls = []

    class RecordingEngine:
        def chat(self, conversations, *, max_tokens, continue_final_message, **sampling):
            calls.append((len(conversations), max_tokens, continue_final_message))
            return [
                SimpleNamespace(text=c[-1]["content"][:5], prompt_tokens=1, completion_tokens=1, cut=max_tokens == 7)
                for c in conversations
            ]

    teacher = object.__new__(VLLMTeacher)  # skips loading vLLM; generate() is what is under test
    teacher.model_name, teacher.chunk_size, teacher._engine = "embedded", 2, RecordingEngine()
    teacher._tokenizer = embedded_tokenizer
    longest = max(range(len(alpaca_rows)), key=lambda k: len(alpaca_rows[k]["output"]))
    rows = _rows(alpaca_rows, 4, longest, 5, 6)
    conversations = [[{"role": "user", "content": r["output"]}] for r in rows]
    conversations.append([*conversations[1], {"role": "assistant", "content": "[Better Answer]"}])  # a prefill
    answers, cut = {}, {}
    teacher.generate(conversations, SamplingConfig(context_length=1024), lambda j, a: answers.setdefault(j, a.text))
    assert answers == {j: c[-1]["content"][:5] for j, c in enumerate(conversations)}
    local = TransformersTeacher(tokenizer=embedded_tokenizer)  # the exact count of a local teacher
    budgets = [max(1, min(2048, 1024 - local.count_prompt_tokens(c))) for c in conversations]
    expected = {}
    for c, b in zip(conversations, budgets, strict=True):
        key = (b, c[-1]["role"] == "assistant")
        expected[key] = expected.get(key, 0) + 1
    got = {}
    for n, b, prefill in calls:
        assert n <= 2  # chunks of chunk_size
        got[(b, prefill)] = got.get((b, prefill), 0) + n
    assert got == expected and len({b for b, _ in got}) > 1
    calls.clear()
    teacher.generate(conversations[:4], SamplingConfig(max_tokens=7), lambda j, a: cut.setdefault(j, a.cut))
    assert calls == [(2, 7, False), (2, 7, False)] and cut == dict.fromkeys(range(4), True)  # vLLM's "length"


# --- the options, and the counts in the summary ---------------------------------------------------------------------


def test_options_parse_and_check():
    _, args, teacher = TrlParser((ReflectArguments, ReflectionArguments, TeacherArguments)).parse_args_and_config(
        [
            "--mode",
            "instruction",
            "--data",
            "d.json",
            "--output",
            "q.jsonl",
            "--fallback",
            "row",
            "--reject-rule",
            "substring",
            "--teacher-view",
            "as_is",
            "--max-pair-tokens",
            "1024",
            "--teacher-context-length",
            "8192",
        ]
    )
    assert (args.fallback, args.reject_rule, args.teacher_view, args.max_pair_tokens) == (
        "row",
        "substring",
        "as_is",
        1024,
    )
    assert teacher.sampling().context_length == 8192 and teacher.teacher_max_tokens is None
    with pytest.raises(ReflectConfigError):
        ReflectionArguments(max_pair_tokens=0)
    with pytest.raises(TeacherConfigError):
        TeacherArguments(teacher_context_length=0)
    for bad in ({"fallback": "half"}, {"reject_rule": "regex"}, {"teacher_view": "raw"}):
        with pytest.raises(ReflectConfigError, match=f"unknown --{next(iter(bad))}"):
            ReflectionArguments(**bad)


def test_summary_counts_every_case(four_rows, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text(
        "".join(json.dumps({k: r[k] for k in ("instruction", "input", "output")}) + "\n" for r in four_rows)
    )
    teacher = ScriptedTeacher(_by_instruction(_four_replies(four_rows)))
    run = run_reflect(
        ReflectArguments(mode="instruction", data=str(data), output=str(tmp_path / "q.jsonl"), progress=False),
        TeacherArguments(prefill="off"),
        teacher=teacher,
    )
    summary = json.loads((tmp_path / "q.summary.json").read_text())
    assert summary["fallbacks"] == {"answer_kept": 1, "instruction_kept": 1, "row": 1}
    assert summary["rejected"]["answer/n/a"] == 1 and summary["teacher_view"]["answer_cut"] == 0
    assert summary["ok"] == 4 and summary["fallback"] == 1
    assert [r["reflection_fallback"] for r in run.result.rows] == [None, "answer", "instruction", "row", None]
