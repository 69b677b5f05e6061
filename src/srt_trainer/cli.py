"""The ``srt`` command: one sub-command per pipeline stage.

Each stage parses its own dataclass config (TRL style: ``--config file.yaml`` plus CLI overrides), so
``srt STAGE --help`` lists that stage's options with their docstrings. Every stage exits 0 when done, 2 on a
user error (one line on stderr) and 1 on a bug (with its traceback): see ``srt_trainer.errors``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from srt_trainer.errors import EXIT_USER_ERROR, debugging, invalid_choice


@dataclass(frozen=True)
class Stage:
    help: str
    entry: str  # "module:function" taking argv, returning the exit status


STAGES: dict[str, Stage] = {
    "score": Stage("score rows with the student's IFD / r-IFD statistics", "srt_trainer.scoring.cli:main"),
    "reflect": Stage("rewrite instructions or responses with a teacher LLM", "srt_trainer.reflection.cli:main"),
    "select": Stage("keep the rewrites the student accepts", "srt_trainer.selection.cli:main"),
    "agree": Stage(
        "how far two students' (or precisions') scores and selections agree", "srt_trainer.agreement.cli:main"
    ),
    "train": Stage("fine-tune the student on the selected data with TRL's SFTTrainer", "srt_trainer.training.cli:main"),
    "run": Stage(
        "the main job: reflect, score, select and train end to end from one config", "srt_trainer.run.cli:main"
    ),
    "eval": Stage("generate answers, judge them pairwise, aggregate win/tie/lose", "srt_trainer.evaluation.cli:main"),
    "ablate": Stage(
        "the paper's ablation and baselines: every arm selected, trained and judged alike, one table with intervals",
        "srt_trainer.ablation.cli:main",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="srt",
        description="Selective Reflection-Tuning: teacher rewrites, student-selected data, TRL fine-tuning.",
        epilog="Run `srt STAGE --help` for a stage's options.",
    )
    from srt_trainer import __version__

    parser.add_argument("--version", action="version", version=f"srt_trainer {__version__}")
    parser.add_argument("--debug", action="store_true", help="print the traceback of a user error too")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", title="stages")
    for name, stage in STAGES.items():
        sub.add_parser(name, help=stage.help, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # anywhere on the line: tracebacks for user errors too (see srt_trainer.errors)
    if debug:
        argv.remove("--debug")
    stage = next((arg for arg in argv if not arg.startswith("-")), None)
    if stage is not None and stage not in STAGES:  # argparse says "invalid choice" but not the closest one
        print(f"srt: {invalid_choice('stage', stage, STAGES)}", file=sys.stderr)
        return EXIT_USER_ERROR
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.stage is None:
        parser.print_help()
        return EXIT_USER_ERROR
    module, func = STAGES[args.stage].entry.split(":")
    with debugging(debug):
        return int(getattr(importlib.import_module(module), func)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
