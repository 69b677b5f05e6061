"""Options of the main job (``srt run``): its own fields; the teacher, scoring, selection, training and the student
are configured as for ``srt reflect``, ``srt score``, ``srt select`` and ``srt train``."""

from __future__ import annotations

from dataclasses import dataclass, field

from srt_trainer.options import offset_field


@dataclass
class RunArguments:
    """The main job's own options (the data and the held-out instructions)."""

    data: str = field(
        default="demo",
        metadata={
            "help": "The original instruction data: a JSON/JSONL/Parquet file, a save_to_disk folder, a hub id, "
            "or 'demo' for the small set the package carries."
        },
    )
    limit: int | None = field(default=None, metadata={"help": "Use only the first N rows of `data`."})
    offset: int = offset_field()
    held_out: str | None = field(
        default="demo-held-out",
        metadata={
            "help": "Instructions the student answers at the end (never trained on); same sources as `data`; "
            "empty to skip."
        },
    )
    held_out_max_new_tokens: int = field(default=96, metadata={"help": "Length limit of the held-out answers."})
    compare_untuned: bool = field(
        default=True, metadata={"help": "Also record the untuned student's held-out answers, side by side."}
    )
