"""Options of the reflection stage (``srt reflect``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from srt_trainer.io import sidecar_path
from srt_trainer.teachers.base import SamplingConfig


@dataclass
class ReflectConfig:
    """Options of ``srt reflect`` (YAML via ``--config``; every field also a flag, ``--base-url`` or ``--base_url``)."""

    mode: str = field(
        default=None,
        metadata={
            "help": "instruction: a new, harder instruction and its answer "
            "(variant Q); response: a better answer (A, or QA on a Q file).",
            "choices": ["instruction", "response"],
        },
    )
    data: str = field(
        default=None,
        metadata={
            "help": "Rows to reflect: JSON, JSONL or Parquet (Alpaca, ShareGPT or "
            "chat messages), a save_to_disk folder or a hub id."
        },
    )
    output: str = field(
        default=None,
        metadata={
            "help": "Output file, .jsonl or .parquet: one row per input row, in "
            "order. Raw teacher texts go to <stem>.raw.jsonl, counts to "
            "<stem>.summary.json."
        },
    )
    teacher: str = field(
        default="transformers",
        metadata={
            "help": "openai (any OpenAI-compatible endpoint), "
            "transformers (a local model) or vllm (vLLM's offline engine).",
            "choices": ["openai", "transformers", "vllm"],
        },
    )
    teacher_model: str | None = field(
        default=None,
        metadata={
            "help": "The teacher's model: the served name for "
            "openai (required); a folder, hub id or 'embedded' (default) "
            "otherwise."
        },
    )
    base_url: str | None = field(
        default=None,
        metadata={
            "help": "OpenAI-compatible endpoint, e.g. "
            "http://127.0.0.1:8000/v1 (default: api.openai.com). The key is read from "
            "OPENAI_API_KEY, never from a flag or a file."
        },
    )
    variant: str = field(
        default="auto",
        metadata={
            "help": "Response mode: A (original rows) or QA (rows of an "
            "instruction-mode output); auto reads the rows' variant column.",
            "choices": ["auto", "Q", "A", "QA"],
        },
    )
    prompt_template: str | None = field(
        default=None,
        metadata={
            "help": "Your own prompts for this mode: YAML/JSON "
            "with system, user (and prefix) keys, or a text file with the user template. "
            "Fields: {instruction}, {input}, {output}, {input_section}."
        },
    )
    prefill: str = field(
        default="auto",
        metadata={
            "help": "Start the teacher's reply with the mode's tag ([New "
            "Instruction] / [Better Answer]): auto = on for local teachers, off for API teachers.",
            "choices": ["auto", "on", "off"],
        },
    )
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature (0: greedy, as the release)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass."})
    max_tokens: int = field(default=1024, metadata={"help": "Longest teacher answer, in tokens."})
    seed: int | None = field(default=None, metadata={"help": "Sampling seed sent to the teacher."})
    max_reasks: int = field(
        default=1,
        metadata={
            "help": "Ask again this many times when an answer has no usable "
            "tags (the release retried once), then keep the original text (fallback)."
        },
    )
    reask_temperature: float | None = field(
        default=0.7,
        metadata={"help": "Temperature of a re-ask of a greedy request (a greedy teacher would repeat itself)."},
    )
    concurrency: int = field(default=64, metadata={"help": "openai: requests in flight at most."})
    max_retries: int = field(
        default=8,
        metadata={
            "help": "openai: retries of a request after 408, 409, 429, 5xx, a "
            "time-out or a dropped connection (the openai client's exponential backoff with jitter, "
            "Retry-After honoured), and re-sends of an unreadable body."
        },
    )
    request_timeout: float | None = field(
        default=None,
        metadata={
            "help": "openai: seconds per request (default: 1800 for a server on this machine or network, where "
            "requests queue, 120 for a remote API). A timed-out request is sent again once, with twice the "
            "time-out, and fewer requests are kept in flight from then on."
        },
    )
    batch_size: int = field(default=8, metadata={"help": "transformers: conversations per generate call."})
    dtype: str = field(
        default="float32",
        metadata={"help": "transformers: the teacher's dtype.", "choices": ["float32", "bfloat16", "float16"]},
    )
    device: str | None = field(default=None, metadata={"help": "transformers: cpu, cuda, cuda:N or auto."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the teacher's folder."})
    cache: str | None = field(
        default=None,
        metadata={
            "help": "The durable response cache (default: "
            "<output stem>.teacher-cache.jsonl beside the output). Answers in it are never "
            "asked again."
        },
    )
    limit: int | None = field(default=None, metadata={"help": "Reflect only the first N rows of the file."})
    data_format: str = field(default="auto", metadata={"help": "auto, alpaca, sharegpt or messages."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar (rows/s and tokens)."})

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(
            temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens, seed=self.seed
        )

    def prefill_flag(self) -> bool | None:
        return {"auto": None, "on": True, "off": False}[self.prefill]

    def cache_path(self) -> Path:
        return Path(self.cache) if self.cache else sidecar_path(self.output, "teacher-cache.jsonl")
