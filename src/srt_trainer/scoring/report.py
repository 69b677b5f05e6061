"""What a scoring run found: a printed summary and a histogram PNG of IFD and r-IFD."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts, IFD / r-IFD quantiles, the share of misaligned pairs (IFD > 1), and rows without statistics."""
    scored = [r for r in rows if r.get("ifd") is not None]
    ifd = np.array([r["ifd"] for r in scored], dtype=float)
    rifd = np.array([r["rifd"] for r in scored], dtype=float)
    summary: dict[str, Any] = {
        "rows": len(rows),
        "scored": len(scored),
        "without_statistics": len(rows) - len(scored),
        "errors": dict(Counter(r["score_error"] for r in rows if r.get("score_error"))),
        "only_input": sum(1 for r in rows if not (r.get("instruction") or "").strip() and (r.get("input") or "")),
    }
    if scored:
        summary["ifd_quantiles"] = {str(q): float(np.quantile(ifd, q)) for q in QUANTILES}
        summary["rifd_quantiles"] = {str(q): float(np.quantile(rifd, q)) for q in QUANTILES}
        summary["share_ifd_above_1"] = float((ifd > 1).mean())
        summary["share_rifd_above_1"] = float((rifd > 1).mean())
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"scored {summary['scored']} of {summary['rows']} rows; {summary['without_statistics']} without statistics"
    ]
    for reason, n in summary["errors"].items():
        lines.append(f"  {n} × {reason}")
    if summary["only_input"]:
        lines.append(f"  {summary['only_input']} row(s) with only an input (scored with an empty instruction)")
    if summary["scored"]:
        head = "          " + "".join(f"{'q' + q:>9}" for q in summary["ifd_quantiles"])
        lines.append(head)
        for name in ("ifd", "rifd"):
            qs = summary[f"{name}_quantiles"]
            lines.append(f"  {name:<8}" + "".join(f"{v:>9.4f}" for v in qs.values()))
        lines.append(
            f"  IFD > 1 (the instruction does not help): {100 * summary['share_ifd_above_1']:.1f}%; "
            f"r-IFD > 1: {100 * summary['share_rifd_above_1']:.1f}%"
        )
    return "\n".join(lines)


def plot_histograms(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """IFD and r-IFD histograms side by side, with the selection threshold 1 marked."""
    scored = [r for r in rows if r.get("ifd") is not None]
    if not scored:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, label in ((axes[0], "ifd", "IFD = ppl(y|x) / ppl(y)"), (axes[1], "rifd", "r-IFD = ppl(x|y) / ppl(x)")):
        values = np.array([r[key] for r in scored], dtype=float)
        ax.hist(values, bins=min(60, max(10, len(values) // 5)), color="#4c72b0", alpha=0.85)
        ax.axvline(1.0, color="#c44e52", linestyle="--", linewidth=1, label="1 (threshold)")
        ax.set_xlabel(label)
        ax.set_ylabel("samples")
        ax.legend(frameon=False)
    fig.suptitle(title or f"Student statistics of {len(scored)} samples")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
