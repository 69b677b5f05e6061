"""Prompt templates: the IFD / r-IFD scoring views and the training format.

A template renders the *prompt* that precedes a response. The response always follows the prompt with no
separator (``whole = prompt + response``), exactly as the released IFD scorer concatenates them, so scores stay
comparable with published ones. ``vicuna``, ``alpaca`` and ``wizardlm`` reproduce the release's strings byte for
byte; ``chat`` delegates to the tokenizer's own chat template.

Multi-turn conversations render their history turn by turn: each earlier assistant turn is followed by the
template's turn separator, and the prompt always ends with the assistant tag of the turn being predicted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
ALPACA_PREAMBLE_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
ALPACA_PREAMBLE_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
# The r-IFD metric's constant instruction: the student guesses the instruction from the response.
REVERSE_INSTRUCTION = (
    "Below is the response to an instruction, please guess the corresponding instruction for the given "
    "response.\n{response}\nGenerate the instruction for the above response."
)

TEMPLATE_NAMES = ("vicuna", "alpaca", "wizardlm", "chat")

Message = dict[str, str]


class PromptTemplate:
    """Base class. Subclasses implement the single-turn prompt and how a conversation continues."""

    name: str = ""

    def prompt(self, instruction: str, input: str = "", system: str | None = None) -> str:
        """The prompt for one instruction (and optional input); the response follows it directly."""
        raise NotImplementedError

    def next_turn(self, user: str, eos_token: str) -> str:
        """Text that follows an earlier assistant turn and opens the next user turn up to the assistant tag."""
        raise NotImplementedError

    def reverse_prompt(self, response: str) -> str:
        """The r-IFD context: the no-input prompt whose instruction asks to guess the instruction of ``response``."""
        return self.prompt(REVERSE_INSTRUCTION.format(response=response))

    def conversation_prompt(
        self, messages: Sequence[Message], system: str | None = None, eos_token: str = "</s>"
    ) -> str:
        """The prompt before the assistant turn that follows ``messages`` (which must end with a user turn).

        ``messages`` alternate user / assistant, starting with the user; ``eos_token`` closes earlier
        assistant turns where the template does (vicuna), as FastChat's one-turn form extended to many.
        """
        if not messages or messages[-1]["role"] != "user":
            raise ValueError("conversation_prompt needs messages that end with a user turn")
        text = self.prompt(messages[0]["content"], system=system)
        for i in range(1, len(messages), 2):
            text += messages[i]["content"] + self.next_turn(messages[i + 1]["content"], eos_token)
        return text

    def training_example(self, instruction: str, input: str, output: str) -> dict[str, str]:
        """Prompt / completion pair for TRL's SFTTrainer (loss on the completion only)."""
        return {"prompt": self.prompt(instruction, input), "completion": output}


class VicunaTemplate(PromptTemplate):
    """FastChat's one-turn vicuna form (the release's default)."""

    name = "vicuna"

    def prompt(self, instruction: str, input: str = "", system: str | None = None) -> str:
        system = VICUNA_SYSTEM if system is None else system
        if input:
            return f"{system} USER: {instruction}\nInput:\n{input} ASSISTANT:"
        return f"{system} USER: {instruction} ASSISTANT:"

    def next_turn(self, user: str, eos_token: str) -> str:
        return f"{eos_token}USER: {user} ASSISTANT:"


class AlpacaTemplate(PromptTemplate):
    """The Stanford Alpaca prompts, with and without input."""

    name = "alpaca"

    def prompt(self, instruction: str, input: str = "", system: str | None = None) -> str:
        if input:
            preamble = ALPACA_PREAMBLE_INPUT if system is None else system
            return f"{preamble}\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
        preamble = ALPACA_PREAMBLE_NO_INPUT if system is None else system
        return f"{preamble}\n\n### Instruction:\n{instruction}\n\n### Response:"

    def next_turn(self, user: str, eos_token: str) -> str:
        return f"\n\n### Instruction:\n{user}\n\n### Response:"


class WizardLMTemplate(PromptTemplate):
    """WizardLM's bare form."""

    name = "wizardlm"

    def prompt(self, instruction: str, input: str = "", system: str | None = None) -> str:
        head = f"{system}\n\n" if system else ""
        if input:
            return f"{head}{instruction}\n{input}\n\n### Response:"
        return f"{head}{instruction}\n\n### Response:"

    def next_turn(self, user: str, eos_token: str) -> str:
        return f"\n\n{user}\n\n### Response:"


@dataclass
class ChatTemplate(PromptTemplate):
    """The tokenizer's own chat template (``apply_chat_template`` with a generation prompt).

    A leading BOS that the chat template writes is removed when the tokenizer adds one itself, so tokenizing
    the rendered text with default special tokens does not double it.
    """

    tokenizer: Any = None
    name: str = "chat"

    def __post_init__(self) -> None:
        if self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("the 'chat' template needs a tokenizer that has a chat template")
        bos = self.tokenizer.bos_token
        ids = self.tokenizer("x")["input_ids"]
        self._strip_bos = bos if bos and ids and ids[0] == self.tokenizer.bos_token_id else None

    def _render(self, messages: list[Message]) -> str:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if self._strip_bos and text.startswith(self._strip_bos):
            text = text[len(self._strip_bos) :]
        return text

    def prompt(self, instruction: str, input: str = "", system: str | None = None) -> str:
        content = f"{instruction}\n{input}" if input else instruction
        return self._render(_with_system([{"role": "user", "content": content}], system))

    def next_turn(self, user: str, eos_token: str) -> str:  # pragma: no cover - conversation_prompt overrides
        raise NotImplementedError

    def conversation_prompt(
        self, messages: Sequence[Message], system: str | None = None, eos_token: str = "</s>"
    ) -> str:
        if not messages or messages[-1]["role"] != "user":
            raise ValueError("conversation_prompt needs messages that end with a user turn")
        return self._render(_with_system(list(messages), system))


def _with_system(messages: list[Message], system: str | None) -> list[Message]:
    return ([{"role": "system", "content": system}] if system else []) + messages


def get_template(name: str, tokenizer: Any = None) -> PromptTemplate:
    """Template by name: ``vicuna`` (default of the release), ``alpaca``, ``wizardlm`` or ``chat``."""
    if name == "vicuna":
        return VicunaTemplate()
    if name == "alpaca":
        return AlpacaTemplate()
    if name == "wizardlm":
        return WizardLMTemplate()
    if name == "chat":
        return ChatTemplate(tokenizer=tokenizer)
    raise ValueError(f"unknown template {name!r}; choose one of {', '.join(TEMPLATE_NAMES)}")
