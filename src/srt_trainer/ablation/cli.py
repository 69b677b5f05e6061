"""``srt ablate``: the paper's ablation and the field's baselines on one student, from one command.

srt ablate --ori_scores ori.scores.jsonl --q_scores q.scores.jsonl --a_scores a.scores.jsonl
    --qa_scores qa.scores.jsonl --test_sets tests/data/eval --output_dir outputs/ablate
    --teacher openai --base_url URL --teacher_model NAME [--use_peft true] [--config recipe.yaml]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from srt_trainer.errors import run_cli

PROG = "srt ablate"


def make_parser() -> Any:
    """``StageParser`` over the ablation's own options, the inputs, selection, scoring, training, the student and
    the judge (a teacher)."""
    from srt_trainer.ablation.config import AblateArguments
    from srt_trainer.models.config import SRTModelConfig
    from srt_trainer.options import StageParser
    from srt_trainer.reflection.config import ReflectionArguments
    from srt_trainer.scoring.config import ScoringArguments
    from srt_trainer.selection.config import SelectionArguments
    from srt_trainer.teachers.config import TeacherArguments
    from srt_trainer.training.config import SRTScriptArguments, SRTSFTConfig

    dataclasses = (
        AblateArguments,
        SRTScriptArguments,
        SelectionArguments,
        ScoringArguments,
        SRTSFTConfig,
        SRTModelConfig,
        TeacherArguments,
        ReflectionArguments,
    )
    return StageParser(
        dataclasses,
        PROG,
        note="`%(prog)s CONFIG` is short for `%(prog)s --config CONFIG`. The judge is a teacher "
        "(--teacher openai --base_url URL --teacher_model NAME); --policy is set per arm.",
        usage="%(prog)s CONFIG [--OPTION VALUE ...]",
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith((".yaml", ".yml")):  # `srt ablate CONFIG` is short for `srt ablate --config CONFIG`
        argv = ["--config", *argv]

    def command() -> None:
        from srt_trainer.ablation.runner import run_ablation

        result = run_ablation(*make_parser().parse_args_and_config(argv))
        if not result.is_main:
            return
        for step in ("reflect", "select", "train", "held_out", "generate", "judge", "mtbench", "harness"):
            if step in result.ran:
                print(f"{step}: {', '.join(result.ran[step])}")
        print(result.files["markdown"].read_text().rstrip())
        timings = ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in result.timings.items())
        print(f"\n{timings}\nwrote " + ", ".join(str(p) for p in result.files.values()))

    return run_cli(PROG, command)


if __name__ == "__main__":
    sys.exit(main())
