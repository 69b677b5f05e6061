"""Evaluation of the paper family: answers to the test sets, pairwise judging in both orders, win / tie / lose."""

from srt_trainer.evaluation.aggregate import (
    Aggregate,
    AggregateRun,
    ItemOutcome,
    Tally,
    aggregate_file,
    aggregate_records,
    judge_item,
    load_review_records,
    outcome_from_scores,
)
from srt_trainer.evaluation.config import (
    AggregateArguments,
    AlpacaEvalArguments,
    GenerateArguments,
    HarnessArguments,
    JudgeArguments,
    ReportArguments,
)
from srt_trainer.evaluation.judge import review_messages
from srt_trainer.evaluation.scores import parse_scores
from srt_trainer.evaluation.test_sets import TestSet, read_test_set, read_test_sets

__all__ = [
    "Aggregate",
    "AggregateArguments",
    "AggregateRun",
    "AlpacaEvalArguments",
    "GenerateArguments",
    "HarnessArguments",
    "ItemOutcome",
    "JudgeArguments",
    "ReportArguments",
    "Tally",
    "TestSet",
    "aggregate_file",
    "aggregate_records",
    "judge_item",
    "load_review_records",
    "outcome_from_scores",
    "parse_scores",
    "read_test_set",
    "read_test_sets",
    "review_messages",
]
