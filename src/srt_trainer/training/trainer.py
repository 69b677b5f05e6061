"""The SFT stage end to end: load the student once, score and select where asked, then TRL's ``SFTTrainer``.

One function, ``train``, behind ``srt train``, ``recipes/sft_7b.py`` and ``recipes/sft_13b.py``. Under
``accelerate launch`` every process runs it: scoring shares the rows between the processes, the main process
selects, every process reads the selection after a barrier, and the trainer takes over in the same processes
with the student that scored (LoRA / QLoRA wrapping happens after scoring, inside the trainer).
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
from srt_trainer.models import load_tokenizer, resolve_model_path
from srt_trainer.models.config import SRTModelConfig
from srt_trainer.models.embedded import public_model_name
from srt_trainer.models.loading import load_configured_student
from srt_trainer.resources import resolve_data
from srt_trainer.scoring import ScoreArguments, ScoringArguments, run_score
from srt_trainer.scoring.report import format_summary
from srt_trainer.selection import SelectArguments, SelectionArguments, SelectionCounts, format_counts, run_select
from srt_trainer.training.callbacks import REPORT_DIR, SelectionReport, SelectionStatsCallback
from srt_trainer.training.config import SRTScriptArguments, SRTSFTConfig, TrainingInputError
from srt_trainer.training.data import TrainingDataError, build_sft_dataset, load_training_rows
from srt_trainer.training.step_time import StepTimeCallback, step_metrics

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


def load_model_for_training(model_args: SRTModelConfig, training_args: SRTSFTConfig) -> Any:
    """The student in ``model_args.dtype`` on this process's device (QLoRA: quantized with bitsandbytes)."""
    if model_args.adapter:
        raise TrainingInputError(
            f"--adapter {model_args.adapter}: training starts from model_name_or_path (use_peft adds a new "
            "adapter); merge a trained adapter into its base model first to train on top of it"
        )
    model = load_configured_student(
        model_args, device=str(training_args.device), trust_remote_code=training_args.trust_remote_code
    )
    if training_args.activation_checkpointing:
        model.config.use_cache = False  # the cache is useless in training and warns with checkpointing
    return model


def score_variants(
    script_args: SRTScriptArguments,
    scoring: ScoringArguments,
    model_args: SRTModelConfig,
    model: Any,
    tokenizer: Any,
    folder: Path,
) -> dict[str, str]:
    """Score the variant files with the loaded student across all processes (resumable); returns the score files."""
    state = get_state()
    out: dict[str, str] = {}
    for variant, data in script_args.variant_files("data").items():
        if not data:
            continue
        output = folder / f"{variant.lower()}.scores.jsonl"
        args = ScoreArguments(
            data=resolve_data(data), output=str(output), data_format=script_args.data_format, plot=script_args.plot
        )
        if state.is_main_process:
            logger.info("scoring the %s pairs of %s with the student", variant, data)
        was_training = model.training
        model.eval()
        scored = run_score(args, scoring, model_args, model=model, tokenizer=tokenizer)
        model.train(was_training)
        if scored is not None:  # the main process
            logger.info("%s\nwrote %s (%d rows)", format_summary(scored.summary), output, len(scored.rows))
        state.wait_for_everyone()  # the main process writes the output after the others are done
        out[variant] = str(output)
    return out


def select(
    script_args: SRTScriptArguments,
    selection: SelectionArguments,
    score_files: dict[str, str | None],
    output: Path,
    seed: int = 42,
) -> Path:
    """Run the selection on the main process and let every process continue once its output exists; ``seed``
    orders the 'random' policy (the training seed)."""
    state = get_state()
    if state.is_main_process:
        args = SelectArguments(
            ori=score_files["ori"],
            q=score_files.get("Q"),
            a=score_files.get("A"),
            qa=score_files.get("QA"),
            output=str(output),
            plot=script_args.plot,
            seed=seed,
        )
        result = run_select(args, selection)
        logger.info(
            "selection (%s policy) of %d source rows:\n%s\nwrote %s (%d rows)",
            selection.policy,
            result.counts["rows"],
            format_counts(result.counts),
            output,
            len(result.rows),
        )
        if not result.rows:
            raise TrainingDataError(nothing_selected(result.counts, output))
    state.wait_for_everyone()
    return output


def nothing_selected(counts: SelectionCounts, output: Path) -> str:
    """Why a selection left nothing to train on: the steps that removed rows, largest first."""
    reasons = ", ".join(f"{k} {n}" for k, n in list(counts.removals().items())[:4])
    hint = (
        "; a missing statistic fails its threshold: the score files' ifd_error / rifd_error say why it is missing "
        "(for example a score_max_length too short for the reverse prompt)"
        if counts.missing_statistic_cuts()
        else ""
    )
    return (
        f"the selection kept none of the {counts.get('rows', 0)} source rows ({reasons or 'no row was judged'}){hint}; "
        f"the counts and funnel are beside {output}"
    )


def train(
    script_args: SRTScriptArguments,
    training_args: SRTSFTConfig,
    model_args: SRTModelConfig,
    scoring: ScoringArguments | None = None,
    selection: SelectionArguments | None = None,
    model: Any = None,
    tokenizer: Any = None,
) -> TrainOutcome:
    """Score / select where asked, fine-tune with ``SFTTrainer``, save the model (or adapter), the tokenizer, the
    metrics (``train_results.json``, ``all_results.json``), the trainer state and the model card; then finish the
    trackers and the process group.

    ``scoring`` / ``selection``: how variant files are scored and scores selected (default: the paper's settings).
    ``model`` / ``tokenizer``: a student already loaded by the caller; loaded from ``model_args`` otherwise.
    """
    scoring = scoring or ScoringArguments()
    selection = selection or SelectionArguments()
    mode = script_args.mode(selection.needed_views())
    state = get_state()
    out = Path(training_args.output_dir)
    base_model = public_model_name(model_args.model_name_or_path)
    # one conversion of the embedded student, then every process reads the cached folder
    with state.main_process_first():
        model_args.model_name_or_path = resolve_model_path(model_args.model_name_or_path)
    if tokenizer is None:
        tokenizer = load_tokenizer(model_args.model_name_or_path, trust_remote_code=training_args.trust_remote_code)

    # 1. the rows to train on: as given, or selected here from scores (computed here, by the student that will be
    #    trained, when only the variant files are given); bad input fails before the student is loaded otherwise
    selection_dir = out / REPORT_DIR
    if mode == "dataset":
        data_file = Path(resolve_data(script_args.dataset))
    else:
        if mode == "scores":
            score_files = script_args.variant_files("scores")
        else:
            model = model if model is not None else load_model_for_training(model_args, training_args)
            score_files = score_variants(script_args, scoring, model_args, model, tokenizer, out / "scores")
        data_file = select(script_args, selection, score_files, selection_dir / "selected.jsonl", training_args.seed)
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
        if report.files and mode == "dataset":
            report.copy_to(selection_dir)

    # 2. the trainer, with LoRA / QLoRA wrapping done by TRL on the student that scored
    if model is None:
        model = load_model_for_training(model_args, training_args)
    resume = resolve_resume(training_args.resume_from_checkpoint, out)
    trainer = SRTSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        selection_report=report if (report.files or report.counts) else None,
        base_model=base_model,
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
            **({"selection_args": asdict(selection)} if mode != "dataset" else {}),
        }
        write_json(summary, out / "srt_train_summary.json", default=str)
    state.wait_for_everyone()
    if hasattr(trainer, "end"):  # transformers ≥ 5.18
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
    )


def _global_batch(args: SRTSFTConfig) -> int:
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
