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


# What AlpacaEval's package can turn preferences into: the plain win rate, and the length-controlled one (its GLM
# needs a file from the hub, so it works only online).
ALPACA_METRICS = ("get_winrate", "get_length_controlled_winrate")


class EvalConfigError(SRTUserError, ValueError):
    """An option of ``srt eval alpacaeval``, ``harness`` or ``report`` that cannot work as given."""


@dataclass
class AlpacaEvalArguments:
    """What ``srt eval alpacaeval`` judges with AlpacaEval's own package (YAML via ``--config``; every field also a
    flag). The judge is any OpenAI-compatible endpoint; its API key is read from ``OPENAI_API_KEY``, never from a
    flag or a file."""

    model_outputs: str = field(
        metadata={
            "help": "The model's outputs: the <stem>.alpaca_eval.json that `srt eval generate` writes, or any JSON / "
            "JSONL list of {instruction, output, generator}."
        }
    )
    reference_outputs: str = field(
        metadata={"help": "The reference outputs to the same instructions (AlpacaEval's baseline), same format."}
    )
    output: str = field(
        metadata={
            "help": "Annotations file (.jsonl or .parquet), one AlpacaEval annotation per judged item; the win rate "
            "goes to <stem>.summary.json and <stem>.leaderboard.csv, how it was obtained to <stem>.manifest.json."
        }
    )
    judge_model: str | None = field(
        default=None,
        metadata={
            "help": "The judge's model name as its endpoint serves it (required with the shipped annotator).",
            "aliases": ["--teacher_model"],
        },
    )
    base_url: str | None = field(
        default=None,
        metadata={"help": "The judge's OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (default: OpenAI)."},
    )
    annotators_config: str | None = field(
        default=None,
        metadata={
            "help": "An AlpacaEval annotator: a folder with configs.yaml, or the name of one the package ships "
            "(alpaca_eval_gpt4). Default: srt_trainer's own chat-judge annotator (one label, anchored patterns), "
            "set up with --judge_model."
        },
    )
    judge_max_tokens: int = field(default=16, metadata={"help": "Longest judge reply (shipped annotator)."})
    judge_concurrency: int = field(default=4, metadata={"help": "Judge requests in flight (shipped annotator)."})
    fn_metric: str = field(
        default="get_winrate",
        metadata={
            "help": "AlpacaEval's metric: get_winrate, or get_length_controlled_winrate (adds the length-controlled "
            "win rate; its model needs a file from the hub, so only online).",
            "choices": list(ALPACA_METRICS),
        },
    )
    name: str | None = field(
        default=None, metadata={"help": "The model's name in the results (default: its outputs' generator)."}
    )
    seed: int = field(default=0, metadata={"help": "AlpacaEval's annotator seed (which output is shown first)."})
    limit: int | None = field(default=None, metadata={"help": "Judge only the first N matched items."})
    chunk_size: int = field(
        default=64,
        metadata={"help": "Items per run of the package; finished chunks are kept and never judged again (resume)."},
    )
    python: str | None = field(
        default=None,
        metadata={
            "help": "The Python that has alpaca_eval installed (default: this one; `make` installs it in the "
            "project's environment)."
        },
    )
    overwrite: bool = field(default=False, metadata={"help": "Discard the finished chunks of an earlier run."})

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise EvalConfigError(f"--chunk_size must be positive, not {self.chunk_size}")
        if self.judge_concurrency < 1:
            raise EvalConfigError(f"--judge_concurrency must be positive, not {self.judge_concurrency}")
        if self.annotators_config is None and not self.judge_model:
            raise EvalConfigError("--judge_model is required with the shipped annotator (or give --annotators_config)")


@dataclass
class HarnessArguments:
    """What ``srt eval harness`` runs with lm-evaluation-harness (YAML via ``--config``; every field also a flag)."""

    model: str = field(metadata={"help": "The model: a folder or hub id, or 'embedded' (the embedded student)."})
    tasks: list[str] = field(
        metadata={
            "help": "lm_eval task or group names (several, or separated by commas), or leaderboard_v1: the Open LLM "
            "Leaderboard (v1) of the paper's tables, each task at its own shot count, with their average."
        }
    )
    output: str = field(
        metadata={
            "help": "Results file (.jsonl or .parquet), one row per task with its main metric; lm_eval's full "
            "results go to <stem>.results.json, the average to <stem>.summary.json."
        }
    )
    adapter: str | None = field(default=None, metadata={"help": "A trained PEFT (LoRA) adapter folder on --model."})
    num_fewshot: int | None = field(
        default=None, metadata={"help": "Shots of every task (default: each task's own); refused with a preset."}
    )
    include_path: str | None = field(
        default=None, metadata={"help": "A folder of task YAML files of your own (lm_eval --include_path)."}
    )
    batch_size: int = field(default=8, metadata={"help": "Requests per forward pass."})
    limit: int | None = field(default=None, metadata={"help": "Only the first N documents of each task (a check)."})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda or cuda:N (default: cuda if present)."})
    dtype: str = field(default="auto", metadata={"help": "auto (the model's own), float32, bfloat16 or float16."})
    seed: int = field(
        default=0,
        metadata={
            "help": "lm_eval's random seed (its numpy, torch and few-shot seeds stay "
            "at its defaults, 1234, as the lm_eval command has them)."
        },
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Run code shipped with the model (off)."})
    overwrite: bool = field(default=False, metadata={"help": "Discard the finished tasks of an earlier run."})

    def __post_init__(self) -> None:
        self.tasks = [t.strip() for item in self.tasks for t in str(item).split(",") if t.strip()]
        if not self.tasks:
            raise EvalConfigError("--tasks names no task")
        if self.batch_size < 1:
            raise EvalConfigError(f"--batch_size must be positive, not {self.batch_size}")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise EvalConfigError(f"--num_fewshot must be 0 or more, not {self.num_fewshot}")


@dataclass
class ReportArguments:
    """What ``srt eval report`` gathers into one table (YAML via ``--config``; every field also a flag)."""

    output: str = field(metadata={"help": "The markdown report (.md); the same in JSON goes beside it (.json)."})
    pairwise: list[str] = field(
        default_factory=list,
        metadata={"help": "Pairwise results: the <stem>.aggregate.json of `srt eval judge` or `srt eval aggregate`."},
    )
    mtbench: list[str] = field(
        default_factory=list,
        metadata={
            "help": "MT-Bench results: the <model_id>.mtbench.summary.json of `srt eval mtbench` (single grades and "
            "the pairwise result), or FastChat's single-grade judgments (model_judgment/<judge>_single.jsonl)."
        },
    )
    alpacaeval: list[str] = field(
        default_factory=list,
        metadata={
            "help": "AlpacaEval results: the output of `srt eval alpacaeval` or a leaderboard.csv of the package."
        },
    )
    harness: list[str] = field(
        default_factory=list,
        metadata={"help": "Harness results: the output of `srt eval harness` or an lm_eval results_*.json."},
    )

    def __post_init__(self) -> None:
        if not (self.pairwise or self.mtbench or self.alpacaeval or self.harness):
            raise EvalConfigError("nothing to report: give --pairwise, --mtbench, --alpacaeval or --harness files")
        if not self.output.endswith(".md"):
            raise EvalConfigError(f"--output must be a markdown file (.md), not {self.output}")


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
