"""``srt train`` and the SFT recipes: parse the three TRL-style configs and run ``train``.

srt train --dataset selected.jsonl --output_dir outputs/sft [--use_peft] [--config recipe.yaml]
accelerate launch --config_file accelerate_configs/deepspeed_zero3.yaml recipes/sft_7b.py --config CONFIG
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

from srt_trainer.errors import run_cli


def make_parser(prog: str = "srt train", defaults: Mapping[str, Any] | None = None) -> Any:
    """``StageParser`` over the script arguments, ``SRTSFTConfig``, the student, scoring and selection (the order of
    ``train``'s arguments); ``defaults`` replace the dataclass defaults (a YAML ``--config`` and the command line
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


def main(argv: Sequence[str] | None = None, prog: str = "srt train", defaults: Mapping[str, Any] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith((".yaml", ".yml")):  # `srt train CONFIG` is short for `srt train --config CONFIG`
        argv = ["--config", *argv]

    def command() -> None:
        from srt_trainer.training.trainer import train

        outcome = train(*make_parser(prog, defaults).parse_args_and_config(argv))
        if outcome.is_main:
            print(outcome.describe())

    return run_cli(prog, command)


if __name__ == "__main__":
    sys.exit(main())
