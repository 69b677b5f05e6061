"""Student selection: the released Selective Reflection-Tuning rule, thresholds and budgets, and its report."""

from srt_trainer.selection.cli import read_scored, run_select
from srt_trainer.selection.policy import (
    POLICIES,
    VARIANTS,
    SelectConfig,
    SelectionInputError,
    SelectionResult,
    check_alignment,
    select_rows,
)
from srt_trainer.selection.report import format_counts, write_selection

__all__ = [
    "POLICIES",
    "VARIANTS",
    "SelectConfig",
    "SelectionInputError",
    "SelectionResult",
    "check_alignment",
    "format_counts",
    "read_scored",
    "run_select",
    "select_rows",
    "write_selection",
]
