"""Templates render the released scorer's strings byte for byte."""

from __future__ import annotations

import pytest

from srt_trainer.templates import REVERSE_INSTRUCTION, get_template

SYS = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)


def test_vicuna_exact():
    t = get_template("vicuna")
    assert t.prompt("Name a color.") == SYS + " USER: Name a color. ASSISTANT:"
    assert t.prompt("Translate.", "Hola") == SYS + " USER: Translate.\nInput:\nHola ASSISTANT:"


def test_alpaca_exact():
    t = get_template("alpaca")
    assert t.prompt("Name a color.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nName a color.\n\n### Response:"
    )
    assert t.prompt("Translate.", "Hola") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nTranslate.\n\n"
        "### Input:\nHola\n\n### Response:"
    )


def test_wizardlm_exact():
    t = get_template("wizardlm")
    assert t.prompt("Name a color.") == "Name a color.\n\n### Response:"
    assert t.prompt("Translate.", "Hola") == "Translate.\nHola\n\n### Response:"


@pytest.mark.parametrize("name", ["vicuna", "alpaca", "wizardlm"])
def test_reverse_prompt_is_no_input_form_of_the_constant(name):
    t = get_template(name)
    y = "Paris is the capital of France."
    constant = (
        "Below is the response to an instruction, please guess the corresponding instruction for the given "
        "response.\nParis is the capital of France.\nGenerate the instruction for the above response."
    )
    assert REVERSE_INSTRUCTION.format(response=y) == constant
    assert t.reverse_prompt(y) == t.prompt(constant)
    assert t.reverse_prompt(y).endswith("ASSISTANT:" if name == "vicuna" else "### Response:")


def test_vicuna_multi_turn():
    t = get_template("vicuna")
    msgs = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Name a color."},
    ]
    assert t.conversation_prompt(msgs, eos_token="</s>") == (
        SYS + " USER: Hi ASSISTANT:Hello!</s>USER: Name a color. ASSISTANT:"
    )
    assert t.conversation_prompt(msgs[:1]) == t.prompt("Hi")
    with pytest.raises(ValueError, match="end with a user turn"):
        t.conversation_prompt(msgs[:2])


def test_alpaca_and_wizardlm_multi_turn():
    msgs = [
        {"role": "user", "content": "A"},
        {"role": "assistant", "content": "B"},
        {"role": "user", "content": "C"},
    ]
    assert (
        get_template("alpaca")
        .conversation_prompt(msgs)
        .endswith("### Instruction:\nA\n\n### Response:B\n\n### Instruction:\nC\n\n### Response:")
    )
    assert get_template("wizardlm").conversation_prompt(msgs) == "A\n\n### Response:B\n\nC\n\n### Response:"


def test_custom_system_prompt():
    assert get_template("vicuna").prompt("Q", system="Be brief.") == "Be brief. USER: Q ASSISTANT:"
    assert get_template("wizardlm").prompt("Q", system="Be brief.") == "Be brief.\n\nQ\n\n### Response:"


def test_chat_template_uses_the_tokenizer(embedded_tokenizer):
    t = get_template("chat", embedded_tokenizer)
    expected = embedded_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name a color."}], tokenize=False, add_generation_prompt=True
    )
    assert t.prompt("Name a color.") == expected
    assert t.prompt("Translate.", "Hola").count("Translate.\nHola") == 1
    multi = t.conversation_prompt(
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Name a color."},
        ]
    )
    assert multi.index("Hi") < multi.index("Hello!") < multi.index("Name a color.")
    assert multi.endswith("<|im_start|>assistant\n")
    assert "Name a color." in t.reverse_prompt("Name a color.")


def test_chat_template_needs_a_tokenizer_with_one():
    with pytest.raises(ValueError, match="chat template"):
        get_template("chat", None)


def test_unknown_template():
    with pytest.raises(ValueError, match="unknown template 'llama9'"):
        get_template("llama9")


def test_training_example_is_prompt_completion():
    ex = get_template("vicuna").training_example("Name a color.", "", "Blue.")
    assert ex == {"prompt": SYS + " USER: Name a color. ASSISTANT:", "completion": "Blue."}
