"""``srt score``: the student's IFD / r-IFD statistics of every row of a file.

srt score --data alpaca.json --output scores.jsonl [--model PATH] [--template vicuna] [--dtype bfloat16]
accelerate launch --multi_gpu --num_processes N -m srt_trainer.cli score --data ... --output ...
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from srt_trainer.errors import run_cli

PROG = "srt score"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def command() -> None:
        from srt_trainer.models.config import LoadingArguments, SRTModelConfig
        from srt_trainer.options import StageParser
        from srt_trainer.scoring.config import ScoreArguments, ScoringArguments
        from srt_trainer.scoring.report import format_summary
        from srt_trainer.scoring.runner import run_score

        parser = StageParser((ScoreArguments, ScoringArguments, SRTModelConfig, LoadingArguments), PROG)
        # the released scorer's name for its truncation length (here no training config claims --max_length)
        parser.add_argument(
            "--max_length", "--max-length", dest="score_max_length", type=int, help="--score_max_length"
        )
        args, scoring, model_args, loading = parser.parse_args_and_config(argv)
        run = run_score(args, scoring, model_args, loading)
        if run is None:  # not the main process
            return
        print(format_summary(run.summary))
        if run.histogram:
            print(f"histogram: {run.histogram}")
        print(f"wrote {run.output} ({len(run.rows)} rows)")

    return run_cli(PROG, command)
