"""``srt eval report``: every evaluation of every model in one markdown table and one JSON, with their manifests.

The paper answers "did it help?" with four evaluations (§4-5): the pairwise comparison judged in both orders,
AlpacaEval, the Open LLM Leaderboard tasks and MT-Bench. This reads each one's result files as the tools write
them, one row per model:

- pairwise: the ``<stem>.aggregate.json`` of ``srt eval judge`` / ``srt eval aggregate`` (win / tie / lose of model
  A against model B, the winning score);
- MT-Bench: the ``<model_id>.mtbench.summary.json`` of ``srt eval mtbench`` (the mean grade per turn and overall,
  and the pairwise win / tie / loss against model B), or FastChat's single-grade judgments
  (``model_judgment/<judge>_single.jsonl``; a score of -1 is a failed judgment, left out of the means and counted,
  as FastChat's ``show_result`` does): the mean per turn and overall;
- AlpacaEval: the output of ``srt eval alpacaeval`` (its summary) or a ``leaderboard.csv`` the package wrote;
- harness: the output of ``srt eval harness`` (its summary) or an ``lm_eval`` ``results_*.json``.

Beside each number goes how it was obtained: the manifest its runner wrote (``<stem>.manifest.json``, or a
``manifest.json`` in the result's folder or the one above; for FastChat's judgments, each model's
``<model_id>.mtbench.manifest.json`` in the folder above), and the sha256 of every file read. A number without
its manifest is reported as such.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from srt_trainer.errors import SRTUserError
from srt_trainer.evaluation.config import ReportArguments
from srt_trainer.evaluation.generate import default_generator_name
from srt_trainer.evaluation.harness import main_metric
from srt_trainer.evaluation.manifest import MANIFEST, build_manifest, file_sha256, manifest_path
from srt_trainer.io import (
    DataLoadError,
    check_distinct_paths,
    iter_raw_rows,
    sidecar_path,
    write_json,
    write_text_atomic,
)


class ReportInputError(SRTUserError, ValueError):
    """A result file the report cannot read as the kind it was given as."""


@dataclass
class Source:
    """One result file read: its kind, path, sha256 and the manifest found for it (None when there is none)."""

    kind: str
    path: str
    sha256: str
    manifest: dict[str, Any] | None
    manifest_path: str | None
    notes: list[str] = field(default_factory=list)
    model: str | None = None  # the one model of a file that holds several (FastChat's judgments)


@dataclass
class Report:
    """Per model, per column, a number (with the source it came from); the sources with their manifests."""

    cells: dict[str, dict[str, Any]] = field(default_factory=lambda: defaultdict(dict))
    columns: list[str] = field(default_factory=list)
    details: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=lambda: defaultdict(dict))
    sources: list[Source] = field(default_factory=list)

    def put(self, model: str, column: str, value: Any) -> None:
        """One number; a later file's number for the same model and column replaces it (the JSON keeps both in
        ``details``)."""
        if column not in self.columns:
            self.columns.append(column)
        self.cells[model][column] = value

    def detail(self, model: str, kind: str, entry: dict[str, Any]) -> None:
        self.details[model].setdefault(kind, []).append(entry)


def find_manifest(path: Path) -> Path | None:
    """The manifest of a result file: ``<stem>.manifest.json`` (also for ``<stem>.aggregate.json`` and
    ``<stem>.summary.json``), else a ``manifest.json`` in its folder or the folder above (FastChat's layout keeps
    judgments in ``<dir>/model_judgment/``)."""
    candidates = [manifest_path(path)]
    for suffix in (".aggregate.json", ".summary.json"):
        if path.name.endswith(suffix):
            candidates.append(path.with_name(path.name[: -len(suffix)] + ".manifest.json"))
    candidates += [path.parent / "manifest.json", path.parent.parent / "manifest.json"]
    return next((c for c in candidates if c.is_file() and c != path), None)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise DataLoadError(f"{path}: not valid JSON ({e})") from None


def _source(report: Report, kind: str, path: Path, found: Path | None = None, model: str | None = None) -> Source:
    """The source ``path`` as read, with its manifest (``found``, else the one ``find_manifest`` finds)."""
    found = found or find_manifest(path)
    manifest = _read_json(found) if found else None
    src = Source(kind, str(path), file_sha256(path), manifest, str(found) if found else None, model=model)
    if manifest is None:
        src.notes.append("no manifest found beside it")
    report.sources.append(src)
    return src


def _summary_of(report: Report, kind: str, path: Path, command: str) -> tuple[dict[str, Any], Path, Source]:
    """The ``<stem>.summary.json`` beside the output of ``command`` (or ``path`` itself when it is the summary), and
    the source read."""
    summary_file = path if path.name.endswith(".summary.json") else sidecar_path(path, "summary.json")
    if not summary_file.is_file():
        raise ReportInputError(f"{path}: no {summary_file.name} beside it (is it the output of {command}?)")
    summary = _read_json(summary_file)
    if not isinstance(summary, dict):
        raise ReportInputError(f"{summary_file}: not a summary of {command} (a JSON object)")
    return summary, summary_file, _source(report, kind, path)


def _need(row: dict[str, Any], key: str, path: Path, where: str) -> Any:
    if key not in row:
        raise ReportInputError(f"{path}: {where}: missing field '{key}'")
    return row[key]


# -- each kind of result --------------------------------------------------------------------------------------


def add_pairwise(report: Report, path: Path) -> None:
    """An aggregate JSON of ``srt eval judge`` / ``aggregate`` (or a saved ``srt eval aggregate --json`` line)."""
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ReportInputError(f"{path}: not a pairwise aggregate (a JSON object with win, tie and lose)")
    for key in ("win", "tie", "lose"):
        _need(data, key, path, "the aggregate")
    src = _source(report, "pairwise", path)
    model = str(data.get("generator_a") or "model A")
    other = str(data.get("generator_b") or "model B")
    n = data.get("n", data["win"] + data["tie"] + data["lose"])
    ws = data.get("winning_score")
    report.put(model, f"pairwise vs {other} (W/T/L)", _wtl(data["win"], data["tie"], data["lose"], data.get("failed")))
    report.put(model, f"pairwise vs {other} (WS)", ws)
    entry = {k: data.get(k) for k in ("win", "tie", "lose", "failed", "winning_score", "judge", "unscored")}
    report.detail(model, "pairwise", {"against": other, "n": n, **entry, "source": src.path})


def _wtl(win: int, tie: int, loss: int, failed: int | None) -> str:
    """``W/T/L``, and how many were not counted (no readable verdict) when some were not."""
    return f"{win}/{tie}/{loss}" + (f" ({failed} failed)" if failed else "")


def mtbench_scores(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (model, judge model): the mean score of each turn and overall over the readable judgments, and the count
    of failed ones (score -1), as FastChat's ``show_result`` computes them from ``<judge>_single.jsonl``."""
    scores: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    failed: dict[tuple[str, str], int] = defaultdict(int)
    for raw in iter_raw_rows(path):
        where = f"line {raw.line}" if raw.line is not None else f"row {raw.row}"
        if raw.error is not None:
            raise DataLoadError(f"{path}: {where}: {raw.error}")
        row = raw.value
        if not isinstance(row, dict):
            raise ReportInputError(f"{path}: {where}: not an object")
        model = str(_need(row, "model", path, where))
        score = _need(row, "score", path, where)
        turn = _need(row, "turn", path, where)
        judge = row.get("judge")
        judge_model = str(judge[0]) if isinstance(judge, list) and judge else str(judge or "")
        if not isinstance(score, (int, float)) or isinstance(score, bool):
            raise ReportInputError(f"{path}: {where}, field 'score': not a number ({score!r})")
        if score == -1:
            failed[(model, judge_model)] += 1
        else:
            scores[(model, judge_model)][int(turn)].append(float(score))
    if not scores and not failed:
        raise DataLoadError(f"{path}: contains no judgments")
    out = {}
    for key in set(scores) | set(failed):
        turns = scores.get(key, {})
        every = [s for t in turns.values() for s in t]
        out[key] = {
            "turns": {t: sum(v) / len(v) for t, v in sorted(turns.items())},
            "overall": sum(every) / len(every) if every else None,
            "judged": len(every),
            "failed": failed.get(key, 0),
        }
    return out


def mtbench_manifest(judgments: Path, model: str) -> Path | None:
    """The manifest ``srt eval mtbench`` wrote for ``model`` of a FastChat judgment file: in its layout,
    ``<dir>/model_judgment/<judge>_single.jsonl`` and ``<dir>/<model>.mtbench.manifest.json``; else the file's own
    (``find_manifest``)."""
    mine = judgments.parent.parent / f"{model}.mtbench.{MANIFEST}"
    return mine if mine.is_file() else find_manifest(judgments)


def add_mtbench(report: Report, path: Path) -> None:
    """``srt eval mtbench``'s summary (``<model_id>.mtbench.summary.json``, or its output ``.mtbench.jsonl``), or
    FastChat's single judgments (one source per model in them, each with its own manifest)."""
    if path.name.endswith((".mtbench.summary.json", ".mtbench.jsonl")):
        add_mtbench_summary(report, path)
        return
    result = mtbench_scores(path)
    sources = {
        m: _source(report, "mtbench", path, mtbench_manifest(path, m), m) for m in sorted({m for m, _ in result})
    }
    judges = {judge for _, judge in result}
    for (model, judge), r in sorted(result.items()):
        label = f"MT-Bench ({judge})" if len(judges) > 1 else "MT-Bench"
        for turn, mean in r["turns"].items():
            report.put(model, f"{label} turn {turn}", mean)
        report.put(model, label, r["overall"])
        report.put(model, f"{label} scored", f"{r['judged']}/{r['judged'] + r['failed']}")
        report.detail(model, "mtbench", {"judge": judge, **r, "source": sources[model].path})


def add_mtbench_summary(report: Report, path: Path) -> None:
    """The summary of one ``srt eval mtbench`` run: its single grades (mean per turn and overall, as from its
    judgments) and its pairwise win / tie / loss against model B with the adjusted win rate (a tie half a win)."""
    summary, summary_file, src = _summary_of(report, "mtbench", path, "srt eval mtbench")
    if summary.get("benchmark") != "mt_bench":
        raise ReportInputError(f"{summary_file}: field 'benchmark': not an MT-Bench summary of srt eval mtbench")
    model = str(_need(summary, "model_id", summary_file, "the summary"))
    single, pair = summary.get("single"), summary.get("pair")
    if single:
        for turn in (1, 2):
            report.put(model, f"MT-Bench turn {turn}", single.get(f"turn_{turn}"))
        report.put(model, "MT-Bench", single.get("overall"))
        report.put(model, "MT-Bench scored", f"{single.get('scored')}/{single.get('judgments')}")
        entry = {k: single.get(k) for k in ("overall", "turn_1", "turn_2", "judgments", "scored", "failures")}
        report.detail(model, "mtbench", {"judge": summary.get("judge"), **entry, "source": src.path})
    if pair:
        other = pair.get("model_b") or "model B"
        report.put(
            model, f"MT-Bench vs {other} (W/T/L)", _wtl(pair["win"], pair["tie"], pair["loss"], pair.get("failures"))
        )
        report.put(model, f"MT-Bench vs {other} (adj. win rate)", pair.get("win_rate_adjusted"))
        keys = ("win", "tie", "loss", "n", "win_rate", "win_rate_adjusted", "judgments", "failures")
        report.detail(model, "mtbench_pair", {"against": other, **{k: pair.get(k) for k in keys}, "source": src.path})
    if not single and not pair:
        raise ReportInputError(f"{summary_file}: fields 'single' and 'pair' are both empty: the run graded nothing")


def add_alpacaeval(report: Report, path: Path) -> None:
    """The output of ``srt eval alpacaeval`` (read through its summary), or the package's ``leaderboard.csv`` (a
    folder holding one counts too)."""
    if path.is_dir():
        path = path / "leaderboard.csv"
    if path.suffix == ".csv":
        src = _source(report, "alpacaeval", path)
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if not rows or "win_rate" not in rows[0]:
            raise ReportInputError(f"{path}: not an AlpacaEval leaderboard (no win_rate column)")
        for row in rows:
            model = row.get("") or next(iter(row.values()))
            _put_alpaca(report, model, None, _float(row.get("win_rate")), _float(row.get("length_controlled_winrate")))
            report.detail(model, "alpacaeval", {**row, "source": src.path})
        return
    summary, summary_file, src = _summary_of(report, "alpacaeval", path, "srt eval alpacaeval")
    model = str(_need(summary, "generator", summary_file, "the summary"))
    win_rate = _need(summary, "win_rate", summary_file, "the summary")
    _put_alpaca(report, model, summary.get("reference"), win_rate, summary.get("length_controlled_winrate"))
    keys = ("reference", "win_rate", "standard_error", "length_controlled_winrate", "judged", "failed", "judge_model")
    report.detail(model, "alpacaeval", {k: summary.get(k) for k in keys} | {"source": src.path})


def _float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _put_alpaca(report: Report, model: str, reference: str | None, win_rate: Any, lc: Any) -> None:
    vs = f" vs {reference}" if reference else ""
    report.put(model, f"AlpacaEval win rate{vs} (%)", win_rate)
    if lc is not None:
        report.put(model, f"AlpacaEval LC win rate{vs} (%)", lc)


def _model_of_lm_eval(config: dict[str, Any]) -> str:
    args = config.get("model_args") or ""
    if isinstance(args, dict):
        parts = {str(k): str(v) for k, v in args.items()}
    else:
        parts = dict(p.split("=", 1) for p in str(args).split(",") if "=" in p)
    model = parts.get("pretrained") or str(config.get("model") or "model")
    return default_generator_name(model, parts.get("peft"))


def add_harness(report: Report, path: Path) -> None:
    """The output of ``srt eval harness`` (its summary), or a results JSON of the ``lm_eval`` command."""
    if path.suffix == ".json":
        data = _read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
            raise ReportInputError(f"{path}: not an lm_eval results file (no 'results' object)")
        src = _source(report, "harness", path)
        model = _model_of_lm_eval(data.get("config") or {})
        shots = data.get("n-shot") or {}
        tasks = {}
        for task, results in data["results"].items():
            key, value, stderr = main_metric(results)
            if value is None:  # a group's row without a score of its own
                continue
            tasks[task] = {"metric": key, "value": value, "stderr": stderr, "num_fewshot": shots.get(task)}
        average = None
    else:
        summary, summary_file, src = _summary_of(report, "harness", path, "srt eval harness")
        model = str(_need(summary, "model", summary_file, "the summary"))
        tasks = _need(summary, "tasks", summary_file, "the summary")
        average = summary.get("average") if len(tasks) > 1 else None
    for task, t in tasks.items():
        shots = t.get("num_fewshot")
        report.put(model, f"{task} ({shots}-shot)" if shots is not None else task, t.get("value"))
    if average is not None:
        report.put(model, "harness average", average)
    report.detail(model, "harness", {"tasks": tasks, "average": average, "source": src.path})


READERS = {"pairwise": add_pairwise, "mtbench": add_mtbench, "alpacaeval": add_alpacaeval, "harness": add_harness}


def gather(files: dict[str, Iterable[str]]) -> Report:
    """Read every result file, by kind (``pairwise``, ``mtbench``, ``alpacaeval``, ``harness``)."""
    report = Report()
    for kind, paths in files.items():
        for p in paths:
            path = Path(p)
            if not path.exists():
                raise FileNotFoundError(2, "No such file or directory", str(path))
            READERS[kind](report, path)
    return report


# -- writing --------------------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def _settings(values: dict[str, Any], keys: Iterable[str]) -> str:
    return ", ".join(f"{k} {values[k]}" for k in keys if values.get(k) is not None)


# how an answer file or a run's answers were generated, in that order when set
_GENERATION = ("model_name_or_path", "model", "adapter", "template", "seed", "temperature", "max_new_tokens")


def _file_lines(files: dict[str, Any], indent: str) -> list[str]:
    lines = []
    for label, entry in files.items():
        if entry and entry.get("sha256"):
            line = f"{indent}- {label}: `{entry['path']}` sha256 `{entry['sha256'][:16]}…`"
            generation = entry.get("generation")
            if generation:
                line += f" (answered by {generation.get('generator')}: {_settings(generation, _GENERATION[1:])})"
            lines.append(line)
    return lines


def _manifest_body(m: dict[str, Any], indent: str = "  ") -> list[str]:
    """A manifest's lines: the judge, dates, seeds and shots, the answers' generation, the files with their sha256,
    what it says is unknown; a pairwise aggregate's judging manifest beneath it."""
    lines = []
    judge = m.get("judge") or {}
    if judge:
        how = _settings(judge, ("temperature", "max_tokens", "seed", "max_reasks"))
        lines.append(f"{indent}- judge: {judge.get('model')} at {judge.get('host') or 'the default endpoint'}")
        lines[-1] += f" ({how})" if how else ""
    for key in ("date", "preset", "seed", "seeds", "fn_metric", "limit", "alpaca_eval_version", "rule", "settings"):
        if m.get(key) is not None:
            lines.append(f"{indent}- {key}: {m[key]}")
    if m.get("generation"):
        lines.append(f"{indent}- answers generated with: {_settings(m['generation'], _GENERATION)}")
    if m.get("tasks"):
        shots = ", ".join(f"{t['task']} {t['num_fewshot']}-shot" for t in m["tasks"])
        lines.append(f"{indent}- tasks: {shots}")
    packages = m.get("packages") or {}
    if packages:
        lines.append(f"{indent}- packages: " + ", ".join(f"{k} {v}" for k, v in packages.items() if v))
    lines += _file_lines(m.get("files") or {}, indent)
    lines += [f"{indent}- unknown: {what}" for what in m.get("unknown") or []]
    if m.get("judging"):
        lines.append(f"{indent}- judged as `{m.get('judging_manifest')}` says:")
        lines += _manifest_body(m["judging"], indent + "  ")
    return lines


def _manifest_lines(src: Source) -> list[str]:
    m = src.manifest
    model = f", model {src.model}" if src.model else ""
    lines = [f"- **{src.kind}** `{src.path}` (sha256 `{src.sha256[:16]}…`{model})"]
    if m is None:
        return [*lines, "  - no manifest found beside it: how this number was obtained is unknown"]
    return [*lines, *_manifest_body(m), f"  - manifest: `{src.manifest_path}`"]


def markdown_report(report: Report, manifest: dict[str, Any]) -> str:
    lines = ["# Evaluation report", ""]
    lines += [
        "One row per model. Pairwise: win / tie / lose of the row's model against the other, judged in both orders, "
        "and the winning score (win − lose) / n + 1 (items without readable scores: failed, not counted); MT-Bench: "
        "mean 1-10 grade per turn and overall (failed judgments left out; scored: readable of all), and win / tie / "
        "loss against model B with the adjusted win rate (a tie half a win); AlpacaEval: win rate (%) against the "
        "reference outputs; harness: lm_eval's main metric of each task (fraction) at its shot count.",
        "",
    ]
    if report.columns:
        lines.append("| model | " + " | ".join(report.columns) + " |")
        lines.append("|---|" + "---:|" * len(report.columns))
        for model, cells in report.cells.items():
            lines.append(f"| {model} | " + " | ".join(_cell(cells.get(c)) for c in report.columns) + " |")
    lines += ["", "## How these numbers were obtained", ""]
    for src in report.sources:
        lines += _manifest_lines(src)
    lines += ["", f"Report written {manifest['date']} with srt-trainer {manifest['packages'].get('srt-trainer')}."]
    return "\n".join(lines) + "\n"


@dataclass
class ReportRun:
    report: Report
    markdown: Path
    json: Path
    data: dict[str, Any]


def run_report(config: ReportArguments) -> ReportRun:
    """Gather the result files of ``config`` and write the markdown report and its JSON beside it."""
    markdown = Path(config.output)
    json_path = markdown.with_suffix(".json")
    files = {"pairwise": config.pairwise, "mtbench": config.mtbench, "alpacaeval": config.alpacaeval}
    files["harness"] = config.harness
    inputs = {f"--{kind} {p}": p for kind, paths in files.items() for p in paths}
    check_distinct_paths(inputs, {"--output": markdown, "the report's JSON": json_path})
    report = gather(files)
    manifest = build_manifest("report", packages=("lm-eval", "alpaca-eval"))
    data = {
        "models": {m: dict(cells) for m, cells in report.cells.items()},
        "columns": report.columns,
        "details": {m: dict(d) for m, d in report.details.items()},
        "sources": [asdict(s) for s in report.sources],
        "manifest": manifest,
    }
    markdown.parent.mkdir(parents=True, exist_ok=True)
    write_json(data, json_path, default=str)
    write_text_atomic(markdown_report(report, manifest), markdown)
    return ReportRun(report, markdown, json_path, data)
