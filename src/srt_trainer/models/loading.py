"""Load a student (or local teacher): the embedded default, a local folder, or a hub id.

Tokenizers without a pad token (Llama-2, Mistral, GPT-2) get their EOS (or UNK) as pad, so batching works
without resizing embeddings; ``trust_remote_code`` stays off unless asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from srt_trainer.models.embedded import EMBEDDED_NAME, ensure_embedded_model
from srt_trainer.models.precision import warn_if_slow_half

if TYPE_CHECKING:
    from srt_trainer.models.config import SRTModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(model_name_or_path: str | Path | None) -> str:
    """``None`` or ``"embedded"`` means the embedded student (converted once); anything else is passed through."""
    if model_name_or_path is None or str(model_name_or_path) == EMBEDDED_NAME:
        return str(ensure_embedded_model())
    return str(model_name_or_path)


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    """A dtype name (``float32``, ``bfloat16``, ``float16``, ``auto``) as torch wants it."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)} or auto")
    return DTYPES[dtype]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def ensure_pad_token(tokenizer: Any) -> Any:
    """Give a tokenizer without a pad token one it already has (EOS, else UNK), so no embedding is resized."""
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ValueError(
                f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no pad, eos or unk token to pad with"
            )
        tokenizer.pad_token = fallback
    return tokenizer


def load_tokenizer(
    model_name_or_path: str | Path | None = None,
    padding_side: str = "right",
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> Any:
    """Tokenizer of a student, with a pad token and the requested padding side (right for scoring and training,
    left for batched generation)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
    tokenizer.padding_side = padding_side
    return ensure_pad_token(tokenizer)


def load_student(
    model_name_or_path: str | Path | None = None,
    dtype: str | torch.dtype | None = "float32",
    device: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    revision: str | None = None,
    adapter: str | Path | None = None,
    quantization_config: Any = None,
    **model_kwargs: Any,
) -> Any:
    """A causal LM in eval mode on ``device`` (default: CUDA when present, else CPU).

    ``adapter`` is a PEFT adapter folder applied on top (LoRA stays unmerged, as trained);
    ``quantization_config`` is a bitsandbytes config (``SRTModelConfig.quantization_config()``), placed by
    accelerate. ``device="auto"`` spreads the model with accelerate's ``device_map``; other keyword arguments go to
    ``AutoModelForCausalLM.from_pretrained``.
    """
    from transformers import AutoModelForCausalLM

    compute = resolve_dtype(dtype)
    if quantization_config is not None:
        model_kwargs["quantization_config"] = quantization_config
    path = resolve_model_path(model_name_or_path)
    kwargs: dict[str, Any] = {"dtype": compute, "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if revision:
        kwargs["revision"] = revision
    if device == "auto" or "quantization_config" in model_kwargs:
        kwargs["device_map"] = "auto" if device in (None, "auto") else device
    kwargs.update(model_kwargs)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if "device_map" not in kwargs:
        model.to(device or default_device())
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    warn_if_slow_half(model)
    return model


def load_configured_student(
    model_args: SRTModelConfig, device: str | None = None, trust_remote_code: bool = False, **model_kwargs: Any
) -> Any:
    """``load_student`` with the options of ``model_args`` (dtype, attention, revision, adapter, quantization)."""
    return load_student(
        model_args.model_name_or_path,
        dtype=model_args.dtype,
        device=device,
        trust_remote_code=trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        revision=model_args.revision(),
        adapter=model_args.adapter,
        quantization_config=model_args.quantization_config(),
        **model_kwargs,
    )
