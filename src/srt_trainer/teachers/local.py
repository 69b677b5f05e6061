"""A local transformers chat model as the teacher (the embedded student by default, so everything runs offline).

Conversations are rendered with the tokenizer's chat template and answered by the package's batched generation
(``srt_trainer.generation``). A conversation ending in an assistant message is continued (prefill), which lets a
small model start its answer in the expected format.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from srt_trainer.teachers.base import Answer, Conversation, OnAnswer, SamplingConfig, Teacher, TeacherError, prefilled


class TransformersTeacher(Teacher):
    """A causal LM with a chat template, loaded on first use (a fully cached run never loads its weights; its
    tokenizer is loaded to count tokens: the answer budget and the length of a pair).

    Args:
        model: "embedded" (default), a folder or a hub id.
        dtype / device / trust_remote_code: as for the student.
        batch_size: conversations per ``generate`` call.
        model_obj / tokenizer: an already loaded model and tokenizer to use instead of loading ``model``.
    """

    kind = "transformers"

    def __init__(
        self,
        model: str | None = None,
        dtype: str = "float32",
        device: str | None = None,
        batch_size: int = 8,
        trust_remote_code: bool = False,
        model_obj: Any = None,
        tokenizer: Any = None,
    ) -> None:
        self.model_name = model or "embedded"
        # a model handed in answers in its own dtype, and the cache key must say which
        self.dtype = str(model_obj.dtype).removeprefix("torch.") if model_obj is not None else dtype
        self.device = device
        self.batch_size = max(1, int(batch_size))
        self.trust_remote_code = trust_remote_code
        self._model = model_obj
        self._tokenizer = tokenizer

    def identity(self) -> dict[str, Any]:
        return {"teacher": self.kind, "model": self.model_name, "dtype": self.dtype}

    def load(self) -> tuple[Any, Any]:
        from srt_trainer.models import load_student

        self.load_tokenizer()
        if self._model is None:
            self._model = load_student(
                self.model_name, dtype=self.dtype, device=self.device, trust_remote_code=self.trust_remote_code
            )
        if getattr(self._tokenizer, "chat_template", None) is None:
            raise TeacherError(f"teacher {self.model_name!r}: its tokenizer has no chat template")
        return self._model, self._tokenizer

    def render(self, conversation: Conversation) -> str:
        _, tokenizer = self.load_tokenizer()
        if getattr(tokenizer, "chat_template", None) is None:
            raise TeacherError(f"teacher {self.model_name!r}: its tokenizer has no chat template")
        prefill = prefilled(conversation)
        return tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=not prefill, continue_final_message=prefill
        )

    def count_text_tokens(self, text: str) -> int:
        _, tokenizer = self.load_tokenizer()
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_prompt_tokens(self, conversation: Conversation) -> int:
        """Exact: the rendered chat template, tokenized."""
        return self.count_text_tokens(self.render(conversation))

    def load_tokenizer(self) -> tuple[Any, Any]:
        """The tokenizer alone (counting tokens needs no weights)."""
        from srt_trainer.models import load_tokenizer

        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.model_name, trust_remote_code=self.trust_remote_code)
        return self._model, self._tokenizer

    def generate(self, conversations: Sequence[Conversation], sampling: SamplingConfig, on_answer: OnAnswer) -> None:
        from srt_trainer.generation import generate_batched

        model, tokenizer = self.load()
        if sampling.temperature > 0:
            options: dict[str, Any] = {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p}
        else:  # greedy, whatever sampling settings the model's generation config carries
            options = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        prompts = [self.render(conversation) for conversation in conversations]
        # one generate run per answer budget: the release's budget depends on each prompt's length
        budgets: dict[int, list[int]] = {}
        for j, prompt in enumerate(prompts):
            prompt_tokens = self.count_text_tokens(prompt) if sampling.max_tokens is None else 0
            budgets.setdefault(sampling.max_new_tokens(prompt_tokens), []).append(j)
        for budget, positions in budgets.items():
            for c in generate_batched(
                model,
                tokenizer,
                [prompts[j] for j in positions],
                max_new_tokens=budget,
                batch_size=self.batch_size,
                generation_kwargs=options,
                sort_by_length=True,
                add_special_tokens=False,  # the chat template has them
                seed=sampling.seed,
            ):
                on_answer(
                    positions[c.index],
                    Answer(c.text, prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens, cut=c.cut),
                )

    def close(self) -> None:
        self._model = None
