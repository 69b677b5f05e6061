"""The SFT stage end to end: load the student once, score and select where asked, then TRL's ``SFTTrainer``.

One function, ``train``, behind ``srt train``, ``recipes/sft_7b.py`` and ``recipes/sft_13b.py``. Under
``accelerate launch`` every process runs it: scoring shares the rows between the processes, the main process
selects, every process reads the selection after a barrier, and the trainer takes over in the same processes
with the student that scored (LoRA / QLoRA wrapping happens after scoring, inside the trainer).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trl import SFTTrainer, get_peft_config, get_quantization_config

from srt_trainer.training.callbacks import REPORT_DIR, SelectionReport, SelectionStatsCallback
from srt_trainer.training.config import SRTModelConfig, SRTScriptArguments, SRTSFTConfig
from srt_trainer.training.data import build_sft_dataset, load_training_rows
from srt_trainer.training.step_time import StepTimeCallback, step_metrics

logger = logging.getLogger(__name__)

RESUME_LAST = ("true", "last", "auto", "latest")


class SRTSFTTrainer(SFTTrainer):
    """``SFTTrainer`` that reports the selection its data came from (see ``SelectionStatsCallback``) and logs each
    optimizer step's wall time and the peak memory (``step_seconds``, ``max_memory_gib``)."""

    def __init__(self, *args: Any, selection_report: SelectionReport | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.selection_report = selection_report
        if selection_report is not None:
            self.add_callback(SelectionStatsCallback(selection_report, trainer=self))
        self.step_timer = StepTimeCallback()
        self.add_callback(self.step_timer)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log (not the final summary or an evaluation)
            logs.update(step_metrics(self.step_timer))
        super().log(logs, start_time)


@dataclass
class TrainOutcome:
    """What a training run produced."""

    output_dir: Path
    global_step: int
    train_rows: int
    resumed_from: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    selection: SelectionReport | None = None


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest ``checkpoint-N`` in ``output_dir`` that was saved to the end.

    The trainer writes ``trainer_state.json`` last, so a run killed while saving leaves a newer folder without it;
    that one is skipped (and named in the log) instead of failing the resume.
    """
    import re

    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    found = []
    for path in folder.iterdir():
        if path.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", path.name)):
            found.append((int(m.group(1)), path))
    for _, path in sorted(found, reverse=True):
        if (path / "trainer_state.json").is_file():
            return str(path)
        logger.warning("%s was not saved to the end (the run was stopped while saving): skipped", path)
    return None


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
        raise FileNotFoundError(f"--resume_from_checkpoint {value}: no such checkpoint folder")
    return str(value)


def load_model_for_training(model_args: SRTModelConfig, training_args: SRTSFTConfig) -> Any:
    """The student in ``model_args.dtype`` on this process's device (QLoRA: quantized with bitsandbytes)."""
    from srt_trainer.models import load_student

    kwargs: dict[str, Any] = {}
    quantization = get_quantization_config(model_args)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    model = load_student(
        model_args.model_name_or_path,
        dtype=model_args.dtype,
        device=str(training_args.device),
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        revision=None if model_args.model_revision == "main" else model_args.model_revision,
        **kwargs,
    )
    if training_args.gradient_checkpointing:
        model.config.use_cache = False  # the cache is useless in training and warns with checkpointing
    return model


def score_variants(
    script_args: SRTScriptArguments, model_args: SRTModelConfig, model: Any, tokenizer: Any, folder: Path
) -> dict[str, str]:
    """Score the variant files with the loaded student across all processes (resumable); returns the score files."""
    from srt_trainer.distributed import get_state
    from srt_trainer.resources import resolve_data
    from srt_trainer.scoring.cli import ScoreConfig, run_score

    state = get_state()
    out: dict[str, str] = {}
    for variant, data in script_args.variant_files("data").items():
        if not data:
            continue
        output = folder / f"{variant.lower()}.scores.jsonl"
        config = ScoreConfig(
            data=resolve_data(data),
            output=str(output),
            data_format=script_args.data_format,
            model=model_args.model_name_or_path,
            template=script_args.template,
            dtype=model_args.dtype or "float32",
            max_length=script_args.score_max_length,
            token_budget=script_args.score_token_budget,
            shard_size=script_args.score_shard_size,
            load_in_4bit=model_args.load_in_4bit,
            load_in_8bit=model_args.load_in_8bit,
            plot=script_args.plot,
        )
        if state.is_main_process:
            print(f"scoring the {variant} pairs of {data} with the student")
        was_training = model.training
        model.eval()
        run_score(config, model=model, tokenizer=tokenizer)
        model.train(was_training)
        state.wait_for_everyone()  # the main process writes the output after the others are done
        out[variant] = str(output)
    return out


def select(script_args: SRTScriptArguments, score_files: dict[str, str | None], output: Path) -> Path:
    """Run the selection on the main process and let every process continue once its output exists."""
    from srt_trainer.distributed import get_state
    from srt_trainer.selection import SelectConfig, run_select

    state = get_state()
    if state.is_main_process:
        config = SelectConfig(
            ori=score_files.get("ori"),
            q=score_files.get("Q"),
            a=score_files.get("A"),
            qa=score_files.get("QA"),
            output=str(output),
            policy=script_args.policy,
            keep_unaccepted_winners=script_args.keep_unaccepted_winners,
            ifd_threshold=script_args.ifd_threshold,
            rifd_threshold=script_args.rifd_threshold,
            top_k=script_args.top_k,
            top_p=script_args.top_p,
            plot=script_args.plot,
        )
        run_select(config)
    state.wait_for_everyone()
    return output


def train(
    script_args: SRTScriptArguments,
    training_args: SRTSFTConfig,
    model_args: SRTModelConfig,
    model: Any = None,
    tokenizer: Any = None,
    finish: bool = True,
) -> TrainOutcome:
    """Score / select where asked, fine-tune with ``SFTTrainer``, save the model (or adapter) and tokenizer.

    ``model`` / ``tokenizer``: a student already loaded by the caller; loaded from ``model_args`` otherwise.
    ``finish``: close the trackers and the process group at the end (a script's last step).
    """
    from srt_trainer.distributed import get_state
    from srt_trainer.models import load_tokenizer, resolve_model_path
    from srt_trainer.resources import resolve_data

    mode = script_args.mode()
    state = get_state()
    out = Path(training_args.output_dir)
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
            score_files = score_variants(script_args, model_args, model, tokenizer, out / "scores")
        data_file = select(script_args, score_files, selection_dir / "selected.jsonl")
    report = SelectionReport.beside(data_file)
    rejects = selection_dir / "train.rejects.jsonl"
    with state.main_process_first():  # the main process writes the rejects file, the others read the same rows
        rows = load_training_rows(data_file, rejects if state.is_main_process else None, script_args.data_format)
    dataset = build_sft_dataset(
        rows, script_args.template, tokenizer, script_args.response_separator, source=str(data_file)
    )
    if state.is_main_process:
        print(
            f"training on {len(dataset)} rows of {data_file} ({script_args.template} template); global batch "
            f"{training_args.per_device_train_batch_size} × {training_args.gradient_accumulation_steps} × "
            f"{training_args.world_size} = {_global_batch(training_args)}"
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
    )
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(out))
    metrics = dict(result.metrics)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(out))
        trainer.save_state()
        summary = {
            "train_rows": len(dataset),
            "data": str(data_file),
            "template": script_args.template,
            "global_batch_size": _global_batch(training_args),
            "resumed_from": resume,
            "global_step": trainer.state.global_step,
            "metrics": metrics,
            "selection": report.counts,
            "script_args": asdict(script_args),
        }
        (out / "srt_train_summary.json").write_text(json.dumps(summary, indent=2, default=str))
        what = "adapter" if model_args.use_peft else "model"
        loss = metrics.get("train_loss", float("nan"))
        print(f"saved the {what} to {out} (step {trainer.state.global_step}, train loss {loss:.4f})")
    state.wait_for_everyone()
    if finish and hasattr(trainer, "end"):
        trainer.end()  # transformers ≥ 5.18: finish the trackers and the process group
    return TrainOutcome(
        output_dir=out,
        global_step=trainer.state.global_step,
        train_rows=len(dataset),
        resumed_from=resume,
        metrics=metrics,
        selection=report,
    )


def _global_batch(args: SRTSFTConfig) -> int:
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
