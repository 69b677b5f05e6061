"""Options of the main job (``srt run``): its own fields; training, selection and the student are configured as for
``srt train`` (``SRTScriptArguments``, ``SRTSFTConfig``, ``SRTModelConfig``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RunArguments:
    """The main job's own options; training, selection and the student are configured as for ``srt train``."""

    data: str = field(
        default="demo",
        metadata={
            "help": "The original instruction data: a JSON/JSONL/Parquet file, a save_to_disk folder, a hub id, "
            "or 'demo' for the small set the package carries."
        },
    )
    limit: int | None = field(default=None, metadata={"help": "Use only the first N rows of `data`."})
    held_out: str | None = field(
        default="demo-held-out",
        metadata={
            "help": "Instructions the student answers at the end (never trained on); same sources as `data`; "
            "empty to skip."
        },
    )
    teacher: str = field(
        default="transformers",
        metadata={
            "help": "openai (any OpenAI-compatible endpoint, key from OPENAI_API_KEY), transformers (a local "
            "model) or vllm.",
            "choices": ["openai", "transformers", "vllm"],
        },
    )
    teacher_model: str | None = field(
        default=None,
        metadata={
            "help": "The teacher's model (openai: the served name). Unset with a transformers teacher: the "
            "student itself, already loaded, teaches."
        },
    )
    base_url: str | None = field(default=None, metadata={"help": "openai: the endpoint, e.g. http://host:8000/v1."})
    teacher_max_tokens: int = field(default=1024, metadata={"help": "Longest teacher answer, in tokens."})
    teacher_batch_size: int = field(default=8, metadata={"help": "transformers: conversations per generate call."})
    teacher_concurrency: int = field(default=64, metadata={"help": "openai: requests in flight at most."})
    prefill: str = field(
        default="auto",
        metadata={
            "help": "Start the teacher's reply with the mode's tag: auto = on for local teachers.",
            "choices": ["auto", "on", "off"],
        },
    )
    max_reasks: int = field(default=1, metadata={"help": "Re-asks of an answer without usable tags (then fallback)."})
    max_new_tokens: int = field(default=96, metadata={"help": "Length limit of the held-out answers."})
    compare_untuned: bool = field(
        default=True, metadata={"help": "Also record the untuned student's held-out answers, side by side."}
    )
