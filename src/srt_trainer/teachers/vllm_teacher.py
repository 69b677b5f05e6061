"""vLLM's offline engine as the teacher (fast batched generation on GPUs). vLLM is imported only here, on use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from srt_trainer.teachers.base import Answer, Conversation, OnAnswer, SamplingConfig, Teacher, TeacherError, prefilled

VLLM_MISSING = (
    "the vllm teacher needs vLLM, which is not installed: `pip install 'srt-trainer[vllm]'` (on a CUDA machine), "
    "or serve the model with `vllm serve MODEL` and use --teacher openai --base-url http://HOST:PORT/v1"
)


def import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise TeacherError(VLLM_MISSING) from e
    return vllm


class VLLMTeacher(Teacher):
    """``vllm.LLM(model, **engine_options)``; conversations go through ``LLM.chat`` in chunks of ``chunk_size``
    so each chunk's answers reach the durable cache before the next chunk starts."""

    kind = "vllm"

    def __init__(
        self, model: str | None = None, chunk_size: int = 512, trust_remote_code: bool = False, **engine_options: Any
    ) -> None:
        self._vllm = import_vllm()  # fail at once, with the install hint, not after loading data
        from srt_trainer.models import resolve_model_path

        self.model_name = model or "embedded"
        self._path = resolve_model_path(self.model_name)
        self.chunk_size = max(1, int(chunk_size))
        self.engine_options = {"trust_remote_code": trust_remote_code, **engine_options}
        self._llm = None

    def identity(self) -> dict[str, Any]:
        return {"teacher": self.kind, "model": self.model_name}

    def generate(self, conversations: Sequence[Conversation], sampling: SamplingConfig, on_answer: OnAnswer) -> None:
        if self._llm is None:
            self._llm = self._vllm.LLM(model=self._path, **self.engine_options)
        params = self._vllm.SamplingParams(
            temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_tokens, seed=sampling.seed
        )
        # vLLM's chat() takes one prefill mode per call: group the conversations by it
        for prefill in (False, True):
            positions = [j for j, c in enumerate(conversations) if prefilled(c) == prefill]
            for start in range(0, len(positions), self.chunk_size):
                chunk = positions[start : start + self.chunk_size]
                outputs = self._llm.chat(
                    [list(conversations[j]) for j in chunk],
                    params,
                    use_tqdm=False,
                    add_generation_prompt=not prefill,
                    continue_final_message=prefill,
                )
                for j, out in zip(chunk, outputs, strict=True):
                    completion = out.outputs[0]
                    on_answer(
                        j,
                        Answer(
                            text=completion.text,
                            prompt_tokens=len(out.prompt_token_ids or []),
                            completion_tokens=len(completion.token_ids),
                            attempts=1,
                        ),
                    )

    def close(self) -> None:
        self._llm = None
