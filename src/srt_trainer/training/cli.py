"""``srt train`` and the SFT recipes: parse the TRL-style configs, prepare the data, then ``train``.

srt train --dataset selected.jsonl --output_dir outputs/sft [--use_peft] [--config recipe.yaml]
accelerate launch --config_file accelerate_configs/deepspeed_zero3.yaml recipes/sft_7b.py --config CONFIG
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from srt_trainer.errors import run_cli


def make_parser(prog: str = "srt train", defaults: Mapping[str, Any] | None = None) -> Any:
    """``StageParser`` over the script arguments, ``SRTSFTConfig``, the student, scoring and selection (the order of
    ``sft``'s arguments); ``defaults`` replace the dataclass defaults (a YAML ``--config`` and the command line
    still override them)."""
    from srt_trainer.models.config import SRTModelConfig
    from srt_trainer.options import StageParser
    from srt_trainer.scoring.config import ScoringArguments
    from srt_trainer.selection.config import SelectionArguments
    from srt_trainer.training.config import SRTScriptArguments, SRTSFTConfig

    dataclasses = (SRTScriptArguments, SRTSFTConfig, SRTModelConfig, ScoringArguments, SelectionArguments)
    parser = StageParser(dataclasses, prog, note="`%(prog)s FILE.yaml` is short for `%(prog)s --config FILE.yaml`.")
    if defaults:
        unknown = parser.set_defaults_with_config(**defaults)
        if unknown:
            raise ValueError(f"unknown default(s) for {prog}: {unknown}")  # a recipe script's bug
    return parser


def sft(script_args: Any, training_args: Any, model_args: Any, scoring: Any, selection: Any) -> None:
    """``srt train``: the student, the data it trains on (scored and selected here where asked), the training."""
    from srt_trainer.training import Student, prepare_training_data, train

    student = Student(model_args, training_args)  # loaded once, when first needed: it scores, then it is trained
    data = prepare_training_data(
        script_args, scoring, selection, student, training_args.output_dir, seed=training_args.seed
    )
    outcome = train(data, script_args, training_args, student, selection)
    if outcome.is_main:
        print(outcome.describe())


def main(
    argv: Sequence[str] | None = None,
    prog: str = "srt train",
    defaults: Mapping[str, Any] | None = None,
    run: Callable[..., None] = sft,
) -> int:
    """Parse the command line (and a YAML ``--config``) over ``defaults`` and ``run`` the five configs (a recipe
    passes its own ``main``); the exit status: 0 done, 2 one line naming the file or option to fix."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith((".yaml", ".yml")):  # `srt train CONFIG` is short for `srt train --config CONFIG`
        argv = ["--config", *argv]
    return run_cli(prog, lambda: run(*make_parser(prog, defaults).parse_args_and_config(argv)))


if __name__ == "__main__":
    sys.exit(main())
