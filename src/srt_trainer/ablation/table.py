"""The ablation's table, built from the files the arms wrote (so that it can be rebuilt, and checked, from them):
one row per arm, one column per metric, each number with its interval (``ablation/uncertainty.py``).

- ``rows``: the rows the arm trained on (its selection's output);
- ``held_out`` and ``held_out_vs_ori``: the mean over held-out pairs of the arm's response loss s(y|x)
  (``<arm>/held_out.jsonl``; lower is better), and its paired difference to ``ori`` over the items both scored;
- ``winning_score``: the arm against ``ori`` on the test sets (``<arm>/reviews.jsonl``, one record per item with
  its ``result``: win / tie / lose, or none when the judge's scores could not be read in both orders), with win /
  tie / lose and the failures;
- ``mtbench`` and ``mtbench_vs_ori``: the mean MT-Bench grade over questions (each question the mean of its graded
  turns, from ``mtbench/<arm>.mtbench.jsonl``), and its paired difference to ``ori`` over the questions both have;
- ``harness``: each task's main metric with lm_eval's standard error, and its difference to ``ori``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from srt_trainer.ablation.config import REFERENCE
from srt_trainer.ablation.held_out import HELD_OUT, HeldOutItems
from srt_trainer.ablation.uncertainty import (
    Estimate,
    bootstrap_mean,
    normal_interval,
    paired_difference,
    winning_score,
)
from srt_trainer.io import read_rows
from srt_trainer.plotting import pyplot, save_figure

REVIEWS = "reviews.jsonl"
HARNESS = "harness.jsonl"
MTBENCH_DIR = "mtbench"


@dataclass(frozen=True)
class Bootstrap:
    """The settings of every interval."""

    confidence_level: float = 0.95
    n_resamples: int = 10_000
    seed: int = 0


@dataclass
class ArmRow:
    """One arm's numbers."""

    arm: str
    rows: int | None = None
    train_steps: int | None = None
    held_out: Estimate | None = None
    held_out_vs_ori: Estimate | None = None
    winning_score: Estimate | None = None
    counts: dict[str, int] = field(default_factory=dict)  # win, tie, lose, failed
    mtbench: Estimate | None = None
    mtbench_vs_ori: Estimate | None = None
    harness: dict[str, Estimate] = field(default_factory=dict)
    harness_vs_ori: dict[str, Estimate] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        def est(e: Estimate | None) -> dict[str, Any] | None:
            return None if e is None else e.to_dict()

        return {
            "arm": self.arm,
            "rows": self.rows,
            "train_steps": self.train_steps,
            "held_out_loss": est(self.held_out),
            "held_out_loss_vs_ori": est(self.held_out_vs_ori),
            "winning_score": est(self.winning_score),
            "counts": self.counts,
            "mtbench": est(self.mtbench),
            "mtbench_vs_ori": est(self.mtbench_vs_ori),
            "harness": {k: est(v) for k, v in self.harness.items()},
            "harness_vs_ori": {k: est(v) for k, v in self.harness_vs_ori.items()},
        }


def item_outcomes(reviews: str | Path) -> tuple[list[str], int]:
    """The outcome of every judged item of a reviews file (``win``, ``tie``, ``lose``; the arm is model A) and the
    number of items without one (failed)."""
    outcomes, failed = [], 0
    for record in read_rows(reviews):
        result = record.get("result")
        if result in ("win", "tie", "lose"):
            outcomes.append(result)
        else:
            failed += 1
    return outcomes, failed


def question_scores(turns: str | Path) -> dict[Any, float]:
    """Each MT-Bench question's mean grade over its graded turns (a turn without a readable grade is left out, as
    FastChat leaves out a score of -1), from a ``<model_id>.mtbench.jsonl``."""
    by_question: dict[Any, list[float]] = defaultdict(list)
    for row in read_rows(turns):
        if row.get("score") is not None:
            by_question[row["question_id"]].append(float(row["score"]))
    return {q: sum(s) / len(s) for q, s in by_question.items()}


def harness_results(path: str | Path) -> dict[str, tuple[float | None, float | None]]:
    """``task/metric`` → (value, standard error) from an ``srt eval harness`` output."""
    out = {}
    for row in read_rows(path):
        value = row.get("value")
        stderr = row.get("stderr")
        out[f"{row['task']}/{row['metric']}"] = (
            None if value is None else float(value),
            None if stderr is None or (isinstance(stderr, float) and math.isnan(stderr)) else float(stderr),
        )
    return out


def build_table(
    arms_dir: str | Path,
    arms: Sequence[str],
    rows: Mapping[str, int],
    steps: Mapping[str, int] | None = None,
    mtbench_dir: str | Path | None = None,
    bootstrap: Bootstrap = Bootstrap(),
    base: str | None = None,
) -> list[ArmRow]:
    """The table of ``arms`` from the files under ``arms_dir`` (``<arm>/held_out.jsonl``, ``<arm>/reviews.jsonl``,
    ``<arm>/harness.jsonl``) and ``mtbench_dir`` (``<arm>.mtbench.jsonl``); a metric whose files are missing is
    left empty. ``base``: a folder of ``arms_dir`` with the untuned student's held-out losses, the table's last row
    (no arm: nothing trained, nothing compared)."""
    arms_dir = Path(arms_dir)
    b = bootstrap
    table = []
    ref_questions: dict[Any, float] | None = None
    ref_harness: dict[str, tuple[float | None, float | None]] = {}
    ref_held_out: dict[int, float] | None = None
    for arm in arms:
        row = ArmRow(arm, rows.get(arm), (steps or {}).get(arm))
        held_out = arms_dir / arm / HELD_OUT
        if held_out.is_file():
            losses = HeldOutItems.read(held_out).losses
            row.held_out = bootstrap_mean(list(losses.values()), b.confidence_level, b.n_resamples, b.seed)
            if arm == REFERENCE:
                ref_held_out = losses
            elif ref_held_out is not None:
                row.held_out_vs_ori = _paired_vs_ori(losses, ref_held_out, b)
        reviews = arms_dir / arm / REVIEWS
        if arm != REFERENCE and reviews.is_file():
            outcomes, failed = item_outcomes(reviews)
            row.winning_score = winning_score(outcomes, b.confidence_level, b.n_resamples, b.seed)
            row.counts = {k: outcomes.count(k) for k in ("win", "tie", "lose")} | {"failed": failed}
        turns = Path(mtbench_dir) / f"{arm}.mtbench.jsonl" if mtbench_dir else None
        if turns is not None and turns.is_file():
            scores = question_scores(turns)
            row.mtbench = bootstrap_mean(list(scores.values()), b.confidence_level, b.n_resamples, b.seed)
            if arm == REFERENCE:
                ref_questions = scores
            elif ref_questions is not None:
                row.mtbench_vs_ori = _paired_vs_ori(scores, ref_questions, b)
        harness = arms_dir / arm / HARNESS
        if harness.is_file():
            results = harness_results(harness)
            for key, (value, se) in results.items():
                row.harness[key] = normal_interval(value, se, b.confidence_level)
                if arm == REFERENCE:
                    ref_harness[key] = (value, se)
                elif key in ref_harness and value is not None and ref_harness[key][0] is not None:
                    ref_value, ref_se = ref_harness[key]
                    both = None if se is None or ref_se is None else math.hypot(se, ref_se)
                    row.harness_vs_ori[key] = normal_interval(
                        value - ref_value, both, b.confidence_level, reference=0.0
                    )
        table.append(row)
    if base is not None and (arms_dir / base / HELD_OUT).is_file():
        losses = HeldOutItems.read(arms_dir / base / HELD_OUT).losses
        row = ArmRow(base, held_out=bootstrap_mean(list(losses.values()), b.confidence_level, b.n_resamples, b.seed))
        if ref_held_out is not None:
            row.held_out_vs_ori = _paired_vs_ori(losses, ref_held_out, b)
        table.append(row)
    return table


def _paired_vs_ori(values: Mapping[Any, float], ori: Mapping[Any, float], b: Bootstrap) -> Estimate:
    """The paired difference of per-item values (held-out losses, MT-Bench grades) to ori's, over the items both
    have, in the order of ``values``."""
    common = [i for i in values if i in ori]
    return paired_difference(
        [values[i] for i in common], [ori[i] for i in common], b.confidence_level, b.n_resamples, b.seed
    )


def format_table(table: Sequence[ArmRow], confidence_level: float = 0.95) -> str:
    """The table in markdown: every number with its interval; ``*`` marks a difference to ``ori`` larger than the
    uncertainty (a winning score whose interval excludes 1.0, a difference whose interval excludes 0)."""
    level = f"{confidence_level:.0%}"
    has_mt = any(r.mtbench is not None for r in table)
    has_ho = any(r.held_out is not None for r in table)
    judged = any(r.counts for r in table)  # no pairwise columns when no test set was judged
    tasks = sorted({k for r in table for k in r.harness})
    header = ["arm", "rows", "steps"]
    if has_ho:
        header += [f"held-out loss ↓ [{level}]", f"held-out loss − ori [{level}]"]
    if judged:
        header += [f"winning score vs ori [{level}]", "win / tie / lose (failed)"]
    if has_mt:
        header += [f"MT-Bench [{level}]", f"MT-Bench − ori [{level}]"]
    for t in tasks:
        header += [f"{t} [{level}]", f"{t} − ori [{level}]"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in table:
        if r.arm == REFERENCE:
            ws, wtl = "1 (reference)", "-"
        else:
            ws = r.winning_score.format() if r.winning_score else "-"
            c = r.counts
            wtl = f"{c['win']} / {c['tie']} / {c['lose']} ({c['failed']})" if c else "-"
        cells = [r.arm, _str(r.rows), _str(r.train_steps)]
        if has_ho:
            cells += [r.held_out.format(3) if r.held_out else "-"]
            cells += [r.held_out_vs_ori.format(3) if r.held_out_vs_ori else "-"]
        cells += [ws, wtl] if judged else []
        if has_mt:
            cells += [r.mtbench.format() if r.mtbench else "-"]
            cells += ["-" if r.arm == REFERENCE or r.mtbench_vs_ori is None else r.mtbench_vs_ori.format()]
        for t in tasks:
            cells += [r.harness[t].format(3) if t in r.harness else "-"]
            cells += [r.harness_vs_ori[t].format(3) if t in r.harness_vs_ori else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _str(value: Any) -> str:
    return "-" if value is None else str(value)


@dataclass(frozen=True)
class ChartPanel:
    """One panel of the chart: each arm's estimate, the line that means "as good as ori", the arms whose difference
    to ori is larger than the uncertainty, and the half-width of the noise-floor band around that line."""

    title: str
    estimates: dict[str, Estimate]
    line: float | None
    marked: dict[str, bool]
    band: float | None = None


def _marks(diffs: Mapping[str, Estimate | None]) -> dict[str, bool]:
    return {arm: bool(d is not None and d.excludes) for arm, d in diffs.items()}


def _valid(estimates: Mapping[str, Estimate | None]) -> dict[str, Estimate]:
    return {a: e for a, e in estimates.items() if e is not None and e.value is not None}


def _floor(estimates: Mapping[str, Estimate], line: float) -> float | None:
    """How far ``random`` lies from ori's line: the noise floor drawn as a band (none without a random arm)."""
    r = estimates.get("random")
    return None if r is None else abs(r.value - line)


def _metric_panel(
    title: str, lower_is_better: bool, values: Mapping[str, Estimate | None], diffs: Mapping[str, Estimate | None]
) -> ChartPanel | None:
    """The arms' paired differences to ori where any arm has one (the number to read: an arm's own interval also
    holds the spread over test items that every arm shares); otherwise the values themselves."""
    direction = "lower" if lower_is_better else "higher"
    paired = _valid({a: d for a, d in diffs.items() if a != REFERENCE})
    if paired:
        return ChartPanel(f"{title} − ori, {direction} is better", paired, 0.0, _marks(diffs), _floor(paired, 0.0))
    own = _valid(values)
    if not own:
        return None
    ref = own[REFERENCE].value if REFERENCE in own else None
    return ChartPanel(f"{title}, {direction} is better", own, ref, {})


def chart_panels(table: Sequence[ArmRow]) -> list[ChartPanel]:
    """The chart's panels, one per metric: each arm's difference to ori with its paired interval (the arm's own
    number where nothing was compared), and the noise-floor band where a ``random`` arm ran."""
    panels = [
        _metric_panel(
            "held-out loss s(y|x)",
            True,
            {r.arm: r.held_out for r in table},
            {r.arm: r.held_out_vs_ori for r in table},
        )
    ]
    ws = _valid({r.arm: r.winning_score for r in table})
    if ws:
        panels.append(ChartPanel("winning score vs ori, higher is better", ws, 1.0, _marks(ws), _floor(ws, 1.0)))
    panels.append(
        _metric_panel(
            "MT-Bench mean grade", False, {r.arm: r.mtbench for r in table}, {r.arm: r.mtbench_vs_ori for r in table}
        )
    )
    for task in sorted({k for r in table for k in r.harness}):
        panels.append(
            _metric_panel(
                task,
                False,
                {r.arm: r.harness.get(task) for r in table},
                {r.arm: r.harness_vs_ori.get(task) for r in table},
            )
        )
    return [p for p in panels if p is not None]


def plot_table(table: Sequence[ArmRow], path: str | Path, confidence_level: float = 0.95) -> Path:
    """The chart of ``chart_panels``: red where the difference to ori is larger than the uncertainty, a dashed line
    at "as good as ori", and a grey band as wide as ``random``'s distance from it (what the draw of rows alone
    does)."""
    plt = pyplot()
    drawn = chart_panels(table)
    fig, axes = plt.subplots(1, max(len(drawn), 1), figsize=(4.4 * max(len(drawn), 1), 3.8), squeeze=False)
    for ax, panel in zip(axes[0], drawn, strict=False):
        _draw(ax, panel)
        ax.set_title(f"{panel.title}\n({confidence_level:.0%} intervals)", fontsize=9)
    if not drawn:
        axes[0][0].text(0.5, 0.5, "no evaluation", ha="center", va="center")
    return save_figure(fig, path)


def _draw(ax: Any, panel: ChartPanel) -> None:
    names = list(panel.estimates)
    values = [panel.estimates[a].value for a in names]
    low = [v - e.low if e.low is not None else 0.0 for v, e in zip(values, panel.estimates.values(), strict=True)]
    high = [e.high - v if e.high is not None else 0.0 for v, e in zip(values, panel.estimates.values(), strict=True)]
    colors = ["#c44e52" if panel.marked.get(a) else "#4c72b0" for a in names]
    if panel.band and panel.line is not None:
        ax.axhspan(panel.line - panel.band, panel.line + panel.band, color="#dddddd", zorder=0, label="random − ori")
        ax.legend(loc="best", fontsize=7, frameon=False)
    ax.errorbar(range(len(names)), values, yerr=[low, high], fmt="none", ecolor="#555555", capsize=4)
    ax.scatter(range(len(names)), values, c=colors, zorder=3)
    if panel.line is not None:
        ax.axhline(panel.line, color="#999999", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right")
