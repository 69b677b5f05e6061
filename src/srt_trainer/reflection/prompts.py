"""The teacher's prompts (the paper's reflection criteria): a system message and a user template per reflection mode.

Defaults follow the paper's criteria. A user's own prompt file replaces them: YAML or JSON with ``system`` and
``user`` keys (and optionally ``prefix``, the start of the assistant's reply for teachers that are prefilled), or a
plain text file holding the user template alone. Templates name the row's fields ``{instruction}``, ``{input}``,
``{output}`` and ``{input_section}`` (empty without an input, else a blank line, ``[Input]`` and the input); other
braces are left as they are, so a template may show JSON or code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from srt_trainer.errors import SRTUserError

MODES = ("instruction", "response")
FIELDS = ("instruction", "input", "output", "input_section")

INSTRUCTION_SYSTEM = (
    "You are a meticulous and demanding reviewer of instruction-tuning data. You judge how good an instruction "
    "is, then write a better one and answer it."
)
INSTRUCTION_USER = """[Instruction]
{instruction}{input_section}

[The Start of Answer]
{output}
[The End of Answer]

Answer the following about the quality of the instruction above.
1. Why is this instruction weak? First analyse it for the complexity of its topic, the level of detail it asks \
for, the knowledge it requires, how ambiguous it is, and the logical reasoning or problem-solving it involves. \
Then analyse why the answer is weak for this instruction: its helpfulness, relevance, accuracy and level of \
detail. Finally explain how the weaknesses of the instruction led to those of the answer.
2. Based on your analysis, write a new, complete instruction that is more complex and harder to answer directly. \
It must be related to the original instruction but stand on its own, so that it can be answered without seeing \
the original. Write it in the format [New Instruction] your instruction [End]
3. Answer the new instruction in as much detail as it deserves, in the format [New Answer] your answer [End]"""

RESPONSE_SYSTEM = (
    "You are a meticulous and demanding reviewer of answers to instructions. You judge how good an answer is, "
    "then write a better one."
)
RESPONSE_USER = """[Instruction]
{instruction}{input_section}

[The Start of Answer]
{output}
[The End of Answer]

Answer the following about the quality of the answer above.
1. Why is this answer weak for the instruction? Analyse its helpfulness, relevance, accuracy and level of detail.
2. Based on your analysis, write a better, complete answer to the instruction, as detailed as it deserves. Write \
it in the format [Better Answer] your answer [End]"""


@dataclass(frozen=True)
class ReflectionPrompt:
    """A mode's prompts. ``prefix`` starts the assistant's reply when prefill is on (small local teachers)."""

    mode: str
    system: str
    user: str
    prefix: str
    source: str = "default"

    def user_message(self, instruction: str, input: str, output: str) -> str:
        section = f"\n\n[Input]\n{input}" if input else ""
        values = {"instruction": instruction, "input": input, "output": output, "input_section": section}
        text = self.user
        # one pass over the template, so a field's value that contains "{output}" is never substituted again
        for name in FIELDS:
            text = text.replace("{" + name + "}", "\0" + name + "\0")
        for name in FIELDS:
            text = text.replace("\0" + name + "\0", values[name])
        return text

    def messages(self, instruction: str, input: str, output: str, prefill: bool = False) -> list[dict[str, str]]:
        messages = []
        if self.system:
            messages.append({"role": "system", "content": self.system})
        messages.append({"role": "user", "content": self.user_message(instruction, input, output)})
        if prefill and self.prefix:
            messages.append({"role": "assistant", "content": self.prefix})
        return messages


DEFAULT_PROMPTS = {
    "instruction": ReflectionPrompt("instruction", INSTRUCTION_SYSTEM, INSTRUCTION_USER, "[New Instruction]"),
    "response": ReflectionPrompt("response", RESPONSE_SYSTEM, RESPONSE_USER, "[Better Answer]"),
}


class PromptTemplateError(SRTUserError, ValueError):
    """A prompt file that cannot be used; the message names the file and what is wrong."""


def load_prompt(mode: str, path: str | Path | None = None, *, needs_input: bool = True) -> ReflectionPrompt:
    """The prompts of ``mode``: the defaults, or those of the file at ``path`` (keys it omits keep the default).

    ``needs_input`` False accepts a user template without ``{input}`` / ``{input_section}``: instruction reflection
    with the input folded into the instruction (the release's view) never has an input to show."""
    if mode not in MODES:
        raise ValueError(f"unknown reflection mode {mode!r}; choose one of {', '.join(MODES)}")
    default = DEFAULT_PROMPTS[mode]
    if path is None:
        return default
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise PromptTemplateError(f"{path}: cannot read the prompt file: {e}") from e
    values: dict[str, Any]
    if path.suffix in (".yaml", ".yml", ".json"):
        import yaml

        try:
            values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, ValueError, yaml.YAMLError) as e:
            raise PromptTemplateError(f"{path}: not valid {path.suffix[1:].upper()}: {e}") from e
        if not isinstance(values, dict):
            raise PromptTemplateError(f"{path}: expected a mapping with 'system' and 'user' keys")
        unknown = set(values) - {"system", "user", "prefix"}
        if unknown:
            raise PromptTemplateError(f"{path}: unknown keys {sorted(unknown)}; expected system, user, prefix")
        for key, value in values.items():
            if not isinstance(value, str):
                raise PromptTemplateError(f"{path}: '{key}' must be a string, not {type(value).__name__}")
    else:
        values = {"user": text}
    prompt = replace(default, source=str(path), **values)
    missing = [f for f in ("instruction", "output") if "{" + f + "}" not in prompt.user]
    if missing:
        raise PromptTemplateError(
            f"{path}: the user template must contain {', '.join('{' + m + '}' for m in missing)}"
            f" (fields: {', '.join('{' + f + '}' for f in FIELDS)})"
        )
    if needs_input and "{input}" not in prompt.user and "{input_section}" not in prompt.user:
        raise PromptTemplateError(
            f"{path}: the user template must show the row's input: {{input_section}} or {{input}} (an instruction "
            "template may leave it out with --teacher_view release, where the input is part of the instruction)"
        )
    return prompt
