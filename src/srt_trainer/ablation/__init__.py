"""``srt ablate``: the paper's ablation (§5) and the field's baselines, each arm a selection policy, trained and
evaluated the same way, in one table with bootstrap intervals."""

from srt_trainer.ablation.config import ARMS, REFERENCE, AblateArguments, AblationConfigError
from srt_trainer.ablation.uncertainty import Estimate, bootstrap_mean, normal_interval, paired_difference, winning_score

__all__ = [
    "ARMS",
    "REFERENCE",
    "AblateArguments",
    "AblationConfigError",
    "Estimate",
    "bootstrap_mean",
    "normal_interval",
    "paired_difference",
    "winning_score",
]
