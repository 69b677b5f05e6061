"""``srt eval alpacaeval``: AlpacaEval's own package judges a model's outputs against reference outputs.

The paper reports AlpacaEval (§4-5) beside its pairwise comparison. The package (``alpaca-eval``, the same
version as the leaderboard's) does the judging and the metric; this runner gives it what it needs offline and
reads back what it computed:

- both output files by path (the 805 prompts come from a hub dataset script that current ``datasets`` refuses), as
  ``srt eval generate`` writes them (``<stem>.alpaca_eval.json``); rows are matched on the instruction, as the
  package does, and the rows that cannot be used go to ``<stem>.rejects.jsonl``;
- a chat-judge annotator of our own (``resources/alpaca_eval/srt_pairwise``: one label asked for, patterns anchored
  at the start of the reply) set up for ``--judge_model`` at ``--base_url``, or any annotator of the user's;
- the plain win rate by default (the length-controlled one needs a hub file), and no annotation cache of the
  package's (it fails under pandas 3): the items are judged in chunks, one run of the package each, and a finished
  chunk is kept, so a killed run resumes without asking the judge again.

The package runs in its own process (``python -c`` its console entry point), so it may live in another
environment (``--python``); the API key reaches it only through the environment. An item whose judgment names
neither output is dropped by the package; it is listed in ``<stem>.failures.jsonl``, never counted as a draw.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from srt_trainer.data import Reject
from srt_trainer.errors import SRTUserError
from srt_trainer.evaluation.config import AlpacaEvalArguments
from srt_trainer.evaluation.judge import match_answers, read_answers
from srt_trainer.evaluation.manifest import MANIFEST, build_manifest, endpoint_host, file_entry, write_manifest
from srt_trainer.io import DataLoadError, no_rows_message, write_json
from srt_trainer.stage import REJECTS, SUMMARY, Stage

logger = logging.getLogger(__name__)

ANNOTATOR = "srt_pairwise"
API_KEY_ENV = "OPENAI_API_KEY"
LEADERBOARD = "leaderboard.csv"
FAILURES = "failures.jsonl"
# the package's console entry point, run by the interpreter that has it (its own environment, if need be)
_RUN_PACKAGE = "import sys; from alpaca_eval.main import main; sys.exit(main())"
# the package's metric over the merged annotations of every chunk, and its leaderboard row as `evaluate` writes it
_RUN_METRIC = """
import json, sys
import pandas as pd
import alpaca_eval
from alpaca_eval import metrics
annotations, fn_metric, name, avg_length, out = sys.argv[1:6]
df = pd.read_json(annotations)
kwargs = {"save_weights_dir": None} if fn_metric == "get_length_controlled_winrate" else {}
result = {"mode": "community", "avg_length": int(avg_length), **getattr(metrics, fn_metric)(df, **kwargs)}
board = pd.DataFrame.from_dict({name: result}, orient="index")
first = [c for c in ("win_rate", "standard_error") if c in board.columns]
board[first + [c for c in board.columns if c not in first]].to_csv(out)
print(json.dumps({"version": alpaca_eval.__version__, "metrics": {k: (v.item() if hasattr(v, "item") else v)
                  for k, v in result.items()}}))
"""


class AlpacaEvalError(SRTUserError, RuntimeError):
    """AlpacaEval's package failed (not installed, judge unreachable, a metric that needs the network)."""


def shipped_annotator() -> Path:
    """The annotator folder srt_trainer ships (``configs.yaml`` and ``prompt.txt``)."""
    return Path(str(files("srt_trainer") / "resources" / "alpaca_eval" / ANNOTATOR))


def render_annotator(target: Path, judge_model: str, max_tokens: int, concurrency: int) -> Path:
    """Copy the shipped annotator into ``target/srt_pairwise`` with the judge's model, reply length and
    concurrency set; returns that folder (what ``--annotators_config`` takes)."""
    source = shipped_annotator()
    folder = target / ANNOTATOR
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / "prompt.txt", folder / "prompt.txt")
    config = yaml.safe_load((source / "configs.yaml").read_text())
    kwargs = config[ANNOTATOR]["completions_kwargs"]
    kwargs.update(model_name=judge_model, max_tokens=max_tokens, num_procs=concurrency)
    header = "".join(line + "\n" for line in (source / "configs.yaml").read_text().splitlines() if line.startswith("#"))
    (folder / "configs.yaml").write_text(header + yaml.safe_dump(config, sort_keys=False))
    return folder


def judge_environment(base_url: str | None) -> dict[str, str]:
    """The package's environment: the endpoint as ``OPENAI_BASE_URL`` (and the older ``OPENAI_API_BASE`` it also
    reads), the key from ``OPENAI_API_KEY`` (a local endpoint takes any: "EMPTY" when none is set)."""
    env = dict(os.environ)
    if base_url:
        env["OPENAI_BASE_URL"] = env["OPENAI_API_BASE"] = base_url
        env[API_KEY_ENV] = env.get(API_KEY_ENV) or "EMPTY"
    elif not env.get(API_KEY_ENV):
        raise AlpacaEvalError(f"the judge needs an API key: set {API_KEY_ENV} (or give --base_url of a local judge)")
    return env


def _scrub(text: str, env: dict[str, str]) -> str:
    """``text`` without the API key, should an error message quote it."""
    key = env.get(API_KEY_ENV) or ""
    return text.replace(key, "***") if len(key) >= 4 else text


def _last_error(text: str) -> str:
    """The line that says what went wrong: the last one the package wrote (a traceback's exception line)."""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return kept[-1] if kept else "no output"


def run_package(python: str, args: list[str], env: dict[str, str], log: Path, code: str = _RUN_PACKAGE) -> str:
    """Run the package's ``code`` with ``args`` under ``python``; its output goes to ``log``; returns its stdout.
    A failure raises ``AlpacaEvalError`` with the last lines of the log (never the key)."""
    with log.open("w") as f:
        proc = subprocess.run([python, "-c", code, *args], env=env, stdout=subprocess.PIPE, stderr=f, text=True)
    if proc.returncode != 0:
        text = log.read_text(errors="replace")
        if "No module named 'alpaca_eval'" in text:
            raise AlpacaEvalError(
                f"{python} has no alpaca_eval: pip install 'srt-trainer[eval]' (or give --python of an environment "
                "that has it)"
            )
        error = _scrub(_last_error(text), env)
        raise AlpacaEvalError(f"alpaca_eval exited with {proc.returncode} (log: {log}): {error}")
    return proc.stdout


@dataclass
class AlpacaEvalRun:
    """What ``run_alpaca_eval`` wrote: the annotations (in item order), the summary with the win rate, the items the
    judge named no output for, the rejected rows, and the files."""

    annotations: list[dict[str, Any]]
    summary: dict[str, Any]
    failures: list[dict[str, Any]]
    rejects: list[Reject]
    output: Path
    files: dict[str, str]


def _dedupe_instructions(pairs: list[tuple[dict, dict]], path: str) -> tuple[list[tuple[dict, dict]], list[Reject]]:
    """The package joins the two files on the instruction: a second item with the same instruction (another test
    set's) cannot be told apart there, so it is rejected naming the first."""
    seen: dict[str, int] = {}
    kept, rejects = [], []
    for k, (row, ref) in enumerate(pairs):
        text = row["instruction"]
        if text in seen:
            raw = json.dumps(row, ensure_ascii=False, default=str)
            reason = f"same instruction as matched item {seen[text]}; AlpacaEval matches outputs on the instruction"
            rejects.append(Reject(path, k, "instruction", reason, raw))
            continue
        seen[text] = k
        kept.append((row, ref))
    return kept, rejects


def _record(row: dict[str, Any], generator: str) -> dict[str, Any]:
    instruction = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
    return {"instruction": instruction, "output": row["output"], "generator": generator}


def _names(config: AlpacaEvalArguments, pairs: list[tuple[dict, dict]]) -> tuple[str, str]:
    name = config.name or str(pairs[0][0].get("generator") or Path(config.model_outputs).stem)
    reference = str(pairs[0][1].get("generator") or Path(config.reference_outputs).stem)
    # the package tells the two apart by name (its length-controlled metric takes equal names for the baseline)
    return name, reference if reference != name else f"{reference} (reference)"


def run_alpaca_eval(config: AlpacaEvalArguments) -> AlpacaEvalRun:
    """Judge ``config.model_outputs`` against ``config.reference_outputs`` with AlpacaEval's package and read back
    its win rate; resumes from the finished chunks of an earlier run with the same items and settings."""
    stage = Stage(
        config.output,
        "AlpacaEval annotations",
        inputs={"--model_outputs": config.model_outputs, "--reference_outputs": config.reference_outputs},
        side=(REJECTS, SUMMARY, FAILURES, LEADERBOARD, MANIFEST),
    )
    with stage.guard():
        return _run(config, stage)


def _run(config: AlpacaEvalArguments, stage: Stage) -> AlpacaEvalRun:
    python = config.python or sys.executable
    env = judge_environment(config.base_url)
    model, reference = read_answers(config.model_outputs), read_answers(config.reference_outputs)
    for answers in (model, reference):
        if not answers.answers and not answers.rejects:  # refused as every loader refuses a file without rows
            raise DataLoadError(no_rows_message(answers.path))
    pairs, unmatched = match_answers(model, reference)
    pairs, duplicates = _dedupe_instructions(pairs, config.model_outputs)
    rejects = [*model.rejects, *reference.rejects, *unmatched, *duplicates]
    pairs = pairs[: config.limit] if config.limit is not None else pairs
    stage.reject(rejects, len(pairs), config.model_outputs, "no item with a reference output to judge")
    name, reference_name = _names(config, pairs)
    items = [(_record(row, name), _record(ref, reference_name)) for row, ref in pairs]

    store = stage.shards("alpaca_eval")
    if config.overwrite:
        store.clear()
    if config.annotators_config is None:
        annotator = render_annotator(
            store.work_dir / "annotator", str(config.judge_model), config.judge_max_tokens, config.judge_concurrency
        )
    else:
        annotator = Path(config.annotators_config)
        if not annotator.exists() and os.sep in config.annotators_config:
            raise AlpacaEvalError(f"--annotators_config {config.annotators_config}: no such folder or file")
    # what changes the judgments (the endpoint by its host only: a URL may carry credentials)
    own = ("judge_model", "annotators_config", "judge_max_tokens", "seed", "chunk_size")
    settings = {k: getattr(config, k) for k in own} | {"judge_host": endpoint_host(config.base_url)}
    items_key = hashlib.sha256()
    for m, r in items:
        key = [m["instruction"], m["output"], r["output"], m["generator"], r["generator"]]
        items_key.update(json.dumps(key).encode())
    manifest = {"settings": settings, "items": items_key.hexdigest(), "num_items": len(items)}
    plan = store.resume(manifest, len(items), config.chunk_size, "judged")

    start = time.perf_counter()
    bar = tqdm(total=len(items), initial=plan.rows_done, desc=f"AlpacaEval ({name})", unit="item")

    def judge(k: int, s: int, e: int) -> list[dict[str, Any]]:
        rows = _judge_chunk(items[s:e], store.work_dir / f"chunk-{k:06d}", annotator, config, python, env)
        bar.update(e - s)
        return rows

    judged = store.collect(plan, store.run(plan, plan.todo, judge), "judged")
    bar.close()
    seconds = time.perf_counter() - start

    by_instruction = {a["instruction"]: a for a in judged}
    annotations, failures = [], []
    for i, (m, _) in enumerate(items):
        a = by_instruction.get(m["instruction"])
        if a is None:
            reason = "the judge's reply named neither output (no readable label); the package left the item out"
            failures.append({"item": i, "instruction": m["instruction"], "reason": reason})
        else:
            annotations.append(a)
    stage.write(annotations)
    stage.write_side(FAILURES, failures)
    if not annotations:
        raise AlpacaEvalError(
            f"{config.model_outputs}: the judge named a better output for none of the {len(items)} items "
            f"(see {stage.path(FAILURES)})"
        )

    merged = store.work_dir / "annotations.json"
    write_json(annotations, merged)
    avg_length = int(sum(len(m["output"]) for m, _ in items) / len(items))
    out = run_package(
        python,
        [str(merged), config.fn_metric, name, str(avg_length), str(stage.path(LEADERBOARD))],
        env,
        store.work_dir / "metric.log",
        code=_RUN_METRIC,
    )
    computed = json.loads(out.strip().splitlines()[-1])
    metrics = computed["metrics"]
    summary = {
        "generator": name,
        "reference": reference_name,
        **{k: metrics.get(k) for k in ("win_rate", "standard_error", "length_controlled_winrate")},
        "n_total": metrics.get("n_total"),
        "n_wins": metrics.get("n_wins"),
        "n_draws": metrics.get("n_draws"),
        "avg_length": avg_length,
        "metrics": metrics,
        "items": len(items),
        "judged": len(annotations),
        "failed": len(failures),
        "rejected_rows": len(rejects),
        "chunks_judged_now": len(plan.todo),
        "seconds": round(seconds, 3),
        "judge_model": config.judge_model,
        "judge_host": endpoint_host(config.base_url),
        "fn_metric": config.fn_metric,
        "alpaca_eval_version": computed["version"],
        "config": asdict(config) | {"base_url": endpoint_host(config.base_url)},
    }
    stage.write_summary(summary)
    config_file = annotator / "configs.yaml" if annotator.is_dir() else annotator
    manifest = build_manifest(
        "alpacaeval",
        packages=("alpaca-eval",),
        alpaca_eval_version=computed["version"],
        model=name,
        reference=reference_name,
        judge={"model": config.judge_model, "host": endpoint_host(config.base_url)},
        files={
            "model_outputs": file_entry(config.model_outputs),
            "reference_outputs": file_entry(config.reference_outputs),
            "annotator_config": file_entry(config_file if config_file.exists() else None),
            "annotator_prompt": file_entry(annotator / "prompt.txt" if (annotator / "prompt.txt").exists() else None),
        },
        seed=config.seed,
        fn_metric=config.fn_metric,
        items=len(items),
        judged=len(annotations),
    )
    write_manifest(stage.output, manifest)
    paths = {s: str(stage.path(s)) for s in (SUMMARY, LEADERBOARD, FAILURES, MANIFEST, REJECTS)}
    return AlpacaEvalRun(annotations, summary, failures, rejects, stage.output, paths)


def _judge_chunk(
    items: list[tuple[dict[str, Any], dict[str, Any]]],
    folder: Path,
    annotator: Path,
    config: AlpacaEvalArguments,
    python: str,
    env: dict[str, str],
) -> list[dict[str, Any]]:
    """One run of the package over a chunk of items; returns its annotations (items it could not judge left out)."""
    folder.mkdir(parents=True, exist_ok=True)
    model_file, reference_file = folder / "model_outputs.json", folder / "reference_outputs.json"
    write_json([m for m, _ in items], model_file)
    write_json([r for _, r in items], reference_file)
    shutil.rmtree(folder / "out", ignore_errors=True)
    args = [
        "--model_outputs",
        str(model_file),
        "--reference_outputs",
        str(reference_file),
        "--annotators_config",
        # a folder here, absolute: the package reads a relative path as one under its own configs
        str(annotator.resolve()) if annotator.exists() else str(annotator),
        "--output_path",
        str(folder / "out"),
        "--fn_metric",
        "get_winrate",  # per chunk; the run's metric is computed once over every chunk's annotations
        "--sort_by",
        "win_rate",
        "--caching_path",
        "None",
        "--precomputed_leaderboard",
        "None",
        "--is_cache_leaderboard",
        "False",
        "--seed",
        str(config.seed),
    ]
    run_package(python, args, env, folder / "alpaca_eval.log")
    path = folder / "out" / "annotations.json"
    return json.loads(path.read_text()) if path.exists() else []
