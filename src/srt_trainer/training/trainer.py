"""The SFT step: TRL's ``SFTTrainer`` on a file of rows, as the alignment-handbook's ``sft.py`` trains.

``train`` runs after ``prepare_training_data`` (which scores and selects where asked) in ``srt train``,
``recipes/sft_7b.py``, ``recipes/sft_13b.py`` and ``srt run``. Under ``accelerate launch`` every process runs it,
with the student that scored (LoRA / QLoRA wrapping happens here, inside the trainer, after scoring).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers.trainer_utils import get_last_checkpoint, sort_checkpoints
from trl import SFTTrainer, get_peft_config

from srt_trainer.distributed import get_state
from srt_trainer.errors import SRTUserError
from srt_trainer.io import write_json
from srt_trainer.selection.config import SelectionArguments
from srt_trainer.training.callbacks import REPORT_DIR, SelectionReport, SelectionStatsCallback
from srt_trainer.training.config import SRTScriptArguments, SRTSFTConfig
from srt_trainer.training.data import build_sft_dataset, load_training_rows
from srt_trainer.training.step_time import StepTimeCallback, step_metrics
from srt_trainer.training.student import Student

logger = logging.getLogger(__name__)

RESUME_LAST = ("true", "last", "auto", "latest")


TRAINER_STATE = "trainer_state.json"  # the trainer writes it last into a checkpoint


class CheckpointNotFoundError(SRTUserError, FileNotFoundError):
    """``--resume_from_checkpoint`` names a folder that does not exist."""


class SRTSFTTrainer(SFTTrainer):
    """``SFTTrainer`` that reports the selection its data came from (see ``SelectionStatsCallback``), logs each
    optimizer step's wall time and the peak memory (``step_seconds``, ``max_memory_gib``), and writes a model card
    naming the student it started from (``base_model``) and the data it was trained on (``dataset_name``).

    ``padding_free`` without packing keeps ``max_length``: each batch is its samples back to back in one row (each
    attending only to itself, by its restarting position ids), every sample cut at ``max_length`` as in padded
    training, so steps hold the same samples as the paper's padded batches without the padding. TRL refuses that
    pair of options whenever ``max_length`` is set, although its dataset preparation cuts every sample to it before
    batching; the check is given ``max_length`` unset and the preparation gets it back.
    """

    def __init__(
        self,
        *args: Any,
        selection_report: SelectionReport | None = None,
        base_model: str | None = None,
        dataset_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        config = kwargs.get("args", args[1] if len(args) > 1 else None)  # SFTTrainer(model, args, ...)
        self._cut_at = None
        if config is not None and config.padding_free and not config.packing and config.max_length is not None:
            self._cut_at, config.max_length = config.max_length, None
        try:
            super().__init__(*args, **kwargs)
        finally:
            if self._cut_at is not None:
                config.max_length = self._cut_at
        self.selection_report = selection_report
        self.base_model = base_model
        self.dataset_name = dataset_name
        if selection_report is not None:
            self.add_callback(SelectionStatsCallback(selection_report, trainer=self))
        self.step_timer = StepTimeCallback()
        self.add_callback(self.step_timer)

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, *rest: Any) -> Any:
        if self._cut_at is None or args.max_length is not None:
            return super()._prepare_dataset(dataset, processing_class, args, *rest)
        args.max_length = self._cut_at
        try:
            return super()._prepare_dataset(dataset, processing_class, args, *rest)
        finally:
            args.max_length = None

    def create_model_card(
        self, model_name: str | None = None, dataset_name: str | None = None, tags: str | list[str] | None = None
    ) -> None:
        """TRL's model card (``README.md`` in ``output_dir``), with the base model and the data named.

        TRL takes the base model from the model config's ``_name_or_path`` and drops it when that is a local folder,
        so a student loaded from a folder (the embedded one always is) came out as "a fine-tuned version of
        [None]"; here the card names ``self.base_model`` and, unless given, ``self.dataset_name``.
        """
        if not self.is_world_process_zero():
            return
        from trl.trainer.utils import generate_model_card, get_comet_experiment_url, get_trackio_space_url

        tags = {tags} if isinstance(tags, str) else set(tags or ())
        tags.update(self._tag_names)
        card = generate_model_card(
            base_model=self.base_model,
            model_name=model_name or Path(self.args.output_dir).name,
            hub_model_id=self.hub_model_id,
            dataset_name=dataset_name or self.dataset_name,
            tags=sorted(tags),
            wandb_url=_wandb_url(),
            trackio_url=get_trackio_space_url(),
            comet_url=get_comet_experiment_url(),
            trainer_name=self._name,
            trainer_citation=self._paper.get("citation"),
            template_file=self._template_file,
            paper_title=self._paper.get("title"),
            paper_id=self._paper.get("id"),
        )
        card.save(os.path.join(self.args.output_dir, "README.md"))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log (not the final summary or an evaluation)
            logs.update(step_metrics(self.step_timer))
        super().log(logs, start_time)


def _wandb_url() -> str | None:
    from transformers.integrations import is_wandb_available

    if not is_wandb_available():
        return None
    import wandb

    return wandb.run.url if wandb.run is not None else None


@dataclass
class TrainOutcome:
    """What a training run produced (``is_main``: this process saved it; the others only took part)."""

    output_dir: Path
    global_step: int
    train_rows: int
    data_file: Path
    template: str
    global_batch: tuple[int, int, int]  # per-device batch, gradient accumulation, processes
    adapter: bool
    resumed_from: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    selection: SelectionReport | None = None
    is_main: bool = True
    model: Any = field(default=None, repr=False)  # the trained model (a PEFT model with use_peft), still in memory

    def describe(self) -> str:
        """The run in two lines: what it trained on, and what it saved."""
        per_device, accumulation, processes = self.global_batch
        what = "adapter" if self.adapter else "model"
        loss = self.metrics.get("train_loss", float("nan"))
        return (
            f"trained on {self.train_rows} rows of {self.data_file} ({self.template} template); global batch "
            f"{per_device} × {accumulation} × {processes} = {per_device * accumulation * processes}\n"
            f"saved the {what} to {self.output_dir} (step {self.global_step}, train loss {loss:.4f})"
        )


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """transformers' ``get_last_checkpoint``, skipping a checkpoint that was not saved to the end.

    The trainer writes ``trainer_state.json`` last, so a run killed while saving leaves a newest ``checkpoint-N``
    without it; that one is skipped (and named in the log) for the newest complete one, instead of failing the
    resume.
    """
    folder = str(output_dir)
    if not os.path.isdir(folder):
        return None
    last = get_last_checkpoint(folder)
    if last is None or os.path.isfile(os.path.join(last, TRAINER_STATE)):
        return last
    logger.warning("%s was not saved to the end (the run was stopped while saving): skipped", last)
    complete = [c for c in sort_checkpoints(folder) if os.path.isfile(os.path.join(c, TRAINER_STATE))]
    return complete[-1] if complete else None


def resolve_resume(value: str | bool | None, output_dir: str | Path) -> str | None:
    """``--resume_from_checkpoint``: a checkpoint folder, or ``true`` / ``last`` / ``auto`` for the last complete
    checkpoint in ``output_dir`` (a fresh start when there is none yet, so the same command restarts a killed run)."""
    if value in (None, False, "", "false", "False", "none", "None"):
        return None
    if value is True or str(value).lower() in RESUME_LAST:
        last = last_complete_checkpoint(output_dir)
        if last is None:
            logger.info("no checkpoint in %s yet: starting from the beginning", output_dir)
        else:
            logger.info("resuming from %s", last)
        return last
    if not Path(value).is_dir():
        raise CheckpointNotFoundError(f"--resume_from_checkpoint {value}: no such checkpoint folder")
    return str(value)


def train(
    data_file: str | Path,
    script_args: SRTScriptArguments,
    training_args: SRTSFTConfig,
    student: Student,
    selection: SelectionArguments | None = None,
    resume_from_checkpoint: str | bool | None = None,
    finish: bool = True,
) -> TrainOutcome:
    """Fine-tune ``student`` on the rows of ``data_file`` with ``SFTTrainer``; save the model (or adapter), the
    tokenizer, the metrics (``train_results.json``, ``all_results.json``), the trainer state, the model card and
    ``srt_train_summary.json``; then finish the trackers and the process group.

    ``data_file``: what ``prepare_training_data`` returned; the selection report beside it (an ``srt select``
    output's) travels with the run. ``script_args``: the rows' format and response separator; recorded in the
    summary, with ``selection`` where the rows were selected in this run (no ``--dataset``).
    ``resume_from_checkpoint``: as the option of that name (default: ``training_args``'); a checkpoint folder, or
    ``auto`` for the last complete one in ``output_dir``. ``finish``: end the trackers and the process group
    afterwards (False where this process trains again, as ``srt ablate`` does once per arm).
    """
    state = get_state()
    out = Path(training_args.output_dir)
    data_file = Path(data_file)
    model_args, tokenizer = student.args, student.tokenizer
    selected_here = selection is not None and not script_args.dataset

    # 1. the rows, checked before the student is loaded (unless it was, to score them)
    selection_dir = out / REPORT_DIR
    report = SelectionReport.beside(data_file)
    rejects = selection_dir / "train.rejects.jsonl"
    with state.main_process_first():  # the main process writes the rejects file, the others read the same rows
        rows = load_training_rows(data_file, rejects if state.is_main_process else None, script_args.data_format)
    dataset = build_sft_dataset(
        rows, model_args.template, tokenizer, script_args.response_separator, source=str(data_file)
    )
    batch = (
        training_args.per_device_train_batch_size,
        training_args.gradient_accumulation_steps,
        training_args.world_size,
    )
    if state.is_main_process:
        logger.info(
            "training on %d rows of %s (%s template); global batch %d × %d × %d = %d",
            len(dataset),
            data_file,
            model_args.template,
            *batch,
            _global_batch(training_args),
        )
        if report.files:  # a selection made elsewhere: its report joins this run's (one made here is there)
            report.copy_to(selection_dir)

    # 2. the trainer, with LoRA / QLoRA wrapping done by TRL on the student (the one that scored, where it did)
    if resume_from_checkpoint is None:
        resume_from_checkpoint = training_args.resume_from_checkpoint
    resume = resolve_resume(resume_from_checkpoint, out)
    trainer = SRTSFTTrainer(
        model=student.model,
        args=training_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        selection_report=report if (report.files or report.counts) else None,
        base_model=student.base_model,
        dataset_name=str(data_file),
    )
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(out))
    metrics = dict(result.metrics)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    trainer.create_model_card()
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(out))
        summary = {
            "train_rows": len(dataset),
            "data": str(data_file),
            "template": model_args.template,
            "global_batch_size": _global_batch(training_args),
            "resumed_from": resume,
            "global_step": trainer.state.global_step,
            "metrics": metrics,
            "selection": report.counts,
            "script_args": asdict(script_args),
            **({"selection_args": asdict(selection)} if selected_here else {}),
        }
        write_json(summary, out / "srt_train_summary.json", default=str)
    state.wait_for_everyone()
    if finish and hasattr(trainer, "end"):  # transformers ≥ 5.18
        trainer.end()  # finish the trackers and the process group
    return TrainOutcome(
        output_dir=out,
        global_step=trainer.state.global_step,
        train_rows=len(dataset),
        data_file=data_file,
        template=model_args.template,
        global_batch=batch,
        adapter=bool(model_args.use_peft),
        resumed_from=resume,
        metrics=metrics,
        selection=report,
        is_main=state.is_main_process,
        model=trainer.model,
    )


def _global_batch(args: SRTSFTConfig) -> int:
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
