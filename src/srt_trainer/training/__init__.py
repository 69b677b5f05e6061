"""Supervised fine-tuning of the student with TRL's SFTTrainer (the paper's settings): ``prepare_training_data``
scores and selects where asked, then ``train`` fine-tunes the same ``Student`` on the file it returned."""

from srt_trainer.training.batch import GlobalBatchError, gradient_accumulation_for
from srt_trainer.training.callbacks import SelectionReport, SelectionStatsCallback
from srt_trainer.training.config import SRTScriptArguments, SRTSFTConfig, TrainingInputError
from srt_trainer.training.data import TrainingDataError, build_sft_dataset, response_separator, to_prompt_completion
from srt_trainer.training.prepare import check_variant_files, prepare_training_data
from srt_trainer.training.student import Student, load_model_for_training
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
    "Student",
    "TrainOutcome",
    "TrainingDataError",
    "TrainingInputError",
    "build_sft_dataset",
    "check_variant_files",
    "gradient_accumulation_for",
    "last_complete_checkpoint",
    "load_model_for_training",
    "prepare_training_data",
    "resolve_resume",
    "response_separator",
    "to_prompt_completion",
    "train",
]
