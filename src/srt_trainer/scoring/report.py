"""What a scoring run found: a printed summary and a histogram PNG of IFD and r-IFD."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from srt_trainer.plotting import pyplot, save_figure

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def _values(rows: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([r[key] for r in rows if r.get(key) is not None], dtype=float)


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts, IFD / r-IFD quantiles (each over the rows that have it), the share of misaligned pairs (IFD > 1),
    rows without statistics, and rows with only one of the two statistics."""
    ifd, rifd = _values(rows, "ifd"), _values(rows, "rifd")
    scored = sum(1 for r in rows if r.get("ifd") is not None or r.get("rifd") is not None)
    summary: dict[str, Any] = {
        "rows": len(rows),
        "scored": scored,
        "without_statistics": len(rows) - scored,
        "errors": dict(Counter(r["score_error"] for r in rows if r.get("score_error"))),
        "with_ifd": len(ifd),
        "with_rifd": len(rifd),
        # reasons of the rows that have one statistic but not the other
        "ifd_errors": dict(Counter(r["ifd_error"] for r in rows if r.get("ifd_error") and not r.get("score_error"))),
        "rifd_errors": dict(Counter(r["rifd_error"] for r in rows if r.get("rifd_error") and not r.get("score_error"))),
        "only_input": sum(1 for r in rows if not (r.get("instruction") or "").strip() and (r.get("input") or "")),
    }
    for name, values in (("ifd", ifd), ("rifd", rifd)):
        if len(values):
            summary[f"{name}_quantiles"] = {str(q): float(np.quantile(values, q)) for q in QUANTILES}
            summary[f"share_{name}_above_1"] = float((values > 1).mean())
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"scored {summary['scored']} of {summary['rows']} rows; {summary['without_statistics']} without statistics"
    ]
    for reason, n in summary["errors"].items():
        lines.append(f"  {n} × {reason}")
    for name, label in (("ifd", "IFD"), ("rifd", "r-IFD")):
        for reason, n in summary.get(f"{name}_errors", {}).items():
            lines.append(f"  {n} × no {label} only: {reason}")
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
