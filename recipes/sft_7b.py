"""Selective Reflection-Tuning SFT of a 7B student (paper: Llama-2-7B, learning rate 2e-5).

The student is loaded once; it scores the reflected variants (IFD / r-IFD, shared over all processes), the main
process selects what the student accepts, and TRL's SFTTrainer fine-tunes the same student on it.

    accelerate launch --config_file accelerate_configs/deepspeed_zero3.yaml recipes/sft_7b.py \\
        --config recipes/llama2-7b/sft/config_full.yaml

Any field of the YAML can be overridden on the command line (``--learning_rate 1e-5``); ``--help`` lists them.
"""

import sys

from srt_trainer.training import Student, prepare_training_data, train
from srt_trainer.training.cli import main as parse_and_run

# The paper's learning rate for this size; a YAML --config and the command line override it.
DEFAULTS = {"learning_rate": 2e-5}


def main(script_args, training_args, model_args, scoring, selection) -> None:
    student = Student(model_args, training_args)  # loaded once, when first needed: it scores, then it is trained
    data = prepare_training_data(
        script_args, scoring, selection, student, training_args.output_dir, seed=training_args.seed
    )
    outcome = train(data, script_args, training_args, student, selection)
    if outcome.is_main:
        print(outcome.describe())


if __name__ == "__main__":
    sys.exit(parse_and_run(prog="recipes/sft_7b.py", defaults=DEFAULTS, run=main))
