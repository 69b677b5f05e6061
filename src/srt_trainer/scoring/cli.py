"""``srt score``: the student's IFD / r-IFD statistics of every row of a file.

srt score --data alpaca.json --output scores.jsonl [--model PATH] [--template vicuna] [--dtype bfloat16]
accelerate launch --multi_gpu --num_processes N -m srt_trainer.cli score --data ... --output ...
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class ScoreConfig:
    """Options of ``srt score`` (YAML via ``--config``; every field also a flag)."""

    data: str = field(
        default=None,
        metadata={
            "help": "Rows to score: JSON, JSONL or Parquet (Alpaca, ShareGPT or "
            "chat messages), a save_to_disk folder or a hub id."
        },
    )
    output: str = field(
        default=None,
        metadata={"help": "Output file, .jsonl or .parquet: every input row, in order, with its statistics."},
    )
    model: str = field(default="embedded", metadata={"help": "The student: 'embedded', a folder or a hub id."})
    adapter: str | None = field(default=None, metadata={"help": "A PEFT (LoRA) adapter folder to apply on top."})
    template: str = field(
        default="vicuna",
        metadata={"help": "Prompt template of the statistics.", "choices": ["vicuna", "alpaca", "wizardlm", "chat"]},
    )
    dtype: str = field(
        default="float32", metadata={"help": "Compute dtype.", "choices": ["float32", "bfloat16", "float16"]}
    )
    max_length: int = field(default=2048, metadata={"help": "Truncation length of the released scorer."})
    token_budget: int | None = field(
        default=None,
        metadata={
            "help": "Tokens per forward, padding included (default: "
            "4096 on CPU; on CUDA derived from free memory, at most "
            "65536; halved on out-of-memory errors)."
        },
    )
    max_batch_size: int = field(default=128, metadata={"help": "Views per forward batch at most."})
    shard_size: int = field(default=256, metadata={"help": "Rows per checkpointed shard (the unit of resume)."})
    limit: int | None = field(default=None, metadata={"help": "Score only the first N rows of the file."})
    data_format: str = field(default="auto", metadata={"help": "auto, alpaca, sharegpt or messages."})
    device: str | None = field(
        default=None,
        metadata={
            "help": "cpu, cuda, cuda:N or auto (default: this process's device under accelerate, else CUDA if any)."
        },
    )
    load_in_4bit: bool = field(default=False, metadata={"help": "Quantize the student to 4 bits (bitsandbytes NF4)."})
    load_in_8bit: bool = field(default=False, metadata={"help": "Quantize the student to 8 bits (bitsandbytes)."})
    attn_implementation: str | None = field(default=None, metadata={"help": "sdpa, eager, flash_attention_2, ..."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the model's folder."})
    share_prefix: bool = field(
        default=True,
        metadata={"help": "Compute the shared template prefix's keys and values once (exact; off only to compare)."},
    )
    engine: str = field(
        default="auto",
        metadata={
            "help": "How views are laid out per forward: packed (back to back in rows under a block-diagonal "
            "causal mask, no padding), padded (right-padded batches), or auto: packed where the attention "
            "(sdpa, eager) takes an explicit mask, padded otherwise.",
            "choices": ["auto", "packed", "padded"],
        },
    )
    overwrite: bool = field(default=False, metadata={"help": "Discard finished shards of an earlier run."})
    plot: bool = field(default=True, metadata={"help": "Write the IFD / r-IFD histogram PNG beside the output."})

    def fingerprint_settings(self) -> dict[str, Any]:
        """What changes the numbers: a resumed run must match these."""
        keys = (
            "model",
            "adapter",
            "template",
            "dtype",
            "max_length",
            "token_budget",
            "max_batch_size",
            "load_in_4bit",
            "load_in_8bit",
            "attn_implementation",
            "share_prefix",
            "engine",
        )
        return {k: getattr(self, k) for k in keys}


def output_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The input's own columns: Alpaca fields, conversations when the data has them, and any extra columns."""
    internal = {"messages", "system", "num_turns", "source_format"}
    chat = any(r["source_format"] != "alpaca" for r in rows)
    extras = [
        k
        for k in (rows[0] if rows else {})
        if k not in internal and k not in ("row_index", "instruction", "input", "output")
    ]
    return ["row_index", "instruction", "input", "output", *(["system", "messages"] if chat else []), *extras]


def run_score(config: ScoreConfig, model: Any = None, tokenizer: Any = None) -> list[dict[str, Any]] | None:
    """Score ``config.data`` and write ``config.output``; returns the rows on the main process.

    ``model`` / ``tokenizer``: a student already loaded by the caller (the main job scores and then generates with
    the same one); by default they are loaded from ``config``.
    """
    import torch

    from srt_trainer.data import load_instruction_data, rejects_path_for, summarize_rejects
    from srt_trainer.distributed import get_state
    from srt_trainer.io import check_output_path, sidecar_path, write_rows
    from srt_trainer.models import load_student, load_tokenizer
    from srt_trainer.scoring.report import format_summary, plot_histograms, summarize
    from srt_trainer.scoring.runner import score_dataset
    from srt_trainer.scoring.scorer import STAT_COLUMNS, IFDScorer

    if not config.data or not config.output:
        raise SystemExit("srt score: --data and --output are required")
    output = check_output_path(config.output)
    state = get_state()
    work_dir = sidecar_path(output, "score-shards")
    if config.overwrite and state.is_main_process:
        shutil.rmtree(work_dir, ignore_errors=True)
    state.wait_for_everyone()

    loaded = load_instruction_data(
        config.data,
        format=config.data_format,
        limit=config.limit,
        rejects_path=rejects_path_for(output) if state.is_main_process else None,
    )
    rows = loaded.dataset.to_list()
    if state.is_main_process:
        print(
            f"{loaded.source}: {loaded.num_rows_read} rows read ({loaded.format}), {len(rows)} to score; "
            f"{summarize_rejects(loaded.rejects)}"
        )

    device = config.device or (str(state.device) if state.num_processes > 1 else None)
    if state.num_processes > 1 and (device or "cpu").startswith("cpu") and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // state.num_processes))
    if tokenizer is None:
        tokenizer = load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
    if model is None:
        model = load_student(
            config.model,
            dtype=config.dtype,
            device=device,
            trust_remote_code=config.trust_remote_code,
            attn_implementation=config.attn_implementation,
            adapter=config.adapter,
            load_in_4bit=config.load_in_4bit,
            load_in_8bit=config.load_in_8bit,
        )
    scorer = IFDScorer(
        model,
        tokenizer,
        config.template,
        max_length=config.max_length,
        token_budget=config.token_budget,
        max_batch_size=config.max_batch_size,
        share_prefix=config.share_prefix,
        engine=config.engine,
    )
    stats = score_dataset(
        rows,
        scorer,
        work_dir,
        shard_size=config.shard_size,
        settings=config.fingerprint_settings(),
        progress=state.is_local_main_process,
    )
    if stats is None:
        return None

    multi_turn = any(s["num_turns"] > 1 for s in stats)
    columns = output_columns(rows)
    extra_stats = ["num_turns", "ifd_turns", "rifd_turns"] if multi_turn else []
    out_rows = [
        {**{c: r.get(c) for c in columns}, **{c: s[c] for c in (*STAT_COLUMNS, "score_error", *extra_stats)}}
        for r, s in zip(rows, stats, strict=True)
    ]
    write_rows(out_rows, output)
    summary = summarize(out_rows)
    summary.update(
        data=loaded.source,
        rejected_rows=len(loaded.rejects),
        output=str(output),
        config=asdict(config),
        scorer={"fast_path": scorer.fast_path, "engine": scorer.engine, "token_budget": scorer.token_budget},
    )
    sidecar_path(output, "summary.json").write_text(json.dumps(summary, indent=2))
    print(format_summary(summary))
    if config.plot:
        png = plot_histograms(
            out_rows,
            sidecar_path(output, "hist.png"),
            title=f"{Path(loaded.source).name}: {config.model} ({config.template}, {config.dtype})",
        )
        if png:
            print(f"histogram: {png}")
    print(f"wrote {output} ({len(out_rows)} rows)")
    return out_rows


def main(argv: Sequence[str] | None = None) -> int:
    from trl import TrlParser

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    (config,) = TrlParser(ScoreConfig, prog="srt score").parse_args_and_config(argv)
    run_score(config)
    return 0
