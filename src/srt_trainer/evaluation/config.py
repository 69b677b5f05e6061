"""Options of the evaluation commands: ``srt eval generate`` (with the student's ``SRTModelConfig``), ``srt eval
judge`` (with ``TeacherArguments``: the judge is a teacher) and ``srt eval aggregate``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from srt_trainer.errors import SRTUserError
from srt_trainer.models.config import student_settings
from srt_trainer.options import offset_field

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


@dataclass
class MTBenchArguments:
    """What ``srt eval mtbench`` answers and grades, and where it writes (YAML via ``--config``; every field also a
    flag). The model answering is ``SRTModelConfig`` (``--model``, ``--adapter``, ``--template``) on
    ``LoadingArguments``; the judge is a teacher (``TeacherArguments``: ``--teacher openai --base_url URL
    --teacher_model NAME``)."""

    questions: str = field(metadata={"help": "MT-Bench's question.jsonl (question_id, category, turns)."})
    output_dir: str = field(
        metadata={
            "help": "Where FastChat's folders go (model_answer/<model_id>.jsonl, model_judgment/<judge>_single.jsonl "
            "and _pair.jsonl) and this run's <model_id>.mtbench.* files (summary JSON, chart, failures, rejects, "
            "judge cache, answer shards). Several models may share it."
        }
    )
    judge_prompts: str | None = field(
        default=None,
        metadata={"help": "MT-Bench's judge_prompts.jsonl (single-v1*, single-math-v1*, pair-v2*, pair-math-v1*)."},
    )
    reference_answers: str | None = field(
        default=None,
        metadata={
            "help": "The reference answers (a model_answer file, e.g. reference_answer/gpt-4.jsonl) that the math, "
            "reasoning and coding questions are graded against."
        },
    )
    answers: str | None = field(
        default=None,
        metadata={"help": "Grade this model_answer file (e.g. written by FastChat) instead of answering with --model."},
    )
    answers_b: str | None = field(
        default=None,
        metadata={"help": "Another model's model_answer file: grade the two models' answers pairwise, in both orders."},
    )
    model_id: str | None = field(
        default=None,
        metadata={
            "help": "Name of the model in the files (default: from --model and --adapter, or the --answers file)."
        },
    )
    judge_name: str | None = field(
        default=None,
        metadata={"help": "The judge's name in the judgment files' names (default: the last part of --teacher_model)."},
    )
    grade: bool = field(default=True, metadata={"help": "Grade the answers; false: write the answers and stop."})
    single: bool = field(
        default=True,
        metadata={"help": "Single-answer grading (1-10 per turn); false grades only pairwise (with --answers_b)."},
    )
    max_new_tokens: int = field(
        default=1024, metadata={"help": "Longest answer to a turn, in tokens (FastChat's default, 1024)."}
    )
    temperature: float = field(default=0.0, metadata={"help": "0 is greedy (the default); above 0 samples."})
    category_temperatures: bool = field(
        default=False,
        metadata={
            "help": "Sample each category at FastChat's temperature (writing and roleplay 0.7, stem and humanities "
            "0.1, extraction, math, coding and reasoning greedy) instead of --temperature."
        },
    )
    stop_at_turns: bool = field(
        default=True,
        metadata={"help": "Cut an answer where the model writes its answer tag again, as srt eval generate does."},
    )
    batch_size: int = field(default=8, metadata={"help": "Conversations per generate call."})
    shard_size: int = field(
        default=16,
        metadata={
            "help": "Question-file rows per checkpointed shard (the unit of resume: both turns of a shard's questions "
            "are written together)."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of sampling."})
    limit: int | None = field(default=None, metadata={"help": "Only the first N rows of the questions file."})
    plot: bool = field(default=True, metadata={"help": "Write the chart (PNG)."})
    overwrite: bool = field(default=False, metadata={"help": "Discard the answer shards of an earlier run."})

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "batch_size", "shard_size"):
            if getattr(self, name) < 1:
                raise GenerateConfigError(f"--{name} must be positive, not {getattr(self, name)}")
        if self.temperature < 0:
            raise GenerateConfigError(f"--temperature must be 0 or more, not {self.temperature}")
        if self.limit is not None and self.limit < 1:
            raise GenerateConfigError(f"--limit must be positive, not {self.limit}")
        for name in ("model_id", "judge_name"):
            value = getattr(self, name)
            if value is not None and (not value or "/" in value or value.startswith(".")):
                raise GenerateConfigError(f"--{name} {value!r}: a file name is made of it; no '/', no leading '.'")

    def fingerprint_settings(self, model_args: Any) -> dict[str, Any]:
        """What changes the answers: a resumed run must match these."""
        own = ("max_new_tokens", "temperature", "category_temperatures", "stop_at_turns", "batch_size", "seed")
        return {k: getattr(self, k) for k in own} | student_settings(model_args)
