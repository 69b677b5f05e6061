"""The check's steps, by name. Each runs in its own process and returns a JSON-able dict of what it measured."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from gpu_check.steps.base import StepContext
from gpu_check.steps.evaluation import step_eval
from gpu_check.steps.peers import step_scoring_vllm
from gpu_check.steps.scoring import step_scoring_7b, step_scoring_small
from gpu_check.steps.training import step_prepare, step_train_lora, step_train_qlora, step_train_zero3

STEP_FUNCTIONS: Mapping[str, Callable[[StepContext], dict[str, Any]]] = MappingProxyType(
    {
        "prepare": step_prepare,
        "scoring_small": step_scoring_small,
        "scoring_7b": step_scoring_7b,
        "train_lora": step_train_lora,
        "eval": step_eval,
        "train_qlora": step_train_qlora,
        "train_zero3": step_train_zero3,
        "scoring_vllm": step_scoring_vllm,
    }
)
