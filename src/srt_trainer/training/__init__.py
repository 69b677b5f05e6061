"""Supervised fine-tuning of the student on the selected data with TRL's SFTTrainer (the paper's settings)."""

from srt_trainer.training.batch import GlobalBatchError, gradient_accumulation_for
from srt_trainer.training.callbacks import SelectionReport, SelectionStatsCallback
from srt_trainer.training.config import SRTScriptArguments, SRTSFTConfig, TrainingInputError
from srt_trainer.training.data import TrainingDataError, build_sft_dataset, response_separator, to_prompt_completion
from srt_trainer.training.trainer import (
    CheckpointNotFoundError,
    SRTSFTTrainer,
    TrainOutcome,
    last_complete_checkpoint,
    resolve_resume,
    train,
)

__all__ = [
    "CheckpointNotFoundError",
    "GlobalBatchError",
    "SRTSFTConfig",
    "SRTSFTTrainer",
    "SRTScriptArguments",
    "SelectionReport",
    "SelectionStatsCallback",
    "TrainOutcome",
    "TrainingDataError",
    "TrainingInputError",
    "build_sft_dataset",
    "gradient_accumulation_for",
    "last_complete_checkpoint",
    "resolve_resume",
    "response_separator",
    "to_prompt_completion",
    "train",
]
