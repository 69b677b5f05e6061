"""A local transformers chat model as the teacher (the embedded student by default, so everything runs offline).

Batched generation with the tokenizer's chat template: prompts sorted by length so a batch pads little, left
padding so every answer starts at the same column. A conversation ending in an assistant message is continued
(prefill), which lets a small model start its answer in the expected format.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from srt_trainer.teachers.base import Answer, Conversation, OnAnswer, SamplingConfig, Teacher, prefilled

logger = logging.getLogger(__name__)


class TransformersTeacher(Teacher):
    """A causal LM with a chat template, loaded on first use (a fully cached run never loads it).

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
        from srt_trainer.models import load_student, load_tokenizer

        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.model_name, trust_remote_code=self.trust_remote_code)
        if self._model is None:
            self._model = load_student(
                self.model_name, dtype=self.dtype, device=self.device, trust_remote_code=self.trust_remote_code
            )
        if getattr(self._tokenizer, "chat_template", None) is None:
            raise ValueError(f"teacher {self.model_name!r}: its tokenizer has no chat template")
        return self._model, self._tokenizer

    def render(self, conversation: Conversation) -> str:
        _, tokenizer = self.load()
        prefill = prefilled(conversation)
        return tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=not prefill, continue_final_message=prefill
        )

    def generate(self, conversations: Sequence[Conversation], sampling: SamplingConfig, on_answer: OnAnswer) -> None:
        import torch

        model, tokenizer = self.load()
        texts = [self.render(c) for c in conversations]
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
        pad = tokenizer.pad_token_id
        eos = {
            tokenizer.eos_token_id,
            *(
                [model.generation_config.eos_token_id]
                if isinstance(model.generation_config.eos_token_id, int)
                else (model.generation_config.eos_token_id or [])
            ),
        }
        eos.discard(None)
        options: dict[str, Any] = {"max_new_tokens": sampling.max_tokens, "pad_token_id": pad}
        if sampling.temperature > 0:
            options.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        else:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            width = max(len(ids[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):  # left padding
                input_ids[row, width - len(ids[i]) :] = torch.tensor(ids[i])
                mask[row, width - len(ids[i]) :] = 1
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed + start)
            with torch.no_grad():  # use_cache: a training config may have turned the cache off
                out = model.generate(
                    input_ids=input_ids.to(model.device),
                    attention_mask=mask.to(model.device),
                    use_cache=True,
                    **options,
                )
            for row, i in enumerate(batch):
                new = out[row, width:].tolist()
                n = next((k for k, t in enumerate(new) if t in eos), len(new))
                text = tokenizer.decode(new[:n], skip_special_tokens=True)
                on_answer(i, Answer(text=text, prompt_tokens=len(ids[i]), completion_tokens=n, attempts=1))

    def close(self) -> None:
        self._model = None
