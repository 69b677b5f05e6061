"""The main job behind ``srt run CONFIG``: reflect, score, select, train, answer, from one YAML file.

1. the teacher rewrites the original pairs: instructions (Q), responses (A), and the responses of Q (QA);
2. the student scores ori / Q / A / QA (IFD / r-IFD) and keeps what the released rule accepts;
3. TRL's ``SFTTrainer`` fine-tunes the same student (LoRA by default in the CPU config) on what it kept;
4. the tuned student (and, for comparison, the untuned one) answers held-out instructions.

Every stage caches its output in ``output_dir``: teacher answers in a durable cache, scores in shards, training in
checkpoints; the same command after a kill resumes where it stopped. The config is TRL-style: the job's own
fields (``RunArguments``) plus the teacher's and reflection's (``TeacherArguments``,
``ReflectionArguments``, as ``srt reflect``) and every field of
``srt train`` (``ScoringArguments``, ``SelectionArguments``, ``SRTScriptArguments``, ``SRTSFTConfig``,
``SRTModelConfig``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from srt_trainer.data import load_instruction_data
from srt_trainer.distributed import get_state, on_main_process
from srt_trainer.generation import generate_answers
from srt_trainer.io import check_distinct_paths, write_json, write_rows
from srt_trainer.models import load_student
from srt_trainer.models.config import SRTModelConfig
from srt_trainer.reflection import ReflectionArguments
from srt_trainer.reflection.variants import VARIANT_FILES, check_teacher_placement, reflect_variants
from srt_trainer.resources import resolve_data
from srt_trainer.run.config import RunArguments
from srt_trainer.scoring.config import ScoringArguments
from srt_trainer.selection.config import SelectionArguments
from srt_trainer.teachers import LoadedStudent, TeacherArguments
from srt_trainer.templates import get_template
from srt_trainer.training.config import SRTScriptArguments, SRTSFTConfig
from srt_trainer.training.prepare import prepare_training_data
from srt_trainer.training.student import Student
from srt_trainer.training.trainer import train
from srt_trainer.zero3 import ParameterFetcher, is_partitioned

logger = logging.getLogger(__name__)


def _answers(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, partitioned: bool) -> list[str]:
    """The student's answers to ``prompts``; a ZeRO-3-partitioned one generates on every process at once, each
    gathering one layer at a time (the same prompts everywhere, so every process runs the same forwards)."""
    if not partitioned:
        return generate_answers(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    fetcher = ParameterFetcher(model)
    try:
        return generate_answers(
            model, tokenizer, prompts, max_new_tokens=max_new_tokens, generation_kwargs={"synced_gpus": True}
        )
    finally:
        fetcher.close()


def _held_out_prompts(
    held_out: str, template_name: str, tokenizer: Any, rejects: Path | None
) -> tuple[list[dict[str, str]], list[str]]:
    """The held-out instructions and their prompts in the training format."""
    rows = load_instruction_data(resolve_data(held_out), rejects_path=rejects, require_output=False).dataset
    template = get_template(template_name, tokenizer)
    return (
        [{"instruction": r["instruction"], "input": r["input"]} for r in rows],
        [template.prompt(r["instruction"], r["input"]) for r in rows],
    )


@dataclass
class JobResult:
    """What the job produced: its summary (also in ``output_dir/summary.json``) and the held-out answers, on the main
    process (``is_main`` False, and both empty, on the others)."""

    output_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)
    answers: list[dict[str, Any]] = field(default_factory=list)
    adapter: bool = False  # the training saved a PEFT adapter (else a full model)
    is_main: bool = True

    def describe(self) -> str:
        """Where everything went."""
        out = self.output_dir
        what = "adapter" if self.adapter else "model"
        seconds = self.summary.get("timings", {}).get("total_s", 0.0)
        return (
            f"wrote {out}/summary.json ({seconds:.0f} s): reflections in {out}/reflect, scores in {out}/scores, the "
            f"selection and its report in {out}/selection, the {what} in {out}, answers in {out}/answers.jsonl"
        )


def run(
    run_args: RunArguments,
    teacher_args: TeacherArguments,
    reflection: ReflectionArguments,
    scoring: ScoringArguments,
    selection: SelectionArguments,
    script_args: SRTScriptArguments,
    training_args: SRTSFTConfig,
    model_args: SRTModelConfig,
) -> JobResult:
    """Run the whole job; returns its summary and answers (the summary also goes to ``output_dir/summary.json``)."""
    state = get_state()
    out = Path(training_args.output_dir)
    written = [out / "reflect" / name for name in ("ori.jsonl", *VARIANT_FILES.values())]
    written += [out / "answers.jsonl", out / "held_out.rejects.jsonl", out / "summary.json"]
    check_distinct_paths(  # the job's own files never overwrite its inputs
        {"data": run_args.data, "held_out": run_args.held_out}, {f"the job's file {p.name}": p for p in written}
    )
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    # the data first: a wrong path, window or file stops the job before any model work
    ori = resolve_data(run_args.data)
    windowed = run_args.limit is not None or bool(run_args.offset)
    if state.is_main_process:
        rows = load_instruction_data(
            ori,
            limit=run_args.limit,
            offset=run_args.offset,
            rejects_path=out / "reflect" / "ori.rejects.jsonl" if windowed else None,
        )
        if windowed:  # one slice, in Alpaca form as the reflections are, that is reflected, scored and trained on
            write_rows(
                [{k: r[k] for k in ("instruction", "input", "output")} for r in rows.dataset],
                out / "reflect" / "ori.jsonl",
            )
    if windowed:
        ori = str(out / "reflect" / "ori.jsonl")
    # one student: it teaches (local default), scores, and is trained
    student = Student(model_args, training_args)
    student_name = student.args.model_name_or_path
    tokenizer, model = student.tokenizer, student.model
    # under a ZeRO-3 launch each process holds a slice of the student: it generates only with every process
    partitioned = is_partitioned(model)
    need_variants = selection.needed_views() != ("ori",)
    if need_variants:
        check_teacher_placement(
            teacher_args,
            model,
            "use an endpoint (--teacher openai --base_url URL, e.g. a vLLM server of the teacher), or reflect first "
            "with `srt reflect` and launch `srt train`",
        )
    held_out: list[dict[str, str]] = []
    prompts: list[str] = []
    untuned: list[str] = []
    if run_args.held_out and (state.is_main_process or partitioned):
        held_out, prompts = _held_out_prompts(
            run_args.held_out,
            model_args.template,
            tokenizer,
            out / "held_out.rejects.jsonl" if state.is_main_process else None,
        )
        if run_args.compare_untuned:
            untuned = _answers(model, tokenizer, prompts, run_args.held_out_max_new_tokens, partitioned)
    timings["load_and_untuned_answers_s"] = time.perf_counter() - t0

    # 1. reflection (main process; the others wait for its files, without a barrier's time-out)
    t = time.perf_counter()
    reflected: dict[str, Any] = {}
    if need_variants:
        reflected = (
            on_main_process(
                lambda: reflect_variants(
                    teacher_args, reflection, LoadedStudent(student_name, model, tokenizer), ori, out / "reflect"
                ),
                out / "reflect" / "reflected.done",
            )
            or {}
        )
    timings["reflect_s"] = time.perf_counter() - t

    # 2-3. scoring and selection, then SFT, as `srt train` runs them (resumable: shards and checkpoints)
    t = time.perf_counter()
    variants = {f"{v.lower()}_data": str(out / "reflect" / VARIANT_FILES[v]) for v in VARIANT_FILES}
    inputs = replace(script_args, ori_data=ori, **(variants if need_variants else {}))
    data = prepare_training_data(inputs, scoring, selection, student, out, seed=training_args.seed)
    # a rerun after a kill goes on from the last checkpoint, unless the config names one
    resume = "auto" if training_args.resume_from_checkpoint is None else training_args.resume_from_checkpoint
    outcome = train(data, inputs, training_args, student, selection, resume_from_checkpoint=resume)
    timings["score_select_train_s"] = time.perf_counter() - t
    if not state.is_main_process:
        return JobResult(out, is_main=False)

    # 4. the tuned student answers the held-out instructions (reloaded from what was saved: proves it loads)
    t = time.perf_counter()
    answers: list[dict[str, Any]] = []
    if held_out:
        adapter = str(out) if model_args.use_peft else None
        if partitioned:
            # the saved model is whole (gathered in 16 bits), and the other processes are gone: load it plainly
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            unset_hf_deepspeed_config()
        tuned = load_student(
            student_name if adapter else str(out),
            dtype=model_args.dtype,
            adapter=adapter,
            trust_remote_code=training_args.trust_remote_code,
        )
        texts = generate_answers(tuned, tokenizer, prompts, max_new_tokens=run_args.held_out_max_new_tokens)
        for i, (r, text) in enumerate(zip(held_out, texts, strict=True)):
            answers.append({**r, "output": text, **({"untuned_output": untuned[i]} if untuned else {})})
        write_rows(answers, out / "answers.jsonl")
    timings["answers_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0

    summary = {
        "output_dir": str(out),
        "student": student_name,
        "reflection": reflected,
        "selection": outcome.selection.counts if outcome.selection else None,
        "training": {
            "rows": outcome.train_rows,
            "global_step": outcome.global_step,
            "resumed_from": outcome.resumed_from,
            "metrics": outcome.metrics,
        },
        "held_out_answers": len(answers),
        "timings": {k: round(v, 1) for k, v in timings.items()},
        "config": {
            "run": asdict(run_args),
            "teacher": asdict(teacher_args),
            "reflection": asdict(reflection),
            "scoring": asdict(scoring),
            "selection": asdict(selection),
            "script": asdict(inputs),
        },
    }
    write_json(summary, out / "summary.json", default=str)
    return JobResult(out, summary, answers, adapter=bool(model_args.use_peft))
