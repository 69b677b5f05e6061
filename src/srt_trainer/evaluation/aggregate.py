"""Pairwise reviews → win / tie / lose, the winning score, a stacked bar chart and a markdown summary.

The rule of the paper family (each item judged twice, answers swapped, to cancel position bias): with d1 the
sign of (score of A − score of B) in the first review (A is Assistant 1) and d2 the same sign in the reverse
review (there B is Assistant 1, so A's score is the *second* one), the item is a win if d1 + d2 > 0, a loss if
d1 + d2 < 0 and a tie otherwise. Winning score = (win − lose) / n + 1, over the n items judged.

A review whose scores cannot be read is a failure by default: reported, never counted (in particular never as a
tie). ``unscored="tie"`` counts such an order as a draw (d = 0) instead, as the released aggregation does; the
items so counted are tallied as ``unscored_draws``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from srt_trainer.errors import SRTUserError
from srt_trainer.evaluation.config import UNSCORED_CHOICES
from srt_trainer.evaluation.manifest import build_manifest, file_entry, manifest_path
from srt_trainer.evaluation.scores import parse_scores
from srt_trainer.io import (
    DataLoadError,
    check_distinct_paths,
    iter_raw_rows,
    sidecar_path,
    sniff_format,
    write_json,
    write_text_atomic,
)
from srt_trainer.plotting import pyplot, save_figure

OUTCOMES = ("win", "tie", "lose")
OVERALL = "overall"
COLORS = {"win": "#55a868", "tie": "#b0b0b0", "lose": "#c44e52"}


# The release parses an unreadable review as [-1, -1]: equal scores, a draw in that order.
_DRAW = (-1.0, -1.0)


class AggregateConfigError(SRTUserError, ValueError):
    """An aggregation option the rule does not know."""


def sign(x: float) -> int:
    return (x > 0) - (x < 0)


@dataclass(frozen=True)
class ItemOutcome:
    """One item's verdict: ``result`` is win / tie / lose, or ``failed`` with a ``reason``."""

    result: str
    d1: int | None = None
    d2: int | None = None
    scores: tuple[float, float] | None = None  # first review: (A, B)
    scores_reverse: tuple[float, float] | None = None  # reverse review as written: (B, A)
    reason: str | None = None
    drawn: bool = False  # an unreadable order was counted as a draw (unscored="tie")


def outcome_from_scores(scores: tuple[float, float], scores_reverse: tuple[float, float]) -> ItemOutcome:
    """The rule, from the two score pairs as the judge wrote them (Assistant 1 first in each)."""
    d1 = sign(scores[0] - scores[1])
    d2 = sign(scores_reverse[1] - scores_reverse[0])  # reverse review: Assistant 1 is B
    total = d1 + d2
    result = "win" if total > 0 else "lose" if total < 0 else "tie"
    return ItemOutcome(result, d1, d2, scores, scores_reverse)


def check_unscored(unscored: str) -> None:
    if unscored not in UNSCORED_CHOICES:
        raise AggregateConfigError(f"--unscored must be one of {', '.join(UNSCORED_CHOICES)}, not {unscored!r}")


def judge_item(review: str | None, review_reverse: str | None, unscored: str = "fail") -> ItemOutcome:
    """Verdict of one item from the judge's two raw reviews. An order without readable scores fails the item, or
    with ``unscored="tie"`` counts as a draw (both scores alike, as the release's [-1, -1] placeholder is)."""
    check_unscored(unscored)
    scores, scores_reverse = parse_scores(review), parse_scores(review_reverse)
    missing = [name for name, s in (("review", scores), ("review_reverse", scores_reverse)) if s is None]
    if missing:

        def why(name: str, text: str | None) -> str:
            return f"{name}: no review" if not text else f"{name}: no score pair on its first line"

        texts = {"review": review, "review_reverse": review_reverse}
        reason = "; ".join(why(n, texts[n]) for n in missing)
        if unscored == "fail":
            return ItemOutcome("failed", scores=scores, scores_reverse=scores_reverse, reason=reason)
        drawn = outcome_from_scores(scores or _DRAW, scores_reverse or _DRAW)
        return ItemOutcome(
            drawn.result, drawn.d1, drawn.d2, scores, scores_reverse, reason=f"{reason} (counted as a draw)", drawn=True
        )
    return outcome_from_scores(scores, scores_reverse)


@dataclass
class Tally:
    """Counts of one test set (or of all of them)."""

    win: int = 0
    tie: int = 0
    lose: int = 0
    failed: int = 0
    unscored_draws: int = 0  # items counted with an unreadable order as a draw (unscored="tie")

    @property
    def n(self) -> int:
        """Items judged (failures excluded)."""
        return self.win + self.tie + self.lose

    @property
    def winning_score(self) -> float | None:
        return (self.win - self.lose) / self.n + 1 if self.n else None

    def add(self, result: str) -> None:
        setattr(self, result, getattr(self, result) + 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "win": self.win,
            "tie": self.tie,
            "lose": self.lose,
            "failed": self.failed,
            "unscored_draws": self.unscored_draws,
            "n": self.n,
            "winning_score": self.winning_score,
        }


@dataclass
class Aggregate:
    """Tallies per test set (in first-seen order) and overall, with every failure and its reason."""

    per_test_set: dict[str, Tally] = field(default_factory=dict)
    overall: Tally = field(default_factory=Tally)
    failures: list[dict[str, Any]] = field(default_factory=list)
    generator_a: str | None = None
    generator_b: str | None = None
    judge: str | None = None
    unscored: str = "fail"

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.overall.to_dict(),
            "unscored": self.unscored,
            "per_test_set": {k: t.to_dict() for k, t in self.per_test_set.items()},
            "generator_a": self.generator_a,
            "generator_b": self.generator_b,
            "judge": self.judge,
            "failures": self.failures,
        }


def aggregate_records(records: Iterable[Any], default_test_set: str = "all", unscored: str = "fail") -> Aggregate:
    """Apply the rule to review records (``review``, ``review_reverse``, optional ``test_set`` and ``id``); an order
    without readable scores is a failure or, with ``unscored="tie"``, a draw (see ``judge_item``). A record that is
    not an object or lacks a review field is a failure either way."""
    check_unscored(unscored)
    agg = Aggregate(unscored=unscored)
    for row, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            outcome, test_set, item_id = (
                ItemOutcome("failed", reason=f"row {row}: not an object"),
                default_test_set,
                None,
            )
        else:
            test_set = str(rec.get("test_set") or default_test_set)
            item_id = rec.get("id")
            absent = [k for k in ("review", "review_reverse") if k not in rec]
            if absent:
                outcome = ItemOutcome("failed", reason=f"missing field {', '.join(absent)}")
            else:
                outcome = judge_item(rec["review"], rec["review_reverse"], unscored)
            for key in ("generator_a", "generator_b", "judge"):
                if rec.get(key) and getattr(agg, key) is None:
                    setattr(agg, key, str(rec[key]))
        tally = agg.per_test_set.setdefault(test_set, Tally())
        if outcome.result == "failed":
            tally.failed += 1
            agg.overall.failed += 1
            agg.failures.append({"row": row, "test_set": test_set, "id": item_id, "reason": outcome.reason})
        else:
            tally.add(outcome.result)
            agg.overall.add(outcome.result)
            if outcome.drawn:
                tally.unscored_draws += 1
                agg.overall.unscored_draws += 1
    return agg


def load_review_records(path: str | Path) -> list[Any]:
    """Records of a JSON list, a JSON object with a ``data`` list, JSONL (whatever the file's extension), or
    Parquet; a line that is not JSON raises ``DataLoadError`` naming the file and the line."""
    path = Path(path)
    records: list[Any] = []
    for raw in iter_raw_rows(path, sniff_format(path)):
        if raw.error is not None:
            where = f"line {raw.line}" if raw.line is not None else f"row {raw.row}"
            if raw.error.startswith("invalid JSON: "):
                raise DataLoadError(f"{path}: {where} is not valid JSON ({raw.error.removeprefix('invalid JSON: ')})")
            raise DataLoadError(f"{path}: {where}: {raw.error}")
        records.append(raw.value)
    if not records:
        raise DataLoadError(f"{path}: contains no reviews")
    return records


def summary_line(tally: Tally) -> str:
    """The line ``srt eval aggregate`` prints per file."""
    return f"win {tally.win} tie {tally.tie} lose {tally.lose}"


def _rows(agg: Aggregate) -> list[tuple[str, Tally]]:
    rows = list(agg.per_test_set.items())
    return [*rows, (OVERALL, agg.overall)] if len(rows) > 1 else rows


def _pair_title(agg: Aggregate) -> str:
    a, b = agg.generator_a or "model A", agg.generator_b or "model B"
    return f"{a} vs {b}" + (f" (judge: {agg.judge})" if agg.judge else "")


def plot_outcomes(agg: Aggregate, path: str | Path, title: str | None = None) -> Path:
    """Stacked horizontal bars of win / tie / lose shares, one per test set (and overall), counts inside."""
    plt = pyplot()

    rows = _rows(agg)
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(rows) + 1.6))
    labels = []
    for y, (name, t) in enumerate(reversed(rows)):
        ws = f"{t.winning_score:.3f}" if t.n else "n/a"
        labels.append(f"{name}\n(n={t.n}, WS {ws}" + (f", {t.failed} failed)" if t.failed else ")"))
        left = 0.0
        for outcome in OUTCOMES:
            count = getattr(t, outcome)
            share = count / t.n if t.n else 0.0
            ax.barh(y, share, left=left, color=COLORS[outcome], edgecolor="white", label=outcome if y == 0 else None)
            if share >= 0.06:
                ax.text(left + share / 2, y, str(count), ha="center", va="center", fontsize=9)
            left += share
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of items judged")
    ax.legend(ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.28 if len(rows) < 3 else -0.12), frameon=False)
    ax.set_title(title or _pair_title(agg), fontsize=10)
    return save_figure(fig, path)


def markdown_summary(
    agg: Aggregate, chart: str | None = None, source: str | None = None, max_failures: int = 20
) -> str:
    """A markdown report: the rule, a table per test set with the winning score, the chart, the failures."""
    lines = [f"# Pairwise evaluation: {_pair_title(agg)}", ""]
    if source:
        lines += [f"Reviews: `{source}`", ""]
    lines += [
        "Each item is judged twice with the answers swapped. With d1 = sign(A − B) in the first review and d2 the "
        "same sign in the swapped one: win if d1 + d2 > 0, lose if < 0, tie otherwise. "
        "Winning score = (win − lose) / n + 1 (1 is parity; "
        + (
            f"a review without readable scores counts as a draw in its order, as released: "
            f"{agg.overall.unscored_draws} item(s) so counted)."
            if agg.unscored == "tie"
            else "reviews without readable scores are failures, not ties)."
        ),
        "",
        "| test set | n | win | tie | lose | failed | winning score |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, t in _rows(agg):
        ws = f"{t.winning_score:.4f}" if t.n else "n/a"
        label = f"**{name}**" if name == OVERALL else name
        lines.append(f"| {label} | {t.n} | {t.win} | {t.tie} | {t.lose} | {t.failed} | {ws} |")
    if chart:
        lines += ["", f"![win / tie / lose]({chart})"]
    if agg.failures:
        lines += ["", f"## Failures ({len(agg.failures)})", ""]
        for f in agg.failures[:max_failures]:
            item = f"{f['test_set']} {f['id']}" if f["id"] is not None else f["test_set"]
            lines.append(f"- row {f['row']} ({item}): {f['reason']}")
        if len(agg.failures) > max_failures:
            lines.append(f"- ... and {len(agg.failures) - max_failures} more")
    return "\n".join(lines) + "\n"


def format_table(agg: Aggregate) -> str:
    """Per-test-set lines for the console."""
    out = []
    for name, t in _rows(agg):
        ws = f"{t.winning_score:.4f}" if t.n else "n/a"
        out.append(
            f"  {name:<12} win {t.win:>4} tie {t.tie:>4} lose {t.lose:>4} failed {t.failed:>4}  winning score {ws}"
        )
    return "\n".join(out)


def aggregate_manifest(agg: Aggregate, reviews: str | Path | None) -> dict[str, Any]:
    """How an aggregate was obtained: the reviews file (sha256), the rule, and the manifest ``srt eval judge`` wrote
    beside the reviews (``<stem>.manifest.json``: judge, endpoint host, prompt, answer files), kept whole as
    ``judging``; reviews judged elsewhere have none, which the manifest says."""
    judging_path = manifest_path(reviews) if reviews is not None else None
    judging = None
    if judging_path is not None and judging_path.is_file():
        try:
            judging = json.loads(judging_path.read_text(encoding="utf-8"))
        except ValueError:
            judging = None
    fields: dict[str, Any] = {
        "generator_a": agg.generator_a,
        "generator_b": agg.generator_b,
        "rule": {"unscored": agg.unscored},
        "files": {"reviews": file_entry(reviews)},
        "judge": (judging or {}).get("judge") or {"model": agg.judge, "host": None},
        "judging_manifest": str(judging_path) if judging is not None else None,
        "judging": judging,
    }
    if judging is None:
        fields["unknown"] = [f"how {reviews} was judged: no manifest of srt eval judge beside it"]
    return build_manifest("pairwise", **fields)


def write_reports(agg: Aggregate, stem_path: Path, source: str | None = None, plot: bool = True) -> dict[str, str]:
    """Write ``<stem>.aggregate.json``, ``.md``, ``.manifest.json`` and (with ``plot``) ``.png``; returns their paths.
    ``source`` is the reviews file (its judging manifest goes into the aggregate's)."""
    stem_path.parent.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    chart = None
    if plot:
        chart = plot_outcomes(agg, sidecar_path(stem_path, "aggregate.png"))
        paths["chart"] = str(chart)
    md = sidecar_path(stem_path, "aggregate.md")
    write_text_atomic(markdown_summary(agg, chart=chart.name if chart else None, source=source), md)
    paths["markdown"] = str(md)
    js = sidecar_path(stem_path, "aggregate.json")
    write_text_atomic(json.dumps({**agg.to_dict(), "source": source}, indent=2), js)
    paths["json"] = str(js)
    manifest = sidecar_path(stem_path, "aggregate.manifest.json")
    paths["manifest"] = str(write_json(aggregate_manifest(agg, source), manifest, default=str))
    return paths


@dataclass
class AggregateRun:
    """One reviews file aggregated: the tallies and the reports written."""

    file: Path
    aggregate: Aggregate
    reports: dict[str, str]


REPORT_SUFFIXES = ("aggregate.json", "aggregate.md", "aggregate.png", "aggregate.manifest.json")


class NoJudgedItemsError(SRTUserError, ValueError):
    """No item of a reviews file has two readable reviews: there is no win, tie or loss to count."""


def report_paths(path: str | Path, output_dir: str | Path | None = None) -> list[Path]:
    """The reports ``aggregate_file`` writes for a reviews file."""
    path = Path(path)
    stem = Path(output_dir) / path.name if output_dir else path
    return [sidecar_path(stem, suffix) for suffix in REPORT_SUFFIXES]


def check_report_paths(paths: Iterable[str | Path], output_dir: str | Path | None = None) -> None:
    """Refuse, before anything is written, reviews files whose reports would land on the same path (``a/r.jsonl``
    and ``b/r.jsonl`` into one ``--output_dir``; ``r.json`` and ``r.jsonl``) or on one of the reviews files."""
    paths = [Path(p) for p in paths]
    check_distinct_paths(
        {f"--reviews {p}": p for p in paths},
        {f"the report of {p}": r for p in paths for r in report_paths(p, output_dir)},
    )


def aggregate_file(
    path: str | Path, output_dir: str | Path | None = None, plot: bool = True, unscored: str = "fail"
) -> AggregateRun:
    """Aggregate a reviews file and write its reports (``<stem>.aggregate.json``, ``.md``, ``.png``) beside it or
    into ``output_dir``; ``unscored`` as in ``judge_item``. A file without records is refused; one whose items all
    failed gets its reports and then raises ``NoJudgedItemsError`` (nothing was counted)."""
    path = Path(path)
    check_unscored(unscored)
    if not path.is_file():
        raise DataLoadError(f"{path}: no such file")
    check_report_paths([path], output_dir)
    agg = aggregate_records(load_review_records(path), unscored=unscored)
    stem = Path(output_dir) / path.name if output_dir else path
    run = AggregateRun(path, agg, write_reports(agg, stem, source=str(path), plot=plot))
    if agg.overall.n == 0:
        first = agg.failures[0]["reason"] if agg.failures else "no records"
        raise NoJudgedItemsError(
            f"{path}: none of its {agg.overall.failed} items has two readable reviews (first: {first}); "
            f"nothing counted, see {run.reports['markdown']}"
        )
    return run
