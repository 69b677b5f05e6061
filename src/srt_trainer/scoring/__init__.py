"""The student's statistics: IFD / r-IFD views (collator), forward plans (planning), the student's forwards
(engine), losses and statistics (loss), the batched scorer over them, the sharded multi-process runner."""

from srt_trainer.io import ResumeMismatchError
from srt_trainer.scoring.collator import VIEW_KINDS, DataCollatorForIFD, SampleViews, View
from srt_trainer.scoring.config import ScoreArguments, ScoringArguments
from srt_trainer.scoring.loss import ERROR_COLUMNS, LOSS_COLUMNS, STAT_COLUMNS, stats_from_losses
from srt_trainer.scoring.runner import ScoreRun, run_score, score_dataset
from srt_trainer.scoring.scorer import IFDScorer

__all__ = [
    "ERROR_COLUMNS",
    "LOSS_COLUMNS",
    "STAT_COLUMNS",
    "VIEW_KINDS",
    "DataCollatorForIFD",
    "IFDScorer",
    "ResumeMismatchError",
    "SampleViews",
    "ScoreArguments",
    "ScoreRun",
    "ScoringArguments",
    "View",
    "run_score",
    "score_dataset",
    "stats_from_losses",
]
