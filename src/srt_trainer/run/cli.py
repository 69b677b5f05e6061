"""``srt run CONFIG``: the main job from one YAML file (``srt run --help`` lists every field)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from srt_trainer.errors import run_cli
from srt_trainer.run.config import RunArguments

PROG = "srt run"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):  # `srt run CONFIG` is short for `srt run --config CONFIG`
        argv = ["--config", *argv]

    def command() -> None:
        from srt_trainer.models.config import SRTModelConfig
        from srt_trainer.options import StageParser
        from srt_trainer.reflection.config import ReflectionArguments
        from srt_trainer.run.job import run
        from srt_trainer.scoring.config import ScoringArguments
        from srt_trainer.selection.config import SelectionArguments
        from srt_trainer.teachers.config import TeacherArguments
        from srt_trainer.training.config import SRTScriptArguments, SRTSFTConfig

        dataclasses = (
            RunArguments,
            TeacherArguments,
            ReflectionArguments,
            ScoringArguments,
            SelectionArguments,
            SRTScriptArguments,
            SRTSFTConfig,
            SRTModelConfig,
        )
        # the generated usage would list every field, and not the CONFIG `main` accepts
        parser = StageParser(
            dataclasses,
            PROG,
            note="`%(prog)s CONFIG` is short for `%(prog)s --config CONFIG`.",
            usage="%(prog)s CONFIG [--OPTION VALUE ...]",
        )
        result = run(*parser.parse_args_and_config(argv))
        if not result.is_main:
            return
        for a in result.answers:
            print(f"\nQ: {a['instruction']}\nA (tuned): {a['output']}")
            if "untuned_output" in a:
                print(f"A (untuned): {a['untuned_output']}")
        print(f"\n{result.describe()}")

    return run_cli(PROG, command)
