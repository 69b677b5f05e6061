"""``srt reflect``: rewrite instructions (variant Q) or responses (A, QA) with a teacher LLM.

srt reflect --mode instruction --data alpaca.json --output q.jsonl --teacher transformers
srt reflect --mode response --data q.jsonl --output qa.jsonl --teacher openai --teacher-model gpt-4o-mini
OPENAI_API_KEY=... srt reflect --mode response --data alpaca.json --output a.jsonl --teacher openai \
    --teacher-model NAME --base-url http://127.0.0.1:8000/v1
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from srt_trainer.teachers import SamplingConfig, Teacher

logger = logging.getLogger(__name__)


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
            "help": "openai: retries of a request after 429, 5xx, a time-out, "
            "a dropped connection or an unreadable body (exponential backoff with jitter, "
            "Retry-After honoured)."
        },
    )
    request_timeout: float = field(default=120.0, metadata={"help": "openai: seconds per request."})
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
        from srt_trainer.io import sidecar_path

        return Path(self.cache) if self.cache else sidecar_path(self.output, "teacher-cache.jsonl")


def build_teacher_from_config(config: ReflectConfig) -> Teacher:
    from srt_trainer.teachers import build_teacher

    options: dict[str, Any]
    if config.teacher == "openai":
        options = {
            "concurrency": config.concurrency,
            "max_retries": config.max_retries,
            "timeout": config.request_timeout,
        }
    elif config.teacher == "transformers":
        options = {
            "dtype": config.dtype,
            "device": config.device,
            "batch_size": config.batch_size,
            "trust_remote_code": config.trust_remote_code,
        }
    else:
        options = {"trust_remote_code": config.trust_remote_code}
    return build_teacher(config.teacher, model=config.teacher_model, base_url=config.base_url, **options)


def run_reflect(config: ReflectConfig, teacher: Teacher | None = None) -> list[dict[str, Any]]:
    """Reflect ``config.data`` into ``config.output`` (plus ``.raw.jsonl``, ``.summary.json`` and the rejects);
    returns the output rows. ``teacher``: one already built (default: from ``config``)."""
    from srt_trainer.data import load_instruction_data, rejects_path_for, summarize_rejects
    from srt_trainer.io import check_output_path, sidecar_path, write_rows
    from srt_trainer.reflection.prompts import load_prompt
    from srt_trainer.reflection.runner import reflect

    if not config.mode or not config.data or not config.output:
        raise SystemExit("srt reflect: --mode, --data and --output are required")
    output = check_output_path(config.output)
    prompt = load_prompt(config.mode, config.prompt_template)
    teacher = teacher or build_teacher_from_config(config)
    loaded = load_instruction_data(
        config.data, format=config.data_format, limit=config.limit, rejects_path=rejects_path_for(output)
    )
    rows = loaded.dataset.to_list()
    print(
        f"{loaded.source}: {loaded.num_rows_read} rows read ({loaded.format}), {len(rows)} to reflect; "
        f"{summarize_rejects(loaded.rejects)}"
    )
    cache = config.cache_path()
    result = reflect(
        rows,
        config.mode,
        teacher,
        prompt=prompt,
        sampling=config.sampling(),
        cache_path=cache,
        prefill=config.prefill_flag(),
        variant=config.variant,
        max_reasks=config.max_reasks,
        reask_temperature=config.reask_temperature,
        progress=config.progress,
    )
    write_rows(result.rows, output)
    write_rows(result.raw, sidecar_path(output, "raw.jsonl"))
    summary = {
        "mode": config.mode,
        "variant": result.variant,
        "rows": len(result.rows),
        **result.statuses,
        "counts": result.counts.as_dict(),
        "teacher": teacher.identity(),
        "prompt": prompt.source,
        "data": loaded.source,
        "rejected_rows": len(loaded.rejects),
        "output": str(output),
        "cache": str(cache),
        "config": asdict(config),
    }
    sidecar_path(output, "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    print(result.format())
    if result.statuses["failed"]:
        print(
            f"{result.statuses['failed']} rows failed (the teacher never answered; originals kept): run the same "
            f"command again to ask for them only; answered rows come from {cache}."
        )
    print(f"wrote {output} ({len(result.rows)} rows)")
    return result.rows


def main(argv: Sequence[str] | None = None) -> int:
    from trl import TrlParser

    from srt_trainer.teachers import TeacherError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    argv = list(sys.argv[1:] if argv is None else argv)
    (config,) = TrlParser(ReflectConfig, prog="srt reflect").parse_args_and_config(argv)
    try:
        run_reflect(config)
    except TeacherError as e:
        print(f"srt reflect: {e}", file=sys.stderr)
        return 2
    return 0
