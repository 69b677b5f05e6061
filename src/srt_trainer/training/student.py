"""The student of one run, loaded once: it scores the variant files where asked, then it is the model trained.

Under ``accelerate launch`` with a DeepSpeed ZeRO-3 config the model is loaded partitioned (the training arguments
set transformers' DeepSpeed config before it loads), so the student that scores is the very one the trainer takes.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from srt_trainer.distributed import get_state
from srt_trainer.models import load_tokenizer, resolve_model_path
from srt_trainer.models.config import SRTModelConfig
from srt_trainer.models.embedded import public_model_name
from srt_trainer.models.loading import load_configured_student
from srt_trainer.training.config import SRTSFTConfig, TrainingInputError


def load_model_for_training(model_args: SRTModelConfig, training_args: SRTSFTConfig) -> Any:
    """The student in ``model_args.dtype`` on this process's device (QLoRA: quantized with bitsandbytes)."""
    if model_args.adapter:
        raise TrainingInputError(
            f"--adapter {model_args.adapter}: training starts from model_name_or_path (use_peft adds a new "
            "adapter); merge a trained adapter into its base model first to train on top of it"
        )
    model = load_configured_student(
        model_args, device=str(training_args.device), trust_remote_code=training_args.trust_remote_code
    )
    if training_args.activation_checkpointing:
        model.config.use_cache = False  # the cache is useless in training and warns with checkpointing
    return model


class Student:
    """The student ``model_args`` name, for training with ``training_args``: nothing is loaded until first asked
    for, and then once. ``args`` are ``model_args`` with the student's local folder (the embedded student is
    converted once, by the main process first); the caller's ``model_args`` are left as given.

    Every process must ask for ``args``, ``tokenizer`` and ``model`` at the same points of the run: resolving the
    student waits for the main process, and a ZeRO-3 load is collective.
    """

    def __init__(
        self, model_args: SRTModelConfig, training_args: SRTSFTConfig, model: Any = None, tokenizer: Any = None
    ) -> None:
        self.training_args = training_args
        self.base_model = public_model_name(model_args.model_name_or_path)  # as people know it (a model card)
        self._given = model_args
        self._args: SRTModelConfig | None = None
        self._model = model
        self._tokenizer = tokenizer

    @property
    def args(self) -> SRTModelConfig:
        """``model_args`` with ``model_name_or_path`` resolved to a folder or hub id that transformers loads."""
        if self._args is None:
            with get_state().main_process_first():  # one conversion of the embedded student, then every process
                path = resolve_model_path(self._given.model_name_or_path)
            self._args = replace(self._given, model_name_or_path=path)
        return self._args

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(
                self.args.model_name_or_path, trust_remote_code=self.training_args.trust_remote_code
            )
        return self._tokenizer

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = load_model_for_training(self.args, self.training_args)
        return self._model
