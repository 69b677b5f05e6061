"""What a scoring run found: a printed summary and a histogram PNG of IFD and r-IFD."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from srt_trainer.plotting import pyplot, save_figure

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


# the parts of a reason that differ from row to row: a token count ("reverse prompt is 276 tokens") and a turn
_COUNT = re.compile(r"\b(\d+) tokens\b")
_TURN = re.compile(r"\(turn \d+\)")


def reason_kind(reason: str) -> str:
    """A reason without what varies from row to row: ``reverse prompt is N tokens: ...`` for ``... is 276 tokens:
    ...``, ``(turn N)`` for ``(turn 2)``; each row's own reason stays in its ``score_error`` column."""
    return _TURN.sub("(turn N)", _COUNT.sub("N tokens", reason))


class _Reasons:
    """Counts of reasons by kind, and the smallest and largest token count each kind was seen with."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.ranges: dict[str, list[int]] = {}

    def add(self, reason: str) -> None:
        kind = reason_kind(reason)
        self.counts[kind] += 1
        found = _COUNT.search(reason)
        if found is not None:
            n = int(found.group(1))
            low_high = self.ranges.setdefault(kind, [n, n])
            low_high[0], low_high[1] = min(low_high[0], n), max(low_high[1], n)


def _values(rows: Iterable[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.array([v for r in rows if (v := r.get(key)) is not None], dtype=float)


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts, IFD / r-IFD quantiles (each over the rows that have it), the share of misaligned pairs (IFD > 1),
    rows without statistics, and rows with only one of the two statistics. Reasons are grouped by kind (see
    ``reason_kind``), most common first, with the range of the token counts a kind was seen with
    (``token_counts``): a real file has thousands of distinct token counts, not thousands of reasons."""
    ifd: list[float] = []
    rifd: list[float] = []
    scored = only_input = 0
    reasons = {"errors": _Reasons(), "ifd_errors": _Reasons(), "rifd_errors": _Reasons()}
    for r in rows:
        i, ri = r.get("ifd"), r.get("rifd")
        if i is not None:
            ifd.append(i)
        if ri is not None:
            rifd.append(ri)
        if i is not None or ri is not None:
            scored += 1
        if r.get("score_error"):
            reasons["errors"].add(r["score_error"])
        else:  # reasons of the rows that have one statistic but not the other
            for name in ("ifd", "rifd"):
                if r.get(f"{name}_error"):
                    reasons[f"{name}_errors"].add(r[f"{name}_error"])
        if r.get("input") and not (r.get("instruction") or "").strip():
            only_input += 1
    summary: dict[str, Any] = {
        "rows": len(rows),
        "scored": scored,
        "without_statistics": len(rows) - scored,
        "errors": dict(reasons["errors"].counts.most_common()),
        "with_ifd": len(ifd),
        "with_rifd": len(rifd),
        "ifd_errors": dict(reasons["ifd_errors"].counts.most_common()),
        "rifd_errors": dict(reasons["rifd_errors"].counts.most_common()),
        "token_counts": {k: v for group in reasons.values() for k, v in group.ranges.items()},
        "only_input": only_input,
    }
    for name, values in (("ifd", np.array(ifd, dtype=float)), ("rifd", np.array(rifd, dtype=float))):
        if len(values):
            summary[f"{name}_quantiles"] = {str(q): float(np.quantile(values, q)) for q in QUANTILES}
            summary[f"share_{name}_above_1"] = float((values > 1).mean())
    return summary


def _reason_line(n: int, reason: str, summary: Mapping[str, Any], prefix: str = "") -> str:
    low_high = summary.get("token_counts", {}).get(reason)
    seen = ""
    if low_high:
        seen = f" (N = {low_high[0]})" if low_high[0] == low_high[1] else f" (N from {low_high[0]} to {low_high[1]})"
    return f"  {n} × {prefix}{reason}{seen}"


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"scored {summary['scored']} of {summary['rows']} rows; {summary['without_statistics']} without statistics"
    ]
    for reason, n in summary["errors"].items():
        lines.append(_reason_line(n, reason, summary))
    for name, label in (("ifd", "IFD"), ("rifd", "r-IFD")):
        for reason, n in summary.get(f"{name}_errors", {}).items():
            lines.append(_reason_line(n, reason, summary, f"no {label} only: "))
    if summary["only_input"]:
        lines.append(f"  {summary['only_input']} row(s) with only an input (scored with an empty instruction)")
    names = [n for n in ("ifd", "rifd") if f"{n}_quantiles" in summary]
    if names:
        head = "          " + "".join(f"{'q' + q:>9}" for q in summary[f"{names[0]}_quantiles"])
        lines.append(head)
        for name in names:
            qs = summary[f"{name}_quantiles"]
            lines.append(f"  {name:<8}" + "".join(f"{v:>9.4f}" for v in qs.values()))
        shares = [
            f"{label}: {100 * summary[f'share_{n}_above_1']:.1f}%"
            for n, label in (("ifd", "IFD > 1 (the instruction does not help)"), ("rifd", "r-IFD > 1"))
            if n in names
        ]
        lines.append("  " + "; ".join(shares))
    return "\n".join(lines)


def plot_histograms(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """IFD and r-IFD histograms side by side, with the selection threshold 1 marked."""
    if not any(r.get(k) is not None for r in rows for k in ("ifd", "rifd")):
        return None
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, label in ((axes[0], "ifd", "IFD = ppl(y|x) / ppl(y)"), (axes[1], "rifd", "r-IFD = ppl(x|y) / ppl(x)")):
        values = _values(rows, key)
        if not len(values):
            continue
        ax.hist(values, bins=min(60, max(10, len(values) // 5)), color="#4c72b0", alpha=0.85)
        ax.axvline(1.0, color="#c44e52", linestyle="--", linewidth=1, label="1 (threshold)")
        ax.set_xlabel(label)
        ax.set_ylabel("samples")
        ax.legend(frameon=False)
    fig.suptitle(title or f"Student statistics of {len(rows)} samples")
    return save_figure(fig, path)
