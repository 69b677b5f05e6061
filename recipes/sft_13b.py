"""Selective Reflection-Tuning SFT of a 13B student (paper: Llama-2-13B, learning rate 1e-5).

The steps of ``sft_7b.py`` (one student: score, select, train), with the 13B defaults.

    accelerate launch --config_file accelerate_configs/deepspeed_zero3.yaml recipes/sft_13b.py \\
        --config recipes/llama2-13b/sft/config_full.yaml
"""

import runpy
import sys
from pathlib import Path

from srt_trainer.training.cli import main as parse_and_run

# The paper's learning rate for this size; a YAML --config and the command line override it.
DEFAULTS = {"learning_rate": 1e-5}

if __name__ == "__main__":
    sft_7b = runpy.run_path(str(Path(__file__).with_name("sft_7b.py")))  # its main; its __main__ block not run
    sys.exit(parse_and_run(prog="recipes/sft_13b.py", defaults=DEFAULTS, run=sft_7b["main"]))
