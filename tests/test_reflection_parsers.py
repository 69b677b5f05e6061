"""Reflection prompts and tag parsers: the release's tolerances, user templates, variant detection."""

from __future__ import annotations

import json

import pytest

from srt_trainer.reflection import (
    DEFAULT_PROMPTS,
    PromptTemplateError,
    detect_variant,
    extract_tagged,
    load_prompt,
    parse_instruction_reflection,
    parse_response_reflection,
)

WELL_FORMED = """1. The instruction is vague and the answer is short.
2. [New Instruction] Explain how photosynthesis converts light into chemical energy, step by step. [End]
3. [New Answer] Light is captured by chlorophyll, water is split, and CO2 is fixed in the Calvin cycle. [End]"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            WELL_FORMED,
            (
                "Explain how photosynthesis converts light into chemical energy, step by step.",
                "Light is captured by chlorophyll, water is split, and CO2 is fixed in the Calvin cycle.",
            ),
        ),
        # no [End] at all: a segment stops at the next tag, or the end of the text; the "3." of the list is cut
        (
            "[New Instruction] Compare TCP and UDP.\n\n3.\n[New Answer] TCP is reliable; UDP is not",
            ("Compare TCP and UDP.", "TCP is reliable; UDP is not"),
        ),
        # the release's "New Answer:" forms
        (
            "New Instruction: Name three gases.\nNew Answer: Oxygen, nitrogen, argon.",
            ("Name three gases.", "Oxygen, nitrogen, argon."),
        ),
        # repeated tags, odd case, Markdown emphasis
        (
            "[New Instruction][NEW INSTRUCTION] Define entropy. [end]\n**[New Answer]** A measure of disorder.",
            ("Define entropy.", "A measure of disorder."),
        ),
        # the template echoed back with its placeholders before the real answer
        (
            "Format: [New Instruction] your instruction [End] [New Answer] your answer [End]\n"
            "[New Instruction] Sort a list in Python. [End] [New Answer] Use sorted(xs). [End]",
            ("Sort a list in Python.", "Use sorted(xs)."),
        ),
    ],
)
def test_instruction_reflection_parser(text, expected):
    parsed = parse_instruction_reflection(text)
    assert parsed is not None and (parsed.instruction, parsed.output) == expected and parsed.input == ""


def test_instruction_reflection_needs_both_parts_and_reads_a_new_input():
    assert parse_instruction_reflection("[New Instruction] Only an instruction, no answer.") is None
    assert parse_instruction_reflection("[New Answer] Only an answer.") is None
    assert parse_instruction_reflection("") is None
    parsed = parse_instruction_reflection(
        "[New Instruction] Summarize. [End] [New Input] Rain fell. [End] [New Answer] It rained. [End]"
    )
    assert (parsed.instruction, parsed.input, parsed.output) == ("Summarize.", "Rain fell.", "It rained.")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1. Weak.\n2. [Better Answer] Paris is the capital of France. [End]", "Paris is the capital of France."),
        ("[Better Answer]\nParis.\n[The End of Answer]", "Paris."),  # the prompt's own marker echoed
        ("[Better Answer] [Better Answer] Paris, on the Seine.", "Paris, on the Seine."),
        ("Better Answer: Paris.", "Paris."),
        ("The answer is weak because it is short.", None),
        ("[Better Answer] your answer [End]", None),
    ],
)
def test_response_reflection_parser(text, expected):
    assert parse_response_reflection(text) == expected


def test_bracket_form_wins_over_colon_form():
    text = "New Answer: a draft\n[New Answer] the final one [End]"
    assert extract_tagged(text, "New Answer") == "the final one"


def test_default_prompts_follow_the_criteria():
    ins = DEFAULT_PROMPTS["instruction"].user_message("Name a color.", "", "Blue.")
    for criterion in (
        "complexity of its topic",
        "level of detail",
        "knowledge",
        "ambiguous",
        "logical reasoning",
        "helpfulness, relevance, accuracy",
        "[New Instruction]",
        "[New Answer]",
        "stand on its own",
    ):
        assert criterion in ins, criterion
    assert "Name a color." in ins and "Blue." in ins and "[Input]" not in ins
    res = DEFAULT_PROMPTS["response"].user_message("Convert to Fahrenheit.", "25 C", "77 F")
    assert "[Input]\n25 C" in res and "[Better Answer]" in res and "helpfulness, relevance, accuracy" in res
    # a field's value is inserted once: braces in the data are never taken for template fields
    tricky = DEFAULT_PROMPTS["response"].user_message("Print {output} in f-strings.", "", "Use {x}.")
    assert "Print {output} in f-strings." in tricky and "Use {x}." in tricky
    msgs = DEFAULT_PROMPTS["response"].messages("Q", "", "A", prefill=True)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"] and msgs[-1]["content"] == "[Better Answer]"


def test_user_prompt_files(tmp_path):
    yaml_file = tmp_path / "mine.yaml"
    yaml_file.write_text(
        'system: Be strict.\nuser: |-\n  Q: {instruction}{input_section}\n  A: {output}\n  { "json": 1 }\n'
    )
    prompt = load_prompt("response", yaml_file)
    assert prompt.system == "Be strict." and prompt.prefix == "[Better Answer]" and prompt.source == str(yaml_file)
    assert prompt.user_message("Hi", "", "Hello") == 'Q: Hi\nA: Hello\n{ "json": 1 }'
    text_file = tmp_path / "user.txt"
    text_file.write_text("{instruction} / {input} / {output}")
    assert load_prompt("instruction", text_file).user_message("a", "b", "c") == "a / b / c"
    assert load_prompt("instruction", text_file).system == DEFAULT_PROMPTS["instruction"].system

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"user": "no fields here"}))
    with pytest.raises(PromptTemplateError, match=r"bad\.json.*\{instruction\}, \{output\}"):
        load_prompt("response", bad)
    bad.write_text(json.dumps({"user": "{instruction} {output} {input}", "sistem": "typo"}))
    with pytest.raises(PromptTemplateError, match=r"unknown keys \['sistem'\]"):
        load_prompt("response", bad)
    with pytest.raises(PromptTemplateError, match="cannot read"):
        load_prompt("response", tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="unknown reflection mode"):
        load_prompt("both")


def test_variant_detection():
    assert detect_variant([{"instruction": "x"}], "instruction") == "Q"
    assert detect_variant([{"instruction": "x"}], "response") == "A"
    assert detect_variant([{"variant": "Q"}, {"variant": "Q"}], "response") == "QA"
    assert detect_variant([{"variant": "Q"}], "response", "A") == "A"
    with pytest.raises(ValueError, match="cannot tell A from QA"):
        detect_variant([{"variant": "Q"}, {"variant": "A"}], "response")
    with pytest.raises(ValueError, match="variant Q"):
        detect_variant([{}], "instruction", "QA")
