"""``srt eval harness``: lm-evaluation-harness tasks on a model (and its PEFT adapter), through lm_eval's Python API.

The paper's Open LLM Leaderboard numbers (§4-5) are the v1 leaderboard's six tasks, each at its own shot count, and
their average: ``--tasks leaderboard_v1``. lm_eval's ``hf`` model is built once (with ``peft=`` for an adapter)
and each task runs through ``lm_eval.simple_evaluate`` with the seeds the ``lm_eval`` command uses, so a number
here is the number that command gives. Each finished task is kept (``<stem>.harness-shards/``): a killed run
resumes with the tasks still to do. The output has one row per task with its main metric; lm_eval's own results,
merged over the tasks, go to ``<stem>.results.json``; the average to ``<stem>.summary.json``; how they were
obtained to ``<stem>.manifest.json``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from srt_trainer.errors import SRTUserError, did_you_mean
from srt_trainer.evaluation.config import EvalConfigError, HarnessArguments
from srt_trainer.evaluation.generate import default_generator_name
from srt_trainer.evaluation.manifest import MANIFEST, build_manifest, file_entry, write_manifest
from srt_trainer.io import write_json
from srt_trainer.stage import SUMMARY, Stage

logger = logging.getLogger(__name__)

LEADERBOARD_V1 = "leaderboard_v1"
RESULTS = "results.json"
# lm_eval's own seeds, as its command sets them (random, numpy, torch, few-shot sampling)
LM_EVAL_SEEDS = {"numpy_random_seed": 1234, "torch_random_seed": 1234, "fewshot_random_seed": 1234}


@dataclass(frozen=True)
class HarnessTask:
    """One task to run: its lm_eval name, its shots (None: the task's own) and the result key reported for it
    (``metric,filter`` as lm_eval writes it; None: the task's first metric)."""

    name: str
    num_fewshot: int | None = None
    metric: str | None = None


# The Open LLM Leaderboard (v1): ARC-Challenge 25-shot, HellaSwag 10, MMLU 5, TruthfulQA-mc2 0, Winogrande 5 and
# GSM8K 5, each with the metric the leaderboard showed (GSM8K's strict "#### N" answer match).
LEADERBOARD_V1_TASKS = (
    HarnessTask("arc_challenge", 25, "acc_norm,none"),
    HarnessTask("hellaswag", 10, "acc_norm,none"),
    HarnessTask("mmlu", 5, "acc,none"),
    HarnessTask("truthfulqa_mc2", 0, "acc,none"),
    HarnessTask("winogrande", 5, "acc,none"),
    HarnessTask("gsm8k", 5, "exact_match,strict-match"),
)
PRESETS = {LEADERBOARD_V1: LEADERBOARD_V1_TASKS}


class UnknownTaskError(EvalConfigError):
    """A task name lm_eval does not know (nor any YAML under --include_path)."""


class TaskDataError(SRTUserError, RuntimeError):
    """A task whose data cannot be loaded (offline, with the data on the hub)."""


def plan_tasks(names: list[str], num_fewshot: int | None) -> list[HarnessTask]:
    """The tasks to run, a preset expanded to its tasks with their own shots (``--num_fewshot`` is refused with a
    preset: its shots are part of what its numbers mean)."""
    plan: list[HarnessTask] = []
    for name in names:
        if name in PRESETS:
            if num_fewshot is not None:
                raise EvalConfigError(f"--num_fewshot with --tasks {name}: the preset sets each task's own shots")
            plan.extend(PRESETS[name])
        else:
            plan.append(HarnessTask(name, num_fewshot))
    seen: set[str] = set()
    return [t for t in plan if not (t.name in seen or seen.add(t.name))]


def task_manager(include_path: str | None) -> Any:
    """lm_eval's task registry, with the YAML tasks under ``include_path``."""
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise EvalConfigError(f"--include_path {include_path}: no such folder")
    return TaskManager(include_path=include_path)


def check_tasks(plan: list[HarnessTask], manager: Any, include_path: str | None) -> None:
    """Refuse task names the registry does not know, naming each (with the closest known name)."""
    known = set(manager.all_tasks)
    unknown = [t.name for t in plan if t.name not in known]
    if unknown:
        where = f" nor under --include_path {include_path}" if include_path else ""
        names = ", ".join(f"{n}{did_you_mean(n, known)}" for n in unknown)
        raise UnknownTaskError(
            f"--tasks: lm_eval knows no task {names}{where} (`lm_eval ls tasks` lists them; presets: "
            f"{', '.join(PRESETS)})"
        )


def main_metric(task_results: dict[str, Any], key: str | None = None) -> tuple[str, float | None, float | None]:
    """``(metric key, value, stderr)`` of one task's results: ``key`` when given, else its first metric."""
    if key is None:
        key = next(
            (k for k, v in task_results.items() if "," in k and "_stderr," not in k and isinstance(v, (int, float))),
            None,
        )
    if key is None or key not in task_results:
        return key or "", None, None
    metric, _, filt = key.partition(",")
    stderr = task_results.get(f"{metric}_stderr,{filt}")
    return key, float(task_results[key]), float(stderr) if isinstance(stderr, (int, float)) else None


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """lm_eval result dicts of several runs as one, in lm_eval's shape (per-task tables merged; the rest from the
    last run)."""
    merged: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key].update(value)
            else:
                merged[key] = value
    return merged


@dataclass
class HarnessRun:
    """What ``run_harness`` wrote: one row per task, the summary (with the average), lm_eval's merged results."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    results: dict[str, Any]
    output: Path
    files: dict[str, str]


def _device(device: str | None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_lm(config: HarnessArguments, model_path: str) -> Any:
    """lm_eval's ``hf`` model, as the command builds it from ``--model_args pretrained=...,peft=...``."""
    from lm_eval.models.huggingface import HFLM

    kwargs: dict[str, Any] = {
        "pretrained": model_path,
        "device": _device(config.device),
        "batch_size": config.batch_size,
        "dtype": config.dtype,
        "trust_remote_code": config.trust_remote_code,
    }
    if config.adapter:
        kwargs["peft"] = config.adapter
    return HFLM(**kwargs)


def run_harness(config: HarnessArguments) -> HarnessRun:
    """Run ``config.tasks`` on the model (and adapter) and write the results; resumes from the tasks an earlier run
    with the same settings finished."""
    stage = Stage(
        config.output,
        "harness results",
        inputs={},
        side=(SUMMARY, RESULTS, MANIFEST),
    )
    with stage.guard():
        return _run(config, stage)


def _run(config: HarnessArguments, stage: Stage) -> HarnessRun:
    from srt_trainer.models.loading import check_adapter_base, resolve_model_path

    plan = plan_tasks(config.tasks, config.num_fewshot)
    model_path = resolve_model_path(config.model)
    if config.adapter:
        check_adapter_base(model_path, config.adapter)
    store = stage.shards("harness")
    if config.overwrite:
        store.clear()
    own = ("adapter", "include_path", "batch_size", "limit", "dtype", "seed", "trust_remote_code")
    settings = {k: getattr(config, k) for k in own} | {"model": config.model, **LM_EVAL_SEEDS}
    manifest = {"settings": settings, "tasks": [asdict(t) for t in plan]}
    # lm_eval's registry takes seconds to build: a run whose every task is kept needs neither it nor lm_eval
    previous = store.work_dir / store.MANIFEST
    finished = previous.is_file() and json.loads(previous.read_text()) == manifest
    manager = None
    if not finished or len(store.done(len(plan))) < len(plan):
        manager = task_manager(config.include_path)
        check_tasks(plan, manager, config.include_path)  # before the manifest: a typo must not pin the folder
    shards = store.resume(manifest, len(plan), 1, "run")  # one task a shard

    lm = None
    if shards.todo:
        from lm_eval import simple_evaluate
        from lm_eval.utils import handle_non_serializable
    start = time.perf_counter()
    bar = tqdm(total=len(plan), initial=len(shards.done), desc="lm_eval tasks", unit="task")

    def evaluate(k: int, _start: int, _end: int) -> list[dict[str, Any]]:
        nonlocal lm
        task = plan[k]
        lm = lm or build_lm(config, model_path)
        bar.set_postfix_str(task.name)
        try:
            result = simple_evaluate(
                model=lm,
                tasks=[task.name],
                num_fewshot=task.num_fewshot,
                limit=config.limit,
                task_manager=manager,
                log_samples=False,
                random_seed=config.seed,
                **LM_EVAL_SEEDS,
            )
        except ConnectionError as e:  # datasets cannot reach the hub for the task's data
            raise TaskDataError(
                f"--tasks {task.name}: its data could not be loaded ({e}); the leaderboard tasks read theirs from "
                "the hub: run once online (or with the datasets cache filled) or give a local task by --include_path"
            ) from e
        bar.update(1)
        text = json.dumps(result, default=handle_non_serializable)
        return [{"task": task.name, "num_fewshot": task.num_fewshot, "result": text}]

    stored = store.collect(shards, store.run(shards, shards.todo, evaluate), "run")
    bar.close()
    seconds = time.perf_counter() - start

    parts = [json.loads(row["result"]) for row in stored]
    results = merge_results(parts)
    name = default_generator_name(config.model, config.adapter)
    rows = []
    for task, part in zip(plan, parts, strict=True):
        key, value, stderr = main_metric(part["results"].get(task.name, {}), task.metric)
        shots = part.get("n-shot", {}).get(task.name, task.num_fewshot)
        rows.append(
            {
                "model": name,
                "task": task.name,
                "metric": key,
                "value": value,
                "stderr": stderr,
                "num_fewshot": shots,
                "n_samples": part.get("n-samples", {}).get(task.name, {}).get("effective"),
            }
        )
    values = [r["value"] for r in rows if r["value"] is not None]
    preset = next((p for p in PRESETS if p in config.tasks), None)
    stage.write(rows)
    write_json(results, stage.path(RESULTS), default=str)
    summary = stage.write_summary(
        {
            "model": name,
            "model_path": config.model,
            "adapter": config.adapter,
            "preset": preset,
            "tasks": {r["task"]: {k: r[k] for k in ("metric", "value", "stderr", "num_fewshot")} for r in rows},
            "average": sum(values) / len(values) if len(values) == len(rows) else None,
            "tasks_run_now": len(shards.todo),
            "seconds": round(seconds, 3),
            "lm_eval_version": _version("lm-eval"),
            "config": asdict(config),
        }
    )
    include = Path(config.include_path) if config.include_path else None
    task_files = sorted(p for p in include.rglob("*") if p.is_file()) if include else []  # task YAML and data
    manifest = build_manifest(
        "harness",
        packages=("lm-eval", "accelerate"),
        model=name,
        model_path=config.model,
        adapter=config.adapter,
        tasks=[{"task": r["task"], "num_fewshot": r["num_fewshot"], "metric": r["metric"]} for r in rows],
        preset=preset,
        limit=config.limit,
        batch_size=config.batch_size,
        dtype=config.dtype,
        seeds={"random_seed": config.seed, **LM_EVAL_SEEDS},
        files={str(p): file_entry(p) for p in task_files},
    )
    write_manifest(stage.output, manifest)
    paths = {s: str(stage.path(s)) for s in (SUMMARY, RESULTS, MANIFEST)}
    return HarnessRun(rows, summary, results, stage.output, paths)


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
