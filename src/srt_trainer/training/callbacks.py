"""The selection's statistics in the trainer's loggers and checkpoints.

``SelectionStatsCallback`` logs the selection counts (``selection/<name>``) through ``Trainer.log`` at the start
of training, so every logger the run reports to (TensorBoard, W&B, MLflow, ...) records them; adds the selection
plots as images where the logger takes images (TensorBoard, W&B); and copies the selection report files
(``*.selection.json``, the PNGs, the data card) into every ``checkpoint-N/selection/`` it saves, so a
checkpoint says which data made it.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

logger = logging.getLogger(__name__)

REPORT_DIR = "selection"


@dataclass
class SelectionReport:
    """What the selection left behind: its counts and the report files (JSON summary, plots, data card)."""

    counts: dict[str, float] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    @property
    def images(self) -> list[Path]:
        return [f for f in self.files if f.suffix == ".png"]

    @classmethod
    def from_files(cls, files: list[str | Path], extra_counts: dict[str, float] | None = None) -> SelectionReport:
        """Collect the report files that exist; counts come from the ``*.selection.json`` summary's ``counts``
        (numbers at its top level otherwise), updated with ``extra_counts``."""
        paths = sorted({Path(f) for f in files if Path(f).is_file()})
        counts: dict[str, float] = {}
        for p in paths:
            if p.name.endswith("selection.json"):
                summary = json.loads(p.read_text())
                source = summary.get("counts", summary) if isinstance(summary, dict) else {}
                counts.update(_numbers(source))
        counts.update(extra_counts or {})
        return cls(counts=counts, files=paths)

    @classmethod
    def beside(cls, output: str | Path, extra_counts: dict[str, float] | None = None) -> SelectionReport:
        """The report files an ``srt select`` output has beside it (``selected.jsonl`` → ``selected.*``)."""
        from srt_trainer.io import sidecar_path

        output = Path(output)
        stem = sidecar_path(output, "x").name[:-1]  # "selected." for selected.jsonl
        files = [p for p in output.parent.glob(f"{stem}*") if p != output and _is_report_file(p)]
        return cls.from_files(files, extra_counts)

    def copy_to(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for f in self.files:
            if (folder / f.name).resolve() != f.resolve():
                shutil.copy2(f, folder / f.name)
        return folder


def _is_report_file(path: Path) -> bool:
    return path.is_file() and path.name.endswith((".selection.json", ".png", ".md"))


def _numbers(mapping: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a (nested) mapping, keys joined with '/'."""
    out: dict[str, float] = {}
    for k, v in mapping.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, int | float):
            out[f"{prefix}{k}"] = v
        elif isinstance(v, dict):
            out.update(_numbers(v, f"{prefix}{k}/"))
    return out


class SelectionStatsCallback(TrainerCallback):
    """Logs the selection to the trainer's loggers at train start and saves its report with each checkpoint.

    ``trainer`` is the trainer this callback reports through (``SRTSFTTrainer`` passes itself); without one the
    counts are only written to the Python log.
    """

    def __init__(self, report: SelectionReport, trainer: Any = None, prefix: str = "selection/") -> None:
        self.report = report
        self.trainer = trainer
        self.prefix = prefix

    def metrics(self) -> dict[str, float]:
        return {f"{self.prefix}{k}": v for k, v in self.report.counts.items()}

    def on_train_begin(self, args, state, control, **kwargs):
        metrics = self.metrics()
        if self.trainer is not None and metrics:
            self.trainer.log(metrics)  # reaches every logger in report_to, on the main process
        elif state.is_world_process_zero:
            logger.info("selection: %s", metrics)
        if state.is_world_process_zero and self.trainer is not None:
            self._log_images(state.global_step)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.report.files:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if checkpoint.is_dir():
                self.report.copy_to(checkpoint / REPORT_DIR)

    def _log_images(self, step: int) -> None:
        if not self.report.images:
            return
        from transformers.integrations import TensorBoardCallback, WandbCallback

        for cb in self.trainer.callback_handler.callbacks:
            if isinstance(cb, TensorBoardCallback) and getattr(cb, "tb_writer", None) is not None:
                import matplotlib.image

                for png in self.report.images:
                    pixels = matplotlib.image.imread(str(png))[..., :3]  # HWC floats in [0, 1], alpha dropped
                    cb.tb_writer.add_image(self._tag(png), pixels, step, dataformats="HWC")
                cb.tb_writer.flush()
            elif isinstance(cb, WandbCallback) and getattr(cb, "_wandb", None) is not None and cb._wandb.run:
                cb._wandb.log({self._tag(png): cb._wandb.Image(str(png)) for png in self.report.images})

    def _tag(self, png: Path) -> str:
        # "selected.funnel.png" → "selection/funnel"
        return self.prefix + png.name.removesuffix(".png").rsplit(".", 1)[-1]
