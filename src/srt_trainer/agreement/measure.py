"""Agreement of two students' score outputs of the same rows: rank correlations of IFD and r-IFD, the overlap of
their top sets, and, given the rewrites' scores too, the share of rows on which the selection rule decides alike."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from srt_trainer.selection.config import SelectionArguments, SelectionInputError
from srt_trainer.selection.policy import select_rows
from srt_trainer.selection.runner import iter_scored, scored_source
from srt_trainer.selection.views import Views

STATISTICS = ("ifd", "rifd")


@dataclass
class StatisticAgreement:
    """One statistic (``ifd`` or ``rifd``) of the rows both students scored: Spearman's and Kendall's (tau-b) rank
    correlations, and the overlap of the top ``top_p`` of rows (highest IFD, lowest r-IFD: the rows each rule
    prefers) as a share of the top set's size."""

    statistic: str
    rows: int
    spearman: float | None
    kendall: float | None
    top_p: float
    top_overlap: float | None


@dataclass
class Agreement:
    """What ``srt agree`` measured: per statistic, and the decisions' agreement when the rewrites were given
    (``decisions``: rows, the share with the same branch, the share with the same kept variant or none)."""

    files: dict[str, str]
    rows: int
    statistics: list[StatisticAgreement]
    decisions: dict[str, Any] | None = None
    min_spearman: float | None = None
    passed: bool | None = None
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_statistics(a: str | Path, b: str | Path) -> dict[str, np.ndarray]:
    """IFD and r-IFD of each side (``a_ifd``, ``b_rifd``, ...; NaN where missing), the two files read side by side;
    files of different rows (count, ``row_index`` or instruction) are refused at the first row that differs."""
    values: dict[str, list[float]] = {f"{s}_{k}": [] for s in "ab" for k in STATISTICS}
    rows_b = iter_scored(b)
    n = 0
    for n, (row_a, _) in enumerate(iter_scored(a), start=1):
        got = next(rows_b, None)
        if got is None:
            raise SelectionInputError(f"{b} has {n - 1} rows, {a} more: score the same rows with both students")
        row_b = got[0]
        for key in ("row_index", "instruction", "input"):
            if row_a.get(key) != row_b.get(key):
                raise SelectionInputError(
                    f"{b} row {n}, field {key!r}: differs from {a} row {n}: score the same rows, in the same order"
                )
        for side, row, path in (("a", row_a, a), ("b", row_b, b)):
            for k in STATISTICS:
                values[f"{side}_{k}"].append(_number(row, k, f"{path} row {n}"))
    if next(rows_b, None) is not None:
        raise SelectionInputError(f"{b} has more rows than the {n} of {a}: score the same rows with both students")
    if n == 0:
        raise SelectionInputError(f"{a}: no rows to compare")
    for side, path in (("a", a), ("b", b)):
        if all(np.isnan(values[f"{side}_{k}"]).all() for k in STATISTICS):
            raise SelectionInputError(
                f"{path}: none of its {n} rows has a score ({' or '.join(map(repr, STATISTICS))}): nothing to compare"
            )
    return {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}


def _number(row: Mapping[str, Any], key: str, where: str) -> float:
    """The statistic ``key`` of a score row as a float; NaN where it is null (a row the student could not score).
    A row without the field, or with a value that is no number (a string, a bool), is refused, as ``srt select``
    refuses it: it is not a score output."""
    if key not in row:
        raise SelectionInputError(f"{where}: no field {key!r}; is it an `srt score` output?")
    value = row[key]
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SelectionInputError(f"{where}, field {key!r}: is {value!r:.60} ({type(value).__name__}), not a number")
    return float(value)


def statistic_agreement(a: np.ndarray, b: np.ndarray, statistic: str, top_p: float) -> StatisticAgreement:
    """Rank correlations and top-set overlap of one statistic over the rows where both sides have it."""
    from scipy import stats

    both = ~(np.isnan(a) | np.isnan(b))
    a, b = a[both], b[both]
    if len(a) < 2:
        return StatisticAgreement(statistic, len(a), None, None, top_p, None)
    spearman = float(stats.spearmanr(a, b).statistic)
    kendall = float(stats.kendalltau(a, b).statistic)
    k = max(1, int(len(a) * top_p))
    sign = -1 if statistic == "ifd" else 1  # the budget ranks the highest IFD first; the rule prefers low r-IFD
    top_a = set(np.argsort(sign * a, kind="stable")[:k].tolist())
    top_b = set(np.argsort(sign * b, kind="stable")[:k].tolist())
    finite = [x if math.isfinite(x) else None for x in (spearman, kendall)]
    return StatisticAgreement(statistic, len(a), finite[0], finite[1], top_p, len(top_a & top_b) / k)


def decision_agreement(
    a: Mapping[str, str], b: Mapping[str, str], selection: SelectionArguments | None = None
) -> dict[str, Any]:
    """The selection rule run on each student's four views (``a`` and ``b``: score files by view): the rows, and
    the shares of rows with the same branch and with the same kept variant (or both keeping nothing)."""
    selection = selection or SelectionArguments()
    tables = []
    for views in (a, b):
        result = select_rows(Views.of({v: scored_source(p) for v, p in views.items()}), selection, dict(views))
        assert result.table is not None
        tables.append(result.table)
    ta, tb = tables
    if len(ta) != len(tb):
        raise SelectionInputError(f"{a['ori']} and {b['ori']} hold {len(ta)} and {len(tb)} rows: not the same rows")
    n = len(ta)
    branch = sum(x == y for x, y in zip(ta.branch, tb.branch, strict=True))
    variant = sum(x == y for x, y in zip(ta.variant, tb.variant, strict=True))
    kept = [sum(v is not None for v in t.variant) for t in (ta, tb)]
    return {
        "rows": n,
        "same_branch": branch / n if n else None,
        "same_kept_variant": variant / n if n else None,
        "kept_a": kept[0],
        "kept_b": kept[1],
    }


def measure_agreement(
    a: str,
    b: str,
    top_p: float = 0.1,
    views_a: Mapping[str, str] | None = None,
    views_b: Mapping[str, str] | None = None,
    min_spearman: float | None = None,
) -> tuple[Agreement, dict[str, np.ndarray]]:
    """The agreement of two score outputs of the same rows (and of the decisions, given both sides' four views),
    checked against ``min_spearman`` when given; also the statistics read, for the plot."""
    values = read_statistics(a, b)
    stats = [statistic_agreement(values[f"a_{k}"], values[f"b_{k}"], k, top_p) for k in STATISTICS]
    decisions = decision_agreement(views_a, views_b) if views_a and views_b else None
    result = Agreement({"a": str(a), "b": str(b)}, len(values["a_ifd"]), stats, decisions, min_spearman)
    if min_spearman is not None:
        for s in stats:
            if s.spearman is None or s.spearman < min_spearman:
                result.failures.append(f"Spearman of {s.statistic} {_fmt(s.spearman)} < {min_spearman}")
        share = decisions["same_kept_variant"] if decisions else None
        if decisions and (share is None or share < min_spearman):
            result.failures.append(f"same kept variant on {_fmt(share)} of rows < {min_spearman}")
        result.passed = not result.failures
    return result, values


def _fmt(x: float | None) -> str:
    return "none" if x is None else f"{x:.3f}"


def format_agreement(result: Agreement) -> str:
    """Markdown: one line per statistic, then the decisions and the verdict."""
    lines = [
        f"agreement of {result.files['b']} with {result.files['a']} ({result.rows} rows):",
        "",
        "| statistic | rows with both | Spearman | Kendall tau-b | top overlap |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in result.statistics:
        top = f"{_fmt(s.top_overlap)} (top {s.top_p:.0%})"
        lines.append(f"| {s.statistic} | {s.rows} | {_fmt(s.spearman)} | {_fmt(s.kendall)} | {top} |")
    d = result.decisions
    if d:
        lines += [
            "",
            f"decisions (paper rule): same branch on {_fmt(d['same_branch'])} of {d['rows']} rows, same kept variant "
            f"(or none) on {_fmt(d['same_kept_variant'])}; kept {d['kept_a']} (A) and {d['kept_b']} (B)",
        ]
    if result.passed is not None:
        verdict = "passed" if result.passed else "failed: " + "; ".join(result.failures)
        lines += ["", f"agreement threshold {result.min_spearman}: {verdict}"]
    return "\n".join(lines)


def plot_agreement(values: Mapping[str, np.ndarray], path: str | Path, labels: tuple[str, str] = ("A", "B")) -> Path:
    """Scatter plots of IFD and r-IFD, student A against student B, with the diagonal."""
    from srt_trainer.plotting import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    for ax, k, name in zip(axes, STATISTICS, ("IFD", "r-IFD"), strict=True):
        a, b = values[f"a_{k}"], values[f"b_{k}"]
        both = ~(np.isnan(a) | np.isnan(b))
        size = max(3.0, min(30.0, 3000 / max(1, int(both.sum()))))  # visible for a sample, not a blot for 1M rows
        ax.scatter(a[both], b[both], s=size, alpha=0.5, linewidths=0)
        if both.any():
            lo, hi = float(min(a[both].min(), b[both].min())), float(max(a[both].max(), b[both].max()))
            ax.plot([lo, hi], [lo, hi], color="grey", linewidth=0.8)
        ax.set_xlabel(f"{name}, {labels[0]}")
        ax.set_ylabel(f"{name}, {labels[1]}")
        ax.set_title(f"{name} ({int(both.sum())} rows)")
    return save_figure(fig, path)
