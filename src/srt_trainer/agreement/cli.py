"""``srt agree``: how far a proxy student's scores (or another precision's) agree with the real student's.

srt agree --a real.scores.jsonl --b proxy.scores.jsonl --output agreement.json
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from srt_trainer.errors import SRTUserError, run_cli

PROG = "srt agree"


class AgreementInputError(SRTUserError, ValueError):
    """The report cannot be written where it was asked for."""


class AgreementBelowThreshold(SRTUserError):
    """The proxy's agreement is below the user's threshold: score with the real student instead."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def command() -> None:
        from srt_trainer.agreement.config import AgreeArguments
        from srt_trainer.agreement.measure import format_agreement, measure_agreement, plot_agreement
        from srt_trainer.io import sidecar_path, write_text_atomic
        from srt_trainer.options import StageParser

        (args,) = StageParser((AgreeArguments,), PROG).parse_args_and_config(argv)
        output = Path(args.output)
        if output.suffix != ".json":
            raise AgreementInputError(f"{output}: the report is JSON and must end in .json")
        result, values = measure_agreement(
            args.a, args.b, args.top_p, args.views("a"), args.views("b"), args.min_spearman
        )
        report = result.to_dict()
        if args.plot:
            labels = (Path(args.a).name, Path(args.b).name)
            report["plot"] = str(plot_agreement(values, sidecar_path(output, "scatter.png"), labels))
        write_text_atomic(json.dumps(report, indent=2) + "\n", output)
        print(format_agreement(result))
        print(f"wrote {output}" + (f" and {report['plot']}" if args.plot else ""))
        if result.passed is False:
            raise AgreementBelowThreshold(
                f"the agreement is below --min_spearman {args.min_spearman} ({'; '.join(result.failures)}): score "
                "the rest with the real student"
            )

    return run_cli(PROG, command)
