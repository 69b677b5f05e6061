"""The main job, ``srt run CONFIG``: reflect, score, select, train and answer, from one YAML file."""

from srt_trainer.run.config import RunArguments
from srt_trainer.run.job import JobResult, run

__all__ = ["JobResult", "RunArguments", "run"]
