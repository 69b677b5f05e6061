"""Load a student (or local teacher): the embedded default, a local folder, or a hub id.

Tokenizers without a pad token (Llama-2, Mistral, GPT-2) get their EOS (or UNK) as pad, so batching works
without resizing embeddings; ``trust_remote_code`` stays off unless asked for.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from srt_trainer.errors import SRTUserError
from srt_trainer.models.embedded import EMBEDDED_NAME, ensure_embedded_model
from srt_trainer.models.precision import warn_if_slow_half

if TYPE_CHECKING:
    from srt_trainer.models.config import SRTModelConfig

logger = logging.getLogger(__name__)

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


class AdapterMismatchError(SRTUserError, ValueError):
    """A PEFT adapter that cannot be applied on the model given (another architecture, or not an adapter)."""


# What decides whether an adapter's weights fit a model: LoRA matrices are shaped by the hidden size, one per layer.
_SHAPE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "n_embd", "n_layer")


def _shape(model: str) -> dict[str, object] | None:
    """The shape-deciding fields of a local model folder's config.json (None for a hub id or a folder without one)."""
    config = Path(model) / "config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return {k: data[k] for k in _SHAPE_KEYS if k in data}


def check_adapter_base(model: str, adapter: str | Path) -> None:
    """Refuse an adapter trained on another base model than ``model`` (a resolved path or hub id), naming its
    ``adapter_config.json`` and field: when both bases are folders here, their architectures must agree (otherwise
    PEFT fails mid-load, or leaves layers without their LoRA); a differently named base that cannot be compared is
    logged as a warning. A hub id is left to PEFT."""
    config_file = Path(adapter) / "adapter_config.json"
    if not Path(adapter).is_dir():
        return  # a hub id: PEFT fetches and checks it
    if not config_file.is_file():
        raise AdapterMismatchError(f"{adapter}: not a PEFT adapter folder (no adapter_config.json)")
    try:
        base = json.loads(config_file.read_text()).get("base_model_name_or_path")
    except (json.JSONDecodeError, AttributeError) as e:
        raise AdapterMismatchError(f"{config_file}: not a JSON object ({e})") from None
    if not base or str(base) == str(model) or Path(str(base)).name == Path(str(model)).name:
        return
    if os.path.exists(base) and os.path.exists(model) and os.path.realpath(base) == os.path.realpath(model):
        return
    theirs, mine = _shape(str(base)), _shape(str(model))
    if theirs is not None and mine is not None and theirs != mine:
        raise AdapterMismatchError(
            f"{config_file}, field 'base_model_name_or_path': the adapter was trained on {base} ({theirs}), not on "
            f"the model given, {model} ({mine}); give its base model as --model"
        )
    logger.warning(
        "%s: the adapter was trained on %s; applying it on %s (%s)",
        config_file,
        base,
        model,
        "same architecture" if theirs is not None and theirs == mine else "not compared: a base is not a folder here",
    )


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
    if adapter:  # before the model is loaded: a mismatch is named at once
        check_adapter_base(path, adapter)
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

        try:
            model = PeftModel.from_pretrained(model, str(adapter))
        except RuntimeError as e:
            if "size mismatch" not in str(e):
                raise
            raise AdapterMismatchError(f"{adapter}: does not fit the model {path}: {str(e).splitlines()[0]}") from e
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
