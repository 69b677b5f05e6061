"""``srt train`` and the SFT recipes: parse the three TRL-style configs and run ``train``.

srt train --dataset selected.jsonl --output_dir outputs/sft [--use_peft] [--config recipe.yaml]
accelerate launch --config_file accelerate_configs/deepspeed_zero3.yaml recipes/sft_7b.py --config CONFIG
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from srt_trainer.training.config import SRTModelConfig, SRTScriptArguments, SRTSFTConfig


def make_parser(prog: str = "srt train", defaults: Mapping[str, Any] | None = None) -> Any:
    """``TrlParser`` over the script arguments, ``SRTSFTConfig`` and the model config; ``defaults`` replace the
    dataclass defaults (a YAML ``--config`` and the command line still override them)."""
    from trl import TrlParser

    parser = TrlParser((SRTScriptArguments, SRTSFTConfig, SRTModelConfig), prog=prog)
    if defaults:
        unknown = parser.set_defaults_with_config(**defaults)
        if unknown:
            raise ValueError(f"unknown default(s) for {prog}: {unknown}")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "srt train", defaults: Mapping[str, Any] | None = None) -> int:
    from srt_trainer.data import DataLoadError
    from srt_trainer.selection import SelectionInputError
    from srt_trainer.training.batch import GlobalBatchError
    from srt_trainer.training.data import TrainingDataError
    from srt_trainer.training.trainer import train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith((".yaml", ".yml")):  # `srt train CONFIG` is short for `srt train --config CONFIG`
        argv = ["--config", *argv]
    try:
        script_args, training_args, model_args = make_parser(prog, defaults).parse_args_and_config(argv)
        train(script_args, training_args, model_args)
    except (GlobalBatchError, TrainingDataError, DataLoadError, SelectionInputError, FileNotFoundError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        if "training input" in str(e) or "selection policy" in str(e):
            print(f"{prog}: {e}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
