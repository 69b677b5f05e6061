"""Options of the evaluation commands: ``srt eval generate`` (with the student's ``SRTModelConfig``), ``srt eval
judge`` (with ``TeacherArguments``: the judge is a teacher) and ``srt eval aggregate``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from srt_trainer.errors import SRTUserError
from srt_trainer.io import offset_field
from srt_trainer.models.config import student_settings

# What ``--unscored`` may say of a review order whose scores cannot be read.
UNSCORED_CHOICES = ("fail", "tie")


class GenerateConfigError(SRTUserError, ValueError):
    """A length limit of ``srt eval generate`` that cannot hold an answer."""


def unscored_field() -> Any:
    """``--unscored``, declared once for ``srt eval judge`` and ``srt eval aggregate``."""
    return field(
        default="fail",
        metadata={
            "help": "A review order whose scores cannot be read (after the judge's re-asks): fail leaves the item "
            "out of the counts and reports it; tie counts that order as a draw (d = 0), as the released "
            "aggregation does with its [-1, -1] placeholder, so published counts can be rebuilt from raw reviews.",
            "choices": list(UNSCORED_CHOICES),
        },
    )


@dataclass
class GenerateArguments:
    """What ``srt eval generate`` answers and how it samples (YAML via ``--config``; every field also a flag); the
    student is ``SRTModelConfig`` (model, adapter, template, dtype) and ``LoadingArguments`` (device)."""

    test_sets: list[str] = field(
        metadata={
            "help": "Test-set files (JSON, JSONL, Parquet with an instruction / prompt / text field) or "
            "folders of them, e.g. tests/data/eval."
        },
    )
    output: str = field(metadata={"help": "Answers file, .jsonl or .parquet."})
    generator: str | None = field(
        default=None,
        metadata={"help": "Name of this model in the outputs (default: from the model and adapter names)."},
    )
    engine: str = field(
        default="transformers",
        metadata={
            "help": "transformers (batched generate) or vllm (needs the vllm package).",
            "choices": ["transformers", "vllm"],
        },
    )
    vllm_options: str | None = field(
        default=None,
        metadata={
            "help": "--engine vllm: further arguments of vllm.LLM, as a JSON object such as "
            '{"tensor_parallel_size": 2}; on a CPU {"enforce_eager": true, "kv_cache_memory_bytes": 2000000000} '
            "(or set VLLM_CPU_KVCACHE_SPACE, in GiB)."
        },
    )
    max_length: int = field(
        default=1024,
        metadata={
            "help": "Length limit of prompt + answer, in tokens (the released generation script's default, 1024); a "
            "prompt that fills it gets an empty answer."
        },
    )
    max_new_tokens: int | None = field(
        default=None,
        metadata={"help": "Length limit of the answer alone, in tokens; when set it replaces --max_length."},
    )
    stop_at_turns: bool = field(
        default=True,
        metadata={
            "help": "Cut an answer at the template's answer tag if the model writes it again (vicuna 'ASSISTANT:', "
            "alpaca and wizardlm 'Response:'), as the release kept only the first answer; false keeps all the model "
            "wrote."
        },
    )
    batch_size: int = field(default=8, metadata={"help": "Prompts per generate call (transformers engine)."})
    temperature: float = field(default=0.0, metadata={"help": "0 is greedy (the paper's setting); above 0 samples."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass when sampling."})
    seed: int = field(default=0, metadata={"help": "Seed of sampling (each shard seeds seed + its index)."})
    limit: int | None = field(default=None, metadata={"help": "Answer only the first N items of each test set."})
    offset: int = offset_field()
    shard_size: int = field(default=64, metadata={"help": "Items per checkpointed shard (the unit of resume)."})
    alpaca_eval: bool = field(default=True, metadata={"help": "Also write <stem>.alpaca_eval.json for alpaca_eval."})
    overwrite: bool = field(default=False, metadata={"help": "Discard finished shards of an earlier run."})

    def __post_init__(self) -> None:
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise GenerateConfigError(f"--max_new_tokens must be positive, not {self.max_new_tokens}")
        if self.max_length < 1:
            raise GenerateConfigError(f"--max_length must be positive, not {self.max_length}")
        if self.vllm_options:
            if self.engine != "vllm":
                raise GenerateConfigError(f"--vllm_options is for --engine vllm, not {self.engine!r}")
            from srt_trainer.vllm_engine import parse_vllm_options

            parse_vllm_options(self.vllm_options, "--vllm_options")  # fail before any work

    def fingerprint_settings(self, model_args: Any) -> dict[str, Any]:
        """What changes the answers: a resumed run must match these."""
        own = ("engine", "max_length", "max_new_tokens", "stop_at_turns", "batch_size", "temperature", "top_p", "seed")
        return {k: getattr(self, k) for k in own} | student_settings(model_args)


@dataclass
class JudgeArguments:
    """What ``srt eval judge`` compares and writes (YAML via ``--config``; every field also a flag); the judge is a
    teacher (``TeacherArguments``: ``--teacher openai --teacher_model gpt-4``, also spelled ``--judge`` and
    ``--judge_model``)."""

    answers_a: str = field(metadata={"help": "Answers of model A (`srt eval generate` output, or AlpacaEval JSON)."})
    answers_b: str = field(metadata={"help": "Answers of model B to the same items."})
    output: str = field(
        metadata={
            "help": "Reviews file, .jsonl or .parquet (one record per item); the reviews are cached in "
            "<stem>.cache.jsonl unless --teacher_cache says otherwise."
        }
    )
    limit: int | None = field(default=None, metadata={"help": "Judge only the first N matched items."})
    offset: int = field(
        default=0,
        metadata={
            "help": "Skip the first N matched items (with --limit, to split judging by hand); items keep their ids."
        },
    )
    judge_input: bool = field(
        default=False,
        metadata={
            "help": "Show the judge an item's input (on the line after its instruction). Off by default: the "
            "published reviews of Self-Instruct, the one test set with inputs, asked about the instruction alone."
        },
    )
    unscored: str = unscored_field()
    plot: bool = field(default=True, metadata={"help": "Write the win / tie / lose chart beside the output."})


@dataclass
class AggregateArguments:
    """Options of ``srt eval aggregate`` (YAML via ``--config``; every field also a flag)."""

    reviews: list[str] = field(
        metadata={
            "help": "Review files (JSON list, JSONL, or a JSON object with a 'data' list) of records with "
            "'review' and 'review_reverse'."
        },
    )
    json: bool = field(default=False, metadata={"help": "Print a JSON object per file instead of the summary line."})
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Where the chart, markdown and JSON reports go (default: beside each reviews file)."},
    )
    plot: bool = field(default=True, metadata={"help": "Write the stacked win / tie / lose bar chart (PNG)."})
    unscored: str = unscored_field()
