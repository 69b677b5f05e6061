"""MT-Bench scores from judgment rows, counted as FastChat's ``show_result`` counts them, and the chart.

Single grading: judgments whose score is -1 (no readable rating) are left out; the mean per turn is the mean of a
model's scores of that turn, the overall mean that of all its scores (both turns together), and each category's
the same over its questions. Pairwise grading: a pair whose verdict is unreadable in either order is left out; of the
others, a pair is a win only when both orders name the same model, a tie otherwise; the win rate is wins over
counted pairs, the adjusted win rate counts a tie as half a win.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from srt_trainer.plotting import pyplot, save_figure

TURNS = (1, 2)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _means(rows: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    scores = [r["score"] for r in rows if r["score"] != -1]
    per_turn = {f"turn_{t}": _mean([r["score"] for r in rows if r["score"] != -1 and r["turn"] == t]) for t in TURNS}
    return {"overall": _mean(scores), **per_turn}


def single_scores(rows: Sequence[Mapping[str, Any]], categories: Mapping[str, str]) -> dict[str, Any]:
    """Means overall, per turn and per category (in the order categories first occur in ``categories``, question id
    as text → category) of one model's single-grading judgment rows, with the counts of judgments and of those
    left out for want of a rating."""
    per_category = {}
    for category in dict.fromkeys(categories.values()):
        of_category = [r for r in rows if categories.get(str(r["question_id"])) == category]
        if of_category:
            per_category[category] = _means(of_category)
    scored = sum(r["score"] != -1 for r in rows)
    return {**_means(rows), "per_category": per_category, "judgments": len(rows), "scored": scored}


def _tally(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    win = loss = tie = 0
    for r in rows:
        if r["g1_winner"] == "tie" or r["g1_winner"] != r["g2_winner"]:
            tie += 1
        elif r["g1_winner"] == "model_1":
            win += 1
        else:
            loss += 1
    n = win + loss + tie
    return {
        "win": win,
        "loss": loss,
        "tie": tie,
        "n": n,
        "win_rate": win / n if n else None,
        "loss_rate": loss / n if n else None,
        "win_rate_adjusted": (win + 0.5 * tie) / n if n else None,
    }


def pair_tally(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Win / loss / tie of ``model_1`` against ``model_2`` over pairwise judgment rows, overall and per turn."""
    counted = [r for r in rows if r["g1_winner"] != "error" and r["g2_winner"] != "error"]
    per_turn = {str(t): _tally([r for r in counted if r["turn"] == t]) for t in TURNS}
    return {**_tally(counted), "per_turn": per_turn, "judgments": len(rows)}


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def format_report(summary: Mapping[str, Any]) -> str:
    """The console's lines: the single-grading table (overall, per turn, per category) and the pairwise tally."""
    lines = []
    single = summary.get("single")
    if single:
        lines.append(f"{'category':<14} {'overall':>8} {'turn 1':>8} {'turn 2':>8}")
        for name, m in [("all", single), *single["per_category"].items()]:
            lines.append(f"{name:<14} {_fmt(m['overall']):>8} {_fmt(m['turn_1']):>8} {_fmt(m['turn_2']):>8}")
    pair = summary.get("pair")
    if pair:
        lines.append(
            f"against {pair['model_b']}: win {pair['win']} tie {pair['tie']} loss {pair['loss']} of {pair['n']} "
            f"(win rate {_fmt(pair['win_rate'])}, adjusted {_fmt(pair['win_rate_adjusted'])})"
        )
    return "\n".join(lines)


def plot_mtbench(summary: Mapping[str, Any], path: str | Path) -> Path:
    """Mean score per category and turn (bars, 1-10) and, with pairwise grading, the win / tie / loss per turn."""
    plt = pyplot()
    single, pair = summary.get("single"), summary.get("pair")
    panels = [p for p in (single, pair) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    axes = list(axes[0])
    title = f"MT-Bench: {summary['model_id']} (judge {summary['judge']})"
    if single:
        ax = axes.pop(0)
        names = ["all", *single["per_category"]]
        rows = [single, *single["per_category"].values()]
        y = range(len(names))
        for k, turn in enumerate(TURNS):
            values = [m[f"turn_{turn}"] or 0 for m in rows]
            ax.barh([i + (k - 0.5) * 0.4 for i in y], values, height=0.4, label=f"turn {turn}")
        ax.set_yticks(list(y), names)
        ax.invert_yaxis()
        ax.set_xlim(0, 10)
        ax.set_xlabel("mean score (1-10)")
        ax.legend(loc="lower right")
        ax.set_title(f"single grading: {_fmt(single['overall'])} overall")
    if pair:
        ax = axes.pop(0)
        labels = ["all", *(f"turn {t}" for t in TURNS)]
        tallies = [pair, *(pair["per_turn"][str(t)] for t in TURNS)]
        left = [0.0] * len(labels)
        for key, color in (("win", "tab:green"), ("tie", "tab:gray"), ("loss", "tab:red")):
            shares = [t[key] / t["n"] if t["n"] else 0 for t in tallies]
            ax.barh(labels, shares, left=left, color=color, label=key)
            left = [a + b for a, b in zip(left, shares, strict=True)]
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of counted pairs")
        ax.legend(loc="lower right")
        ax.set_title(f"against {pair['model_b']}")
    fig.suptitle(title)
    return save_figure(fig, path)
