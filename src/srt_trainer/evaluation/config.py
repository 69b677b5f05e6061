"""Options of the evaluation commands: ``srt eval generate``, ``srt eval judge`` and ``srt eval aggregate``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class GenerateConfig:
    """Options of ``srt eval generate`` (YAML via ``--config``; every field also a flag)."""

    test_sets: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Test-set files (JSON, JSONL, Parquet with an instruction / prompt / text field) or "
            "folders of them, e.g. ../shared/data/eval."
        },
    )
    output: str = field(default=None, metadata={"help": "Answers file, .jsonl or .parquet."})
    model: str = field(default="embedded", metadata={"help": "Base or merged model: 'embedded', a folder or a hub id."})
    adapter: str | None = field(default=None, metadata={"help": "A PEFT (LoRA) adapter folder applied on `model`."})
    generator: str | None = field(
        default=None,
        metadata={"help": "Name of this model in the outputs (default: from the model and adapter names)."},
    )
    template: str = field(
        default="vicuna",
        metadata={
            "help": "Prompt format the model was trained with.",
            "choices": ["vicuna", "alpaca", "wizardlm", "chat"],
        },
    )
    engine: str = field(
        default="transformers",
        metadata={
            "help": "transformers (batched generate) or vllm (needs the vllm package).",
            "choices": ["transformers", "vllm"],
        },
    )
    max_new_tokens: int = field(default=1024, metadata={"help": "Length limit of an answer, in tokens."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per generate call (transformers engine)."})
    temperature: float = field(default=0.0, metadata={"help": "0 is greedy (the paper's setting); above 0 samples."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass when sampling."})
    seed: int = field(default=0, metadata={"help": "Seed of sampling (each shard seeds seed + its index)."})
    dtype: str = field(
        default="float32", metadata={"help": "Weights' dtype.", "choices": ["float32", "bfloat16", "float16"]}
    )
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:N or auto (default: CUDA if any)."})
    limit: int | None = field(default=None, metadata={"help": "Answer only the first N items of each test set."})
    shard_size: int = field(default=64, metadata={"help": "Items per checkpointed shard (the unit of resume)."})
    alpaca_eval: bool = field(default=True, metadata={"help": "Also write <stem>.alpaca_eval.json for alpaca_eval."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the model's folder."})
    overwrite: bool = field(default=False, metadata={"help": "Discard finished shards of an earlier run."})

    def fingerprint_settings(self) -> dict[str, Any]:
        """What changes the answers: a resumed run must match these."""
        keys = (
            "model",
            "adapter",
            "template",
            "engine",
            "max_new_tokens",
            "batch_size",
            "temperature",
            "top_p",
            "seed",
            "dtype",
        )
        return {k: getattr(self, k) for k in keys}


@dataclass
class JudgeConfig:
    """Options of ``srt eval judge`` (YAML via ``--config``; every field also a flag)."""

    answers_a: str = field(
        default=None, metadata={"help": "Answers of model A (`srt eval generate` output, or AlpacaEval JSON)."}
    )
    answers_b: str = field(default=None, metadata={"help": "Answers of model B to the same items."})
    output: str = field(default=None, metadata={"help": "Reviews file, .jsonl or .parquet (one record per item)."})
    judge: str = field(
        default="openai",
        metadata={
            "help": "Judge client: openai (any OpenAI-compatible server), transformers or vllm (local).",
            "choices": ["openai", "transformers", "vllm"],
        },
    )
    judge_model: str | None = field(
        default=None,
        metadata={
            "help": "The judge's model: the served name (required "
            "for openai; the paper used gpt-4), or a folder for a local judge."
        },
    )
    base_url: str | None = field(
        default=None,
        metadata={
            "help": "OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (the API key comes from OPENAI_API_KEY)."
        },
    )
    max_tokens: int = field(default=512, metadata={"help": "Length limit of a review, in tokens."})
    temperature: float = field(default=0.0, metadata={"help": "Judge temperature (0: deterministic reviews)."})
    seed: int | None = field(default=None, metadata={"help": "Sampling seed sent to the judge, when it takes one."})
    concurrency: int = field(default=16, metadata={"help": "Requests in flight at once (openai judge)."})
    max_retries: int = field(default=8, metadata={"help": "Retries of a failed request, with backoff (openai judge)."})
    timeout: float | None = field(
        default=None,
        metadata={"help": "Seconds a request may take (openai judge; default: 1800 for a local server, 120 remote)."},
    )
    max_reasks: int = field(default=1, metadata={"help": "Times a review without readable scores is asked again."})
    limit: int | None = field(default=None, metadata={"help": "Judge only the first N matched items."})
    cache: str | None = field(
        default=None,
        metadata={"help": "Durable cache of reviews (default: <output stem>.cache.jsonl); a rerun resumes from it."},
    )
    plot: bool = field(default=True, metadata={"help": "Write the win / tie / lose chart beside the output."})


@dataclass
class AggregateConfig:
    """Options of ``srt eval aggregate`` (YAML via ``--config``; every field also a flag)."""

    reviews: list[str] = field(
        default_factory=list,
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
