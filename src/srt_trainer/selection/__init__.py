"""Student selection: the released Selective Reflection-Tuning rule, thresholds and budgets, and its report."""

from srt_trainer.selection.config import POLICIES, VARIANTS, SelectArguments, SelectionArguments, SelectionInputError
from srt_trainer.selection.counts import SelectionCounts
from srt_trainer.selection.policy import Selection, SelectionResult, select_rows
from srt_trainer.selection.report import format_counts, write_selection
from srt_trainer.selection.runner import read_scored, run_select
from srt_trainer.selection.views import Views, ViewSource, check_alignment

__all__ = [
    "POLICIES",
    "VARIANTS",
    "SelectArguments",
    "Selection",
    "SelectionArguments",
    "SelectionCounts",
    "SelectionInputError",
    "SelectionResult",
    "ViewSource",
    "Views",
    "check_alignment",
    "format_counts",
    "read_scored",
    "run_select",
    "select_rows",
    "write_selection",
]
