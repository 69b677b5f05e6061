"""Selective Reflection-Tuning SFT of a 13B student (paper: Llama-2-13B, learning rate 1e-5).

Same steps as ``sft_7b.py`` (one student: score, select, train), with the 13B defaults.

    accelerate launch --config_file accelerate_configs/deepspeed_zero3.yaml recipes/sft_13b.py \\
        --config recipes/llama2-13b/sft/config_full.yaml
"""

import sys

from srt_trainer.training.cli import main

# The paper's learning rate for this size; a YAML --config and the command line override it.
DEFAULTS = {"learning_rate": 1e-5}

if __name__ == "__main__":
    sys.exit(main(prog="recipes/sft_13b.py", defaults=DEFAULTS))
