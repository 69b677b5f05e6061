"""Supervised fine-tuning of the student on the selected data with TRL's SFTTrainer (SPEC 1.4 defaults)."""

from srt_trainer.training.batch import GlobalBatchError, gradient_accumulation_for
from srt_trainer.training.callbacks import SelectionReport, SelectionStatsCallback
from srt_trainer.training.config import SRTModelConfig, SRTScriptArguments, SRTSFTConfig
from srt_trainer.training.data import TrainingDataError, build_sft_dataset, response_separator, to_prompt_completion
from srt_trainer.training.trainer import SRTSFTTrainer, TrainOutcome, resolve_resume, train

__all__ = [
    "GlobalBatchError",
    "SRTModelConfig",
    "SRTSFTConfig",
    "SRTSFTTrainer",
    "SRTScriptArguments",
    "SelectionReport",
    "SelectionStatsCallback",
    "TrainOutcome",
    "TrainingDataError",
    "build_sft_dataset",
    "gradient_accumulation_for",
    "resolve_resume",
    "response_separator",
    "to_prompt_completion",
    "train",
]
