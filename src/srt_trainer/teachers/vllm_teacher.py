"""vLLM's offline engine as the teacher (fast batched generation on GPUs; its CPU build runs too), through the
package's vLLM wrapper."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from srt_trainer.teachers.base import Answer, Conversation, OnAnswer, SamplingConfig, Teacher, TeacherError, prefilled

VLLM_MISSING = (
    "the vllm teacher needs vLLM, which is not installed: `pip install 'srt-trainer[vllm]'` (on a CUDA machine), "
    "or serve the model with `vllm serve MODEL` and use --teacher openai --base-url http://HOST:PORT/v1"
)


class VLLMTeacher(Teacher):
    """``vllm.LLM(model, dtype=dtype, **engine_options)``; conversations go through its chat interface in chunks of
    ``chunk_size`` so each chunk's answers reach the durable cache before the next chunk starts. Prompt tokens are
    counted exactly, with the model's own tokenizer and chat template (as the transformers teacher counts them), so
    both teachers give a request the same answer budget."""

    kind = "vllm"

    def __init__(
        self,
        model: str | None = None,
        dtype: str = "float32",
        chunk_size: int = 512,
        trust_remote_code: bool = False,
        **engine_options: Any,
    ) -> None:
        from srt_trainer.vllm_engine import VLLMEngine, VLLMMissingError

        self.model_name = model or "embedded"
        self.dtype = dtype
        self.chunk_size = max(1, int(chunk_size))
        self.trust_remote_code = trust_remote_code
        self._tokenizer: Any = None
        try:  # fail at once, with the install hint, not after loading data
            self._engine = VLLMEngine(
                self.model_name,
                missing=VLLM_MISSING,
                dtype=dtype,
                trust_remote_code=trust_remote_code,
                **engine_options,
            )
        except VLLMMissingError as e:
            raise TeacherError(str(e)) from e

    def identity(self) -> dict[str, Any]:
        return {"teacher": self.kind, "model": self.model_name, "dtype": self.dtype}

    def _load_tokenizer(self) -> Any:
        """The model's tokenizer alone (a fully cached run never starts the engine)."""
        if self._tokenizer is None:
            from srt_trainer.models import load_tokenizer

            self._tokenizer = load_tokenizer(self.model_name, trust_remote_code=self.trust_remote_code)
        return self._tokenizer

    def _render(self, conversation: Conversation) -> str:
        """The prompt vLLM's chat() makes of the conversation: the model's chat template, continuing a final
        assistant message instead of opening a new one."""
        prefill = prefilled(conversation)
        return self._load_tokenizer().apply_chat_template(
            list(conversation), tokenize=False, add_generation_prompt=not prefill, continue_final_message=prefill
        )

    def count_text_tokens(self, text: str) -> int:
        return len(self._load_tokenizer()(text, add_special_tokens=False)["input_ids"])

    def count_prompt_tokens(self, conversation: Conversation) -> int:
        return self.count_text_tokens(self._render(conversation))

    def generate(self, conversations: Sequence[Conversation], sampling: SamplingConfig, on_answer: OnAnswer) -> None:
        # vLLM's chat() takes one prefill mode and one sampling per call: group the conversations by both (the
        # release's answer budget depends on each prompt's length)
        groups: dict[tuple[bool, int], list[int]] = {}
        for j, c in enumerate(conversations):
            prompt_tokens = self.count_prompt_tokens(c) if sampling.max_tokens is None else 0
            groups.setdefault((prefilled(c), sampling.max_new_tokens(prompt_tokens)), []).append(j)
        for (prefill, budget), positions in groups.items():
            for start in range(0, len(positions), self.chunk_size):
                chunk = positions[start : start + self.chunk_size]
                completions = self._engine.chat(
                    [conversations[j] for j in chunk],
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    max_tokens=budget,
                    seed=sampling.seed,
                    continue_final_message=prefill,
                )
                for j, c in zip(chunk, completions, strict=True):
                    answer = Answer(
                        c.text, prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens, cut=c.cut
                    )
                    on_answer(j, answer)

    def close(self) -> None:
        self._engine.close()
