"""``srt eval generate | judge | aggregate``.

srt eval generate --test_sets ../shared/data/eval --output answers.jsonl [--model PATH] [--adapter DIR]
srt eval judge --answers_a a.jsonl --answers_b b.jsonl --output reviews.jsonl --base_url URL --judge_model NAME
srt eval aggregate --reviews reviews.jsonl [--json] [--output_dir DIR]
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

COMMANDS = {
    "generate": "answers of a model (base, base + adapter, or merged) to test sets",
    "judge": "two answer files judged pairwise, in both orders, by an OpenAI-compatible judge",
    "aggregate": "win / tie / lose per test set, the winning score, a chart and a markdown summary",
}


@dataclass
class AggregateConfig:
    """Options of ``srt eval aggregate`` (YAML via ``--config``; every field also a flag)."""

    reviews: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Review files (JSON list, JSONL, or a JSON object with a 'data' list) of records with "
            "'review' and 'review_reverse'."
        },
    )
    json: bool = field(default=False, metadata={"help": "Print a JSON object per file instead of the summary line."})
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Where the chart, markdown and JSON reports go (default: beside each reviews file)."},
    )
    plot: bool = field(default=True, metadata={"help": "Write the stacked win / tie / lose bar chart (PNG)."})


def run_aggregate(config: AggregateConfig) -> list[dict]:
    """Aggregate each reviews file: one line (or JSON object) per file on stdout, details on stderr."""
    from srt_trainer.evaluation.aggregate import (
        aggregate_records,
        format_table,
        load_review_records,
        summary_line,
        write_reports,
    )

    if not config.reviews:
        raise SystemExit("srt eval aggregate: --reviews FILE [FILE ...] is required")
    results = []
    for name in config.reviews:
        path = Path(name)
        if not path.is_file():
            raise SystemExit(f"srt eval aggregate: {path}: no such file")
        try:
            agg = aggregate_records(load_review_records(path))
        except ValueError as e:
            raise SystemExit(f"srt eval aggregate: {e}") from e
        stem = Path(config.output_dir) / path.name if config.output_dir else path
        paths = write_reports(agg, stem, source=str(path), plot=config.plot)
        result = {"file": str(path), **agg.to_dict(), **paths}
        results.append(result)
        if config.json:
            print(json.dumps({k: v for k, v in result.items() if k != "failures"} | {"failures": len(agg.failures)}))
        else:
            print(summary_line(agg.overall))
        print(
            f"{path}: {len(agg.failures)} failed (never counted as ties)\n{format_table(agg)}\n"
            f"reports: {', '.join(paths.values())}",
            file=sys.stderr,
        )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    from trl import TrlParser

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        asked_for_help = bool(argv) and argv[0] in ("-h", "--help")
        lines = [f"  {name:<10} {text}" for name, text in COMMANDS.items()]
        print(
            "usage: srt eval {generate,judge,aggregate} [options]\n\ncommands:\n"
            + "\n".join(lines)
            + "\n\nRun `srt eval COMMAND --help` for a command's options.",
            file=sys.stdout if asked_for_help else sys.stderr,
        )
        return 0 if asked_for_help else 2
    command, rest = argv[0], argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    prog = f"srt eval {command}"
    if command == "generate":
        from srt_trainer.evaluation.generate import GenerateConfig, run_generate

        (config,) = TrlParser(GenerateConfig, prog=prog).parse_args_and_config(rest)
        run_generate(config)
    elif command == "judge":
        from srt_trainer.evaluation.judge import JudgeConfig, run_judge

        (config,) = TrlParser(JudgeConfig, prog=prog).parse_args_and_config(rest)
        run_judge(config)
    else:
        (config,) = TrlParser(AggregateConfig, prog=prog).parse_args_and_config(rest)
        run_aggregate(config)
    return 0
