"""The ablation behind ``srt ablate``: every arm selected at one size, trained with the same settings and seed,
evaluated the same way, and one table with intervals (the paper's §5 ablation and the field's baselines).

1. **scores**: the four ``srt score`` outputs as given, or the ``*_data`` files scored here by the student (across
   the processes of a launch, resumable in shards);
2. **select** (main process; the others wait for it): the paper arm first, whose kept count sizes every arm unless
   ``size`` says; then each arm, its policy cut to that size (``run_select``); every arm must hold that many rows;
3. **train** (every process): one model per arm, ``train`` with the same settings, the seed set again before each;
   with LoRA one student is loaded and each arm gets a fresh adapter, unloaded after it is saved; a full fine-tune
   loads the student again for each arm;
4. **evaluate** (main process): with ``held_out``, the untuned student's and each arm's loss on the held-out pairs
   (s(y|x) as the IFD scorer computes it: ``ablation/held_out.py``); each arm answers the test sets
   (``run_generate``), is judged against ``ori`` in both orders (``run_judge``), and answers and is graded on
   MT-Bench (``run_mtbench``) and the harness tasks (``run_harness``) when asked; the LoRA arms load their adapter
   onto the one student;
5. **table**: ``ablation.md`` / ``.json`` / ``.png`` and ``ablation.manifest.json`` (``ablation/table.py``).

Each finished step of each arm leaves ``arms/<arm>/state/<step>.json`` with the settings it ran with: a rerun of
the same command skips it (no retraining, no question asked of the judge again) and resumes an unfinished step
through that stage's own resume (score shards, the last complete checkpoint, answer shards, the judge's cache). A
step recorded with other settings is refused, naming its state file.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from srt_trainer.ablation.config import REFERENCE, AblateArguments, AblationConfigError
from srt_trainer.ablation.held_out import HELD_OUT, check_no_overlap, load_held_out, response_losses, write_held_out
from srt_trainer.ablation.table import MTBENCH_DIR, Bootstrap, build_table, format_table, plot_table
from srt_trainer.distributed import get_state, on_main_process
from srt_trainer.errors import SRTUserError
from srt_trainer.evaluation.manifest import build_manifest, endpoint_host, file_entry, write_manifest
from srt_trainer.io import write_json, write_text_atomic
from srt_trainer.models.config import LoadingArguments, SRTModelConfig
from srt_trainer.reflection.config import ReflectionArguments
from srt_trainer.reflection.variants import VARIANT_FILES, check_teacher_placement, reflect_variants
from srt_trainer.resources import resolve_data
from srt_trainer.scoring.config import ScoringArguments
from srt_trainer.selection import SelectArguments, SelectionArguments, run_select
from srt_trainer.selection.config import VARIANTS
from srt_trainer.teachers import LoadedStudent
from srt_trainer.teachers.config import TeacherArguments
from srt_trainer.templates import get_template
from srt_trainer.training.config import VARIANT_FIELDS, SRTScriptArguments, SRTSFTConfig
from srt_trainer.training.prepare import check_variant_files, score_variants
from srt_trainer.training.student import Student
from srt_trainer.training.trainer import train

logger = logging.getLogger(__name__)

ARMS_DIR = "arms"
REFLECT_DIR = "reflect"  # Q, A and QA when the run makes them from --ori_data
SIZING = "sizing"  # the paper policy's selection without a size, whose kept count sizes the arms (arms/sizing/)
SELECTED = "selected.jsonl"
MODEL_DIR = "model"
ANSWERS = "answers.jsonl"
TABLE = "ablation.json"
STEPS = ("select", "train", "held_out", "generate", "judge", "mtbench", "harness")
BASE = "untuned"  # the untuned student's held-out losses (arms/untuned/): did training move them at all?


class AblationStateError(SRTUserError, ValueError):
    """A step recorded in the output folder with other settings than this run's."""


class ArmSizeError(SRTUserError, ValueError):
    """The arms cannot be cut to one size."""


def _fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StepState:
    """``arms/<arm>/state/<step>.json``: a finished step of an arm, with the settings it ran with and what it
    produced."""

    def __init__(self, arms_dir: Path) -> None:
        self.arms_dir = arms_dir

    def path(self, arm: str, step: str) -> Path:
        return self.arms_dir / arm / "state" / f"{step}.json"

    def done(self, arm: str, step: str, settings: dict[str, Any]) -> dict[str, Any] | None:
        """The record of the step when it is finished with these ``settings``; None when it is not finished."""
        path = self.path(arm, step)
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        if record.get("fingerprint") != _fingerprint(settings):
            changed = sorted(
                k
                for k in set(settings) | set(record.get("settings", {}))
                if json.dumps(settings.get(k), default=str)
                != json.dumps(record.get("settings", {}).get(k), default=str)
            )
            raise AblationStateError(
                f"{path}: the {arm} arm's {step} step was done with other settings ({', '.join(changed) or 'files'} "
                "differ); use another --output_dir, or delete that arm's folder to redo it"
            )
        return record

    def mark(self, arm: str, step: str, settings: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        record = {
            "arm": arm,
            "step": step,
            "fingerprint": _fingerprint(settings),
            "settings": settings,
            "result": result,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_json(record, self.path(arm, step), default=str)
        return record


@dataclass
class AblationRun:
    """What ``run_ablation`` produced, on the main process (``is_main`` False, and nothing else, on the others)."""

    output_dir: Path
    table: list[Any] = field(default_factory=list)
    markdown: str = ""
    files: dict[str, Path] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    ran: dict[str, list[str]] = field(default_factory=dict)  # step → the arms that ran it now (not skipped)
    timings: dict[str, float] = field(default_factory=dict)
    is_main: bool = True


def _score_files(script_args: SRTScriptArguments) -> tuple[dict[str, str], dict[str, str]]:
    """Each view's ``srt score`` output where given, and the data files to score for the others."""
    if script_args.dataset:
        raise AblationConfigError(
            f"--dataset {script_args.dataset}: the arms are selections of the four views; give the *_scores files "
            "(or the *_data files to score)"
        )
    scores, data = {}, {}
    for view, stem in VARIANT_FIELDS.items():
        score_file, data_file = getattr(script_args, f"{stem}_scores"), getattr(script_args, f"{stem}_data")
        if score_file and data_file:
            raise AblationConfigError(f"--{stem}_scores and --{stem}_data: give one of the two for {view}")
        if score_file:
            scores[view] = score_file
        elif data_file:
            data[view] = resolve_data(data_file)
    return scores, data


def _arm_selection(selection: SelectionArguments, arm: str, size: int) -> SelectionArguments:
    """The arm's policy at ``size``; the budgets (``top_k``, ``top_p``) shape the paper arm only."""
    if arm == "paper":
        return replace(selection, policy=arm, size=size)
    return replace(selection, policy=arm, size=size, top_k=None, top_p=None)


def reflect_teacher(config: str | None) -> TeacherArguments:
    """The reflection's teacher: the options in the YAML file ``config`` (``srt reflect``'s teacher options), or
    the student itself (a local teacher naming no model) without one."""
    if config is None:
        return TeacherArguments(teacher="transformers")
    from transformers import HfArgumentParser

    try:
        (teacher,) = HfArgumentParser(TeacherArguments).parse_yaml_file(config)
    except (OSError, ValueError) as e:
        raise AblationConfigError(f"--reflect_teacher_config {config}: {e}") from e
    return teacher


def _needed_views(arms: list[str], selection: SelectionArguments) -> set[str]:
    size = selection.size or 1
    views = {v for arm in arms for v in _arm_selection(selection, arm, size).needed_views()}
    return set(VARIANTS) if selection.size is None else views  # without size, the paper arm sizes them all


def select_arms(
    args: AblateArguments,
    selection: SelectionArguments,
    score_files: dict[str, str],
    arms_dir: Path,
    states: StepState,
    seed: int,
    ran: dict[str, list[str]],
    plot: bool = True,
) -> dict[str, int]:
    """Select every arm at one size (the paper arm's kept count unless ``selection.size``); returns each arm's
    rows. Main process only."""

    def select(arm: str, arm_selection: SelectionArguments) -> int:
        folder = arms_dir / arm
        files = {v: score_files.get(v) for v in arm_selection.needed_views()}
        settings = {
            "selection": asdict(arm_selection),
            "seed": seed,
            "files": {v: file_entry(f) for v, f in files.items()},
        }
        record = states.done(arm, "select", settings)
        if record is not None:
            return int(record["result"]["rows"])
        select_args = SelectArguments(
            ori=score_files["ori"],
            q=files.get("Q"),
            a=files.get("A"),
            qa=files.get("QA"),
            output=str(folder / SELECTED),
            seed=seed,
            plot=plot,
        )
        result = run_select(select_args, arm_selection)
        logger.info(
            "arm %s (%s policy): %d of %d rows", arm, arm_selection.policy, len(result.rows), result.counts["rows"]
        )
        states.mark(arm, "select", settings, {"rows": len(result.rows), "source_rows": result.counts["rows"]})
        if arm != SIZING:
            ran.setdefault("select", []).append(arm)
        return len(result.rows)

    size = selection.size
    if size is None:
        # the paper policy's kept count sizes every arm; the paper arm is then that selection cut to its own size
        size = select(SIZING, replace(selection, policy="paper"))
        if size == 0:
            raise ArmSizeError(
                f"the paper policy keeps none of the rows of {score_files['ori']}, so it cannot size the arms (see "
                f"{arms_dir / SIZING / 'selected.selection.json'}); give --size"
            )
        logger.info("every arm is cut to %d rows: the paper policy's kept count", size)
    sizes = {arm: select(arm, _arm_selection(selection, arm, size)) for arm in args.arms}
    short = {arm: n for arm, n in sizes.items() if n != size}
    if short:
        listed = ", ".join(f"{arm} {n}" for arm, n in short.items())
        raise ArmSizeError(
            f"the arms must hold the same number of rows ({size}), but {listed}: an arm with fewer candidates than "
            "the size keeps them all (ifd_top: the pairs with IFD < --ifd_threshold); give --size "
            f"{min(short.values())} or less (see each arm's selected.selection.json)"
        )
    return sizes


def _train_settings(training_args: SRTSFTConfig, model_args: SRTModelConfig, data: Path) -> dict[str, Any]:
    names = (
        "learning_rate", "num_train_epochs", "max_steps", "max_length", "warmup_steps", "weight_decay",
        "lr_scheduler_type", "per_device_train_batch_size", "gradient_accumulation_steps", "global_batch_size",
        "seed", "bf16", "completion_only_loss", "padding_free", "packing",
    )  # fmt: skip
    model = ("use_peft", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "template", "dtype")
    return {
        **{k: getattr(training_args, k, None) for k in names},
        **{k: getattr(model_args, k, None) for k in model},
        "model": model_args.model_name_or_path,
        "data": file_entry(data),
    }


def train_arms(
    args: AblateArguments,
    script_args: SRTScriptArguments,
    training_args: SRTSFTConfig,
    student: Student,
    arms_dir: Path,
    states: StepState,
    ran: dict[str, list[str]],
) -> tuple[Student, dict[str, int]]:
    """One model per arm, on every process; returns the student (with LoRA: the base model, every adapter
    unloaded) and each arm's optimizer steps."""
    from transformers import set_seed

    state = get_state()
    model_args = student.args
    lora = bool(model_args.use_peft)
    steps: dict[str, int] = {}
    for arm in args.arms:
        data = arms_dir / arm / SELECTED
        settings = _train_settings(training_args, model_args, data)
        record = states.done(arm, "train", settings)
        if record is not None:
            steps[arm] = int(record["result"]["global_step"])
            continue
        arm_args = copy.copy(training_args)
        arm_args.output_dir = str(arms_dir / arm / MODEL_DIR)
        if not lora and student._model is not None:  # a full fine-tune starts again from the student on disk
            student = Student(model_args, arm_args, tokenizer=student.tokenizer)
            gc.collect()
        set_seed(training_args.seed)  # the same adapter initialisation and data order for every arm
        start = time.perf_counter()
        inputs = SRTScriptArguments(
            dataset=str(data),
            data_format="auto",
            response_separator=script_args.response_separator,
            plot=script_args.plot,
        )
        outcome = train(data, inputs, arm_args, student, resume_from_checkpoint="auto", finish=False)
        if lora:
            student._model = outcome.model.unload()  # the base model without this arm's adapter, for the next
        else:
            student._model = None
        outcome.model = None
        gc.collect()
        steps[arm] = outcome.global_step
        if state.is_main_process:
            result = {
                "global_step": outcome.global_step,
                "train_rows": outcome.train_rows,
                "resumed_from": outcome.resumed_from,
                "train_loss": outcome.metrics.get("train_loss"),
                "seconds": round(time.perf_counter() - start, 1),
            }
            states.mark(arm, "train", settings, result)
            ran.setdefault("train", []).append(arm)
        state.wait_for_everyone()
    return student, steps


class ArmModels:
    """Each arm's trained model for answering, loaded when first needed: with LoRA, the arm's adapter on the one
    student (unloaded again by ``release``); a full fine-tune, loaded from its folder."""

    def __init__(self, student: Student, arms_dir: Path, loading: LoadingArguments) -> None:
        self.student = student
        self.arms_dir = arms_dir
        self.loading = loading
        self.lora = bool(student.args.use_peft)
        self.arm: str | None = None
        self.model: Any = None

    def model_args(self, arm: str) -> SRTModelConfig:
        folder = str(self.arms_dir / arm / MODEL_DIR)
        if self.lora:
            return replace(self.student.args, adapter=folder)
        return replace(self.student.args, model_name_or_path=folder, adapter=None)

    def get(self, arm: str) -> Any:
        if self.arm == arm:
            return self.model
        self.release()
        if self.lora:
            from peft import PeftModel

            base = self.student.model
            self.model = PeftModel.from_pretrained(base, self.model_args(arm).adapter)
        else:
            from srt_trainer.models.loading import load_configured_student

            self.model = load_configured_student(
                self.model_args(arm), device=self.loading.device, trust_remote_code=self.loading.trust_remote_code
            )
        self.model.eval()
        self.model.config.use_cache = True  # training turns the cache off; answers need it
        self.arm = arm
        return self.model

    def release(self) -> None:
        if self.model is not None and self.lora:
            self.student._model = self.model.unload()
        self.model, self.arm = None, None
        gc.collect()


def held_out_settings(args: AblateArguments, scoring: ScoringArguments) -> dict[str, Any]:
    """What the held-out losses depend on besides the model: the file and how s(y|x) is computed (the batching
    options change nothing but rounding)."""
    skip = ("shard_size", "zero3_gather", "token_budget", "max_batch_size")
    return {
        "held_out": file_entry(args.held_out),
        "scoring": {k: v for k, v in asdict(scoring).items() if k not in skip},
    }


def evaluate_held_out(
    name: str,
    model: Any,
    models: ArmModels,
    held_out: Any,
    settings: dict[str, Any],
    states: StepState,
    scoring: ScoringArguments,
    ran: dict[str, list[str]],
) -> None:
    """``<name>/held_out.jsonl``: s(y|x) of every held-out pair under ``model``, and the step's state."""
    t = time.perf_counter()
    tokenizer = models.student.tokenizer
    template = get_template(models.student.args.template, tokenizer)
    losses = response_losses(model, tokenizer, template, held_out.rows, scoring.scorer_options())
    write_held_out(held_out.rows, losses, models.arms_dir / name / HELD_OUT)
    scored = [loss for loss, _ in losses if loss is not None]
    result = {
        "items": len(losses),
        "scored": len(scored),
        "mean": sum(scored) / len(scored) if scored else None,
        "seconds": round(time.perf_counter() - t, 1),
    }
    states.mark(name, "held_out", settings, result)
    ran.setdefault("held_out", []).append(name)


def evaluate_arms(
    args: AblateArguments,
    judge: TeacherArguments,
    models: ArmModels,
    arms_dir: Path,
    out: Path,
    states: StepState,
    ran: dict[str, list[str]],
    plot: bool = True,
    held_out: Any = None,
    scoring: ScoringArguments | None = None,
) -> None:
    """The held-out losses (``held_out``: the loaded held-out pairs, or None), answers, pairwise judging against
    ori, MT-Bench and harness tasks, for every arm (main process)."""
    from srt_trainer.evaluation.config import GenerateArguments, HarnessArguments, JudgeArguments, MTBenchArguments
    from srt_trainer.evaluation.generate import run_generate
    from srt_trainer.evaluation.harness import run_harness
    from srt_trainer.evaluation.judge import NoReadableScoresError, run_judge
    from srt_trainer.evaluation.mtbench import MTBenchNoScoresError, run_mtbench

    tokenizer = models.student.tokenizer
    judge = replace(judge, teacher_cache=None)  # each arm's judge cache beside its reviews
    judge_settings = {
        "judge": judge.teacher,
        "model": judge.teacher_model,
        "host": endpoint_host(judge.base_url),
        "sampling": str(judge.sampling()),
    }
    scoring = scoring or ScoringArguments()
    ho_settings = held_out_settings(args, scoring) if held_out is not None else {}
    if held_out is not None:  # the untuned student first: did training move the losses at all?
        settings = ho_settings | {"model": asdict(models.student.args)}
        if states.done(BASE, "held_out", settings) is None:
            models.release()
            base = models.student.model
            base.eval()
            evaluate_held_out(BASE, base, models, held_out, settings, states, scoring, ran)
            if not models.lora:  # each fully tuned arm is loaded from its own folder
                models.student._model = None
                gc.collect()
    for arm in args.arms:
        folder = arms_dir / arm
        answers = folder / ANSWERS
        model_args = models.model_args(arm)
        if held_out is not None:
            settings = ho_settings | {"model": asdict(model_args), "train": _trained(states, arm)}
            if states.done(arm, "held_out", settings) is None:
                evaluate_held_out(arm, models.get(arm), models, held_out, settings, states, scoring, ran)
        if args.test_sets:
            gen = GenerateArguments(
                test_sets=list(args.test_sets),
                output=str(answers),
                generator=arm,
                max_length=args.eval_max_length,
                max_new_tokens=args.eval_max_new_tokens,
                batch_size=args.eval_batch_size,
                limit=args.eval_limit,
                engine=args.eval_engine,
                alpaca_eval=True,
            )
            settings = {"generate": asdict(gen), "model": asdict(model_args), "train": _trained(states, arm)}
            if states.done(arm, "generate", settings) is None:
                model = models.get(arm) if args.eval_engine == "transformers" else None  # vLLM loads its own
                run = run_generate(gen, model_args, models.loading, model=model, tokenizer=tokenizer)
                states.mark(arm, "generate", settings, {"items": len(run.rows), "seconds": run.summary["seconds"]})
                ran.setdefault("generate", []).append(arm)
        if args.mtbench_questions:
            mt = MTBenchArguments(
                questions=args.mtbench_questions,
                output_dir=str(out / MTBENCH_DIR),
                judge_prompts=args.mtbench_judge_prompts,
                reference_answers=args.mtbench_reference_answers,
                model_id=arm,
                max_new_tokens=args.mtbench_max_new_tokens,
                batch_size=args.eval_batch_size,
                limit=args.mtbench_limit,
                plot=plot,
            )
            settings = {"mtbench": _without_plot(mt), "model": asdict(model_args), "judge": judge_settings}
            settings["train"] = _trained(states, arm)
            if states.done(arm, "mtbench", settings) is None:
                try:
                    run_mt = run_mtbench(
                        mt, model_args, models.loading, judge, model=models.get(arm), tokenizer=tokenizer
                    )
                except MTBenchNoScoresError as e:
                    logger.warning("%s", e)
                    run_mt = e.run
                single = run_mt.summary["single"] or {}
                states.mark(
                    arm, "mtbench", settings, {"overall": single.get("overall"), "scored": single.get("scored")}
                )
                ran.setdefault("mtbench", []).append(arm)
        models.release()
        if arm != REFERENCE and args.test_sets:
            jc = JudgeArguments(
                answers_a=str(answers),
                answers_b=str(arms_dir / REFERENCE / ANSWERS),
                output=str(folder / "reviews.jsonl"),
                judge_input=args.judge_input,
                plot=plot,
            )
            settings = {"judge_args": _without_plot(jc), "judge": judge_settings}
            settings["answers"] = [file_entry(jc.answers_a), file_entry(jc.answers_b)]
            if states.done(arm, "judge", settings) is None:
                try:
                    run_j = run_judge(jc, judge)
                except NoReadableScoresError as e:  # an arm the judge could not score is a row of the table too
                    logger.warning("%s", e)
                    run_j = e.run
                overall = run_j.aggregate.overall
                result = {"win": overall.win, "tie": overall.tie, "lose": overall.lose, "failed": overall.failed}
                states.mark(arm, "judge", settings, result | {"requests": str(run_j.counts.format())})
                ran.setdefault("judge", []).append(arm)
        if args.harness_tasks:
            hc = HarnessArguments(
                model=str(model_args.model_name_or_path),
                adapter=model_args.adapter,
                tasks=list(args.harness_tasks),
                output=str(folder / "harness.jsonl"),
                include_path=args.harness_include_path,
                num_fewshot=args.harness_num_fewshot,
                limit=args.harness_limit,
                batch_size=args.eval_batch_size,
                device=models.loading.device,
                dtype=str(model_args.dtype or "auto"),
            )
            settings = {"harness": asdict(hc), "train": _trained(states, arm)}
            if states.done(arm, "harness", settings) is None:
                run_h = run_harness(hc)
                states.mark(arm, "harness", settings, {"average": run_h.summary.get("average")})
                ran.setdefault("harness", []).append(arm)


def _without_plot(config: Any) -> dict[str, Any]:
    """A step's settings that change its numbers (drawing its chart or not changes none)."""
    return {k: v for k, v in asdict(config).items() if k != "plot"}


def _trained(states: StepState, arm: str) -> str | None:
    """When the arm's model was trained: a retrained model invalidates its evaluations."""
    path = states.path(arm, "train")
    return json.loads(path.read_text()).get("finished") if path.is_file() else None


def run_ablation(
    args: AblateArguments,
    script_args: SRTScriptArguments,
    selection: SelectionArguments,
    scoring: ScoringArguments,
    training_args: SRTSFTConfig,
    model_args: SRTModelConfig,
    judge: TeacherArguments,
    reflection: ReflectionArguments | None = None,
) -> AblationRun:
    """Run the ablation (see the module's docstring); returns the table and the files written on the main process."""
    state = get_state()
    reflection = reflection or ReflectionArguments()
    out = Path(training_args.output_dir)
    arms_dir = out / ARMS_DIR
    states = StepState(arms_dir)
    ran: dict[str, list[str]] = {}
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    score_files, data_files = _score_files(script_args)
    needed = _needed_views(args.arms, selection)
    unscored = [v for v in VARIANTS if v != "ori" and v in needed and v not in score_files | data_files]
    reflect_first = bool(unscored) and "ori" in data_files  # from the original pairs alone: reflect them first
    if reflect_first:
        data_files |= {v: str(out / REFLECT_DIR / VARIANT_FILES[v]) for v in VARIANT_FILES}
    missing = [f"--{VARIANT_FIELDS[v]}_scores" for v in VARIANTS if v in needed and v not in score_files | data_files]
    if missing:
        raise AblationConfigError(
            f"{', '.join(missing)} (or the *_data files to score, or --ori_data alone: the run reflects it first) "
            "required: "
            + ("the paper policy's kept count sizes the arms" if selection.size is None else "the arms read them")
        )
    student = Student(model_args, training_args)

    # 0. the reflections, when only the original pairs were given (main process; the others wait for the marker)
    if reflect_first:
        t = time.perf_counter()
        teacher_args = reflect_teacher(args.reflect_teacher_config)
        check_teacher_placement(
            teacher_args,
            student.model,
            "name an endpoint in --reflect_teacher_config (teacher: openai), or reflect first with `srt reflect`",
        )
        loaded = LoadedStudent(student.args.model_name_or_path, student.model, student.tokenizer)
        on_main_process(
            lambda: reflect_variants(teacher_args, reflection, loaded, data_files["ori"], out / REFLECT_DIR),
            out / REFLECT_DIR / "reflected.done",
        )
        ran["reflect"] = list(VARIANT_FILES)
        timings["reflect_s"] = time.perf_counter() - t

    # 1. scores of the views given as data (every process: scoring is shared)
    if data_files:
        check_variant_files(data_files, script_args.data_format)
        score_files |= score_variants(
            data_files, scoring, student, out / "scores", script_args.data_format, plot=script_args.plot
        )
    timings["score_s"] = time.perf_counter() - t0

    # 2. the arms' selections, at one size (main process; the others wait for the marker)
    t = time.perf_counter()

    # the held-out pairs, read once by the main process (which selects and evaluates)
    held_out = None
    if args.held_out and state.is_main_process:
        held_out = load_held_out(args.held_out, out / "held_out.rejects.jsonl")

    def select_and_check() -> dict[str, int]:
        sizes = select_arms(args, selection, score_files, arms_dir, states, training_args.seed, ran, script_args.plot)
        if held_out is not None:  # before any training: a held-out row an arm trains on would measure memorization
            check_no_overlap(held_out, {arm: arms_dir / arm / SELECTED for arm in args.arms})
        return sizes

    sizes = on_main_process(select_and_check, arms_dir / "selected.done")
    timings["select_s"] = time.perf_counter() - t

    # 3. one model per arm (every process)
    t = time.perf_counter()
    student, steps = train_arms(args, script_args, training_args, student, arms_dir, states, ran)
    timings["train_s"] = time.perf_counter() - t
    state.wait_for_everyone()
    if state.num_processes > 1:
        state.destroy_process_group()  # the evaluation is the main process's alone
    if not state.is_main_process:
        return AblationRun(out, is_main=False)
    if student._model is not None and not model_args.use_peft:
        student._model = None
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()  # the saved models are whole: loaded plainly, on this process alone

    # 4. the evaluations (main process)
    t = time.perf_counter()
    loading = LoadingArguments(device=None, trust_remote_code=training_args.trust_remote_code)
    models = ArmModels(student, arms_dir, loading)
    evaluate_arms(args, judge, models, arms_dir, out, states, ran, script_args.plot, held_out, scoring)
    timings["evaluate_s"] = time.perf_counter() - t

    # 5. the table, chart, JSON and manifest
    assert sizes is not None
    b = Bootstrap(args.confidence_level, args.bootstrap_resamples, args.bootstrap_seed)
    mt_dir = out / MTBENCH_DIR if args.mtbench_questions else None
    table = build_table(arms_dir, args.arms, sizes, steps, mt_dir, b, base=BASE if args.held_out else None)
    markdown = format_table(table, args.confidence_level)
    timings["total_s"] = time.perf_counter() - t0
    files = write_outputs(
        out, table, markdown, args, sizes, score_files, judge, training_args, model_args, selection, script_args.plot
    )
    return AblationRun(out, table, markdown, files, sizes, ran, {k: round(v, 1) for k, v in timings.items()})


def write_outputs(
    out: Path,
    table: list[Any],
    markdown: str,
    args: AblateArguments,
    sizes: dict[str, int],
    score_files: dict[str, str],
    judge: TeacherArguments,
    training_args: SRTSFTConfig,
    model_args: SRTModelConfig,
    selection: SelectionArguments,
    plot: bool = True,
) -> dict[str, Path]:
    """``ablation.md``, ``ablation.json``, ``ablation.png`` and ``ablation.manifest.json`` in ``out``."""
    level = f"{args.confidence_level:.0%}"
    note = (
        f"Each number with its {level} bootstrap interval over the test items ({args.bootstrap_resamples} "
        f"resamples, seed {args.bootstrap_seed}; harness: lm_eval's standard error). `*`: the difference to ori is "
        "larger than the uncertainty ("
        + ("a winning score whose interval excludes 1.0, " if args.test_sets else "")
        + "a difference whose interval excludes 0). Every arm trained on the same number of rows with the same "
        "settings and seed."
    )
    if args.held_out:
        note += (
            f" Held-out loss: the mean over the held-out pairs ({args.held_out}) of the tuned model's token NLL of "
            "the reference response given the prompt, s(y|x) as the student's IFD computes it; lower is better; "
            "− ori is the paired difference over the same items; `untuned` is the student before any training."
        )
    floor = noise_floor(table)
    text = f"# Ablation: {len(args.arms)} arms of {sizes[args.arms[0]]} rows each\n\n{markdown}\n\n{floor}{note}\n"
    files = {"markdown": write_text_atomic(text, out / "ablation.md")}
    payload = {
        "arms": args.arms,
        "rows": sizes,
        "equal_size": len(set(sizes.values())) == 1,
        "bootstrap": {
            "confidence_level": args.confidence_level,
            "resamples": args.bootstrap_resamples,
            "seed": args.bootstrap_seed,
        },
        "table": [r.to_dict() for r in table],
        "noise_floor": floor.strip() or None,
    }
    files["json"] = write_json(payload, out / TABLE, default=str)
    if plot:
        files["chart"] = plot_table(table, out / "ablation.png", args.confidence_level)
    manifest = build_manifest(
        "ablation",
        packages=("trl", "accelerate", "scipy"),
        arms=args.arms,
        rows=sizes,
        seed=training_args.seed,
        student=model_args.model_name_or_path,
        template=model_args.template,
        training=_train_settings(training_args, model_args, Path(score_files["ori"])) | {"data": None},
        selection={k: v for k, v in asdict(selection).items() if k != "policy"},
        scores={v: file_entry(f) for v, f in score_files.items()},
        test_sets=[file_entry(p) for p in _expand(args.test_sets)],
        held_out=file_entry(args.held_out),
        judge={"kind": judge.teacher, "model": judge.teacher_model, "host": endpoint_host(judge.base_url)},
        mtbench={
            "questions": file_entry(args.mtbench_questions),
            "judge_prompts": file_entry(args.mtbench_judge_prompts),
            "reference_answers": file_entry(args.mtbench_reference_answers),
        }
        if args.mtbench_questions
        else None,
        harness={"tasks": args.harness_tasks, "num_fewshot": args.harness_num_fewshot} if args.harness_tasks else None,
        bootstrap=payload["bootstrap"],
    )
    files["manifest"] = write_manifest(files["json"], manifest)
    return files


def noise_floor(table: list[Any]) -> str:
    """The line under the table on ``ori`` vs ``random``: two independent random subsets of one size, trained and
    evaluated alike, so their difference is what the draw of rows alone does (empty without both arms)."""
    rows = {r.arm: r for r in table}
    if REFERENCE not in rows or "random" not in rows:
        return ""
    r = rows["random"]
    parts = []
    if r.held_out_vs_ori is not None and r.held_out_vs_ori.value is not None:
        parts.append(f"held-out loss random − ori {r.held_out_vs_ori.format(3)}")
    if r.winning_score is not None and r.winning_score.value is not None:
        parts.append(f"winning score random vs ori {r.winning_score.format()}")
    if r.mtbench_vs_ori is not None and r.mtbench_vs_ori.value is not None:
        parts.append(f"MT-Bench random − ori {r.mtbench_vs_ori.format()}")
    measured = ": " + "; ".join(parts) if parts else ""
    return (
        f"ori vs random: the difference two random draws make (two independent random subsets of the same size, "
        f"trained and evaluated alike){measured}. An arm's difference to ori no larger than this is within what "
        "the choice of rows alone does (one draw of that noise, itself uncertain).\n\n"
    )


def _expand(paths: list[str]) -> list[str]:
    from srt_trainer.evaluation.test_sets import expand_test_set_paths

    return [str(p) for p in expand_test_set_paths(paths)]
