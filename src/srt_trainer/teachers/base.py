"""The teacher interface: a chat LLM that answers many conversations, reporting each answer as it arrives."""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from srt_trainer.errors import SRTUserError

Conversation = list[dict[str, str]]


class TeacherError(SRTUserError, RuntimeError):
    """A teacher cannot work at all (bad key, unknown model, missing backend): the run stops, answers kept."""


class TeacherConfigError(SRTUserError, ValueError):
    """A teacher asked for with options it does not take (an unknown kind, a base URL for a local model)."""


# The release's answer budget: min(2048, context - prompt tokens) per request (it used 4050 for ChatGPT's 4096).
RELEASE_MAX_NEW_TOKENS = 2048
# Without the teacher's tokenizer, a token is taken as 4 characters (OpenAI's rule of thumb for English text) and each
# chat message as 4 tokens of framing plus 3 for the reply's start (OpenAI's published count for its chat models).
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REPLY = 3


def approx_text_tokens(text: str) -> int:
    """Tokens of ``text`` by the characters-per-token approximation (no tokenizer needed)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def approx_conversation_tokens(conversation: Conversation) -> int:
    """Prompt tokens of a chat request by the approximation: contents plus the per-message framing."""
    return TOKENS_PER_REPLY + sum(TOKENS_PER_MESSAGE + approx_text_tokens(m.get("content") or "") for m in conversation)


@dataclass
class SamplingConfig:
    """How the teacher samples. Greedy by default, as the release ran ChatGPT (temperature 0, top_p 1).

    ``max_tokens`` None is the release's budget, per request: min(2048, ``context_length`` - prompt tokens)."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int | None = None
    seed: int | None = None
    context_length: int = 4096

    def as_dict(self) -> dict[str, Any]:
        """The settings that decide an answer (the cache key's): the context only matters without ``max_tokens``,
        so caches made with a fixed limit keep their keys."""
        settings = asdict(self)
        if self.max_tokens is not None:
            del settings["context_length"]
        return settings

    def max_new_tokens(self, prompt_tokens: int) -> int:
        """The answer budget of a request whose prompt has ``prompt_tokens`` tokens (at least 1: a prompt that
        fills the context still gets an answer slot, which the endpoint may refuse)."""
        if self.max_tokens is not None:
            return self.max_tokens
        return max(1, min(RELEASE_MAX_NEW_TOKENS, self.context_length - prompt_tokens))


@dataclass
class Answer:
    """One request's outcome as a teacher reports it (``text`` None: it failed for good after its retries)."""

    text: str | None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 1
    timeouts: int = 0  # requests of it that timed out
    cut: bool = False  # stopped by the token limit, not by the model


@dataclass
class ChatResult:
    """The final answer to one conversation, after the cache, transport retries and re-asks."""

    text: str | None  # None when the request failed for good
    error: str | None  # why it failed (after retries)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False  # came from the durable cache, nothing sent
    attempts: int = 0  # requests actually sent for this prompt (0 when cached)
    valid: bool | None = None  # the text passed `validate` (None: no validator, or no text)
    reasks: int = 0  # times it was asked again because an answer failed `validate`
    texts: list[str] = field(default_factory=list)  # every answer received, first ask then re-asks
    cut: bool = False  # the final text was stopped by the token limit


@dataclass
class RunCounts:
    """What a run cost: requests per outcome and tokens (fresh requests only; cached answers cost nothing)."""

    conversations: int = 0
    asked: int = 0  # (conversation, ask) pairs sent to the teacher in this run
    cached: int = 0  # (conversation, ask) pairs answered by the cache
    shared: int = 0  # (conversation, ask) pairs answered by the request of the same prompt elsewhere in this run
    requests: int = 0  # requests actually sent, transport retries included
    retried: int = 0  # extra requests after a transport error (429, 5xx, time-out, dropped connection, bad JSON)
    reasked: int = 0  # asks again because an answer failed validation
    invalid: int = 0  # conversations whose last answer still failed validation
    failed: int = 0  # conversations the teacher never answered
    timed_out: int = 0  # requests that timed out (each a request the server may still have been working on)
    cut: int = 0  # conversations whose final answer stopped at the token limit (used as it is)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        rate = self.requests / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.conversations} conversations: asked {self.asked}, cached {self.cached}, "
            # apart from the cache: a first run of repeated prompts (e.g. A's and B's answers alike) reads no cache
            + (f"{self.shared} shared with an identical prompt, " if self.shared else "")
            + f"retried {self.retried} ({self.requests} requests), re-asked {self.reasked}, "
            f"invalid {self.invalid}, failed {self.failed}"
            + (f", {self.timed_out} requests timed out" if self.timed_out else "")
            + (f", {self.cut} answers cut at the token limit" if self.cut else "")
            + f"; tokens {self.prompt_tokens} prompt + "
            f"{self.completion_tokens} completion; {self.seconds:.1f} s ({rate:.2f} requests/s)"
        )


OnAnswer = Callable[[int, Answer], None]


class Teacher(abc.ABC):
    """A chat model behind one interface.

    ``generate`` answers every conversation and calls ``on_answer(position, answer)`` as soon as each one is
    final (in any order), so the caller can store it durably before anything else happens.
    """

    kind: str = ""
    model_name: str = ""

    def count_text_tokens(self, text: str) -> int:
        """Tokens of a plain text for this teacher (default: the characters-per-token approximation)."""
        return approx_text_tokens(text)

    def count_prompt_tokens(self, conversation: Conversation) -> int:
        """Prompt tokens of a chat request (default: the approximation, for API teachers without a tokenizer)."""
        return approx_conversation_tokens(conversation)

    def identity(self) -> dict[str, Any]:
        """What, besides the messages and sampling, decides the answers (the cache key includes it)."""
        return {"teacher": self.kind, "model": self.model_name}

    @abc.abstractmethod
    def generate(self, conversations: Sequence[Conversation], sampling: SamplingConfig, on_answer: OnAnswer) -> None:
        """Answer every conversation, reporting each through ``on_answer``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the teacher holds (model weights, engines)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_name!r})"


class DelegatingTeacher(Teacher):
    """A teacher answered another way than by ``teacher``'s own requests (batch files, a provider's Batch API): for
    everything that decides an answer (its identity, token counts, the request bodies) it is ``teacher``, so cache
    keys, outputs and resumes are those of a run that asked ``teacher`` directly. Subclasses write ``generate``."""

    def __init__(self, teacher: Teacher) -> None:
        self.teacher = teacher
        self.kind, self.model_name = teacher.kind, teacher.model_name

    def identity(self) -> dict[str, Any]:
        return self.teacher.identity()

    def count_text_tokens(self, text: str) -> int:
        return self.teacher.count_text_tokens(text)

    def count_prompt_tokens(self, conversation: Conversation) -> int:
        return self.teacher.count_prompt_tokens(conversation)

    def close(self) -> None:
        self.teacher.close()

    def describe(self) -> str:
        """What the wrapper adds, for ``repr`` (its files)."""
        return ""

    def __repr__(self) -> str:  # the inner teacher's repr never shows a key
        extra = self.describe()
        return f"{type(self).__name__}({self.teacher!r}{', ' + extra if extra else ''})"


def prefilled(conversation: Conversation) -> bool:
    """A conversation ending in an assistant message asks the model to continue that message."""
    return bool(conversation) and conversation[-1].get("role") == "assistant"
