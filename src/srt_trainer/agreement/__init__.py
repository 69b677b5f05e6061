"""How far two students agree: on the statistics of the same rows and on what the selection keeps (a proxy student
stands in for the real one only where they agree)."""

from srt_trainer.agreement.config import AgreeArguments
from srt_trainer.agreement.measure import Agreement, StatisticAgreement, measure_agreement

__all__ = ["AgreeArguments", "Agreement", "StatisticAgreement", "measure_agreement"]
