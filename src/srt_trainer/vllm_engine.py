"""vLLM's offline engine, the one wrapper behind the ``vllm`` teacher and ``srt eval generate --engine vllm``.

vLLM is imported only here, on use; the engine loads the model on its first call (a fully cached run never does).
A PEFT (LoRA) adapter is served through vLLM's ``LoRARequest``. Further ``vllm.LLM`` settings (GPUs, context,
memory; on a CPU the KV cache size) come from the user as JSON (``parse_vllm_options``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from srt_trainer.errors import SRTUserError
from srt_trainer.generation import Completion
from srt_trainer.models import resolve_model_path

logger = logging.getLogger(__name__)

LORA_RANKS = (8, 16, 32, 64, 128, 256, 512)
# Set from the package's own options (model, dtype, seed, ...): JSON options may not set them a second way.
RESERVED_OPTIONS = ("model", "dtype", "seed", "revision", "trust_remote_code", "enable_lora", "max_lora_rank")


class VLLMOptionsError(SRTUserError, ValueError):
    """Unusable ``vllm.LLM`` options given as JSON."""


def parse_vllm_options(value: str | Mapping[str, Any] | None, option: str) -> dict[str, Any]:
    """``vllm.LLM`` keyword arguments from ``option``'s value: a JSON object (from a flag) or a mapping (from
    YAML); empty when unset. Keys that the package sets from its own options are refused, naming the option."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise VLLMOptionsError(f"{option}: not JSON ({e.msg} at character {e.pos}): {value!r}") from e
    if not isinstance(value, Mapping):
        raise VLLMOptionsError(f"{option}: a JSON object of vllm.LLM arguments is expected, not {value!r}")
    taken = sorted(set(value) & set(RESERVED_OPTIONS))
    if taken:
        raise VLLMOptionsError(
            f"{option}: {', '.join(taken)} cannot be set here; use this command's own option "
            "(the model, --dtype / --teacher_dtype, the seed, --trust_remote_code, the adapter)"
        )
    return dict(value)


class VLLMMissingError(SRTUserError):
    """vLLM is asked for and not installed."""


def import_vllm(missing: str) -> Any:
    """The ``vllm`` module; raises ``VLLMMissingError(missing)`` where it is not installed."""
    try:
        import vllm
    except ImportError as e:
        raise VLLMMissingError(missing) from e
    return vllm


class VLLMEngine:
    """``vllm.LLM`` for a model (``"embedded"``, a folder or a hub id), with an optional LoRA ``adapter`` folder.

    ``missing``: the message to fail with at once when vLLM is not installed. ``engine_options`` go to ``vllm.LLM``
    (``dtype``, ``seed``, ``trust_remote_code``, ...).
    """

    def __init__(self, model: str | None, *, missing: str, adapter: str | Path | None = None, **engine_options: Any):
        self._vllm = import_vllm(missing)
        self.path = resolve_model_path(model)
        self.adapter = str(adapter) if adapter else None
        self.engine_options = dict(engine_options)
        if self.adapter:
            rank = json.loads((Path(self.adapter) / "adapter_config.json").read_text()).get("r", 16)
            self.engine_options.update(enable_lora=True, max_lora_rank=next(r for r in LORA_RANKS if r >= rank))
        self._llm: Any = None

    @property
    def llm(self) -> Any:
        if self._llm is None:
            start = time.perf_counter()
            self._llm = self._vllm.LLM(model=self.path, **self.engine_options)
            logger.info("vLLM engine for %s ready in %.0f s", self.path, time.perf_counter() - start)
        return self._llm

    def _params(self, temperature: float, top_p: float, max_tokens: int, seed: int | None) -> Any:
        return self._vllm.SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)

    def _lora(self) -> Any:
        if not self.adapter:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest("adapter", 1, self.adapter)

    @staticmethod
    def _completions(outputs: Sequence[Any]) -> list[Completion]:
        return [
            Completion(
                index=i,
                text=out.outputs[0].text,
                prompt_tokens=len(out.prompt_token_ids or []),
                completion_tokens=len(out.outputs[0].token_ids),
                cut=out.outputs[0].finish_reason == "length",
            )
            for i, out in enumerate(outputs)
        ]

    def complete(
        self,
        prompts: Sequence[str],
        *,
        temperature: float,
        top_p: float,
        max_tokens: int | Sequence[int],
        seed: int | None = None,
    ) -> list[Completion]:
        """Answers to already-rendered prompts, in their order; ``max_tokens`` is one limit, or one per prompt."""
        if isinstance(max_tokens, int):
            params: Any = self._params(temperature, top_p, max_tokens, seed)
        else:  # vLLM takes one SamplingParams per prompt
            params = [self._params(temperature, top_p, m, seed) for m in max_tokens]
        outputs = self.llm.generate(list(prompts), params, lora_request=self._lora(), use_tqdm=False)
        return self._completions(outputs)

    def chat(
        self,
        conversations: Sequence[Sequence[dict[str, str]]],
        *,
        temperature: float,
        top_p: float,
        max_tokens: int,
        seed: int | None = None,
        continue_final_message: bool = False,
    ) -> list[Completion]:
        """Answers to chat conversations, in their order; ``continue_final_message`` continues each conversation's
        last (assistant) message instead of starting a new one."""
        outputs = self.llm.chat(
            [list(c) for c in conversations],
            self._params(temperature, top_p, max_tokens, seed),
            use_tqdm=False,
            lora_request=self._lora(),
            add_generation_prompt=not continue_final_message,
            continue_final_message=continue_final_message,
        )
        return self._completions(outputs)

    def close(self) -> None:
        """Stop the engine's processes now (they hold the weights and the KV cache), not whenever it is collected."""
        llm, self._llm = self._llm, None
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
