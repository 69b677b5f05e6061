"""The student's choice among the original pair and its rewrites (the paper's selection rule, as released),
thresholds and budgets.

The released rule, per source row, from the student's statistics of the four views ori = (x0, y0),
Q = (x_ins, y_ins), A = (x0, y_res) and QA = (x_ins, y_res'):

    if IFD(Q) > IFD(ori):                       # the student accepts the new instruction
        if rIFD(QA) < rIFD(Q): branch 1 → QA    # ... and the new response
        else:                  branch 2         # the release keeps nothing
    else:
        if rIFD(A) < rIFD(ori): branch 3 → A
        else:                   branch 4        # the release keeps nothing

A branch's candidate is kept when rIFD < ``rifd_threshold`` and IFD < ``ifd_threshold`` (both 1 in the release);
the cuts are counted in that order (r-IFD first), so each row is cut once and the counts add up. With
``keep_unaccepted_winners`` the pair that won the comparison in branch 2 (Q: the student accepted the new
instruction but not the new response) and in branch 4 (ori: it accepted neither) go through the same thresholds.
A rewrite identical to its source (a teacher fallback) is never "accepted", as in the release where it scores
exactly like its source. Budgets then rank the candidates that passed by IFD, highest (hardest, still feasible)
first, as Cherry_LLM does.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from srt_trainer.selection.config import SelectionArguments, SelectionInputError

NO_STATISTICS = "no statistics"
# columns of a score output that describe the student's statistics, not the pair
SCORE_COLUMNS = (
    "loss_ins_alone",
    "loss_out_alone",
    "loss_ins_cond",
    "loss_out_cond",
    "ifd",
    "rifd",
    "ifd_loss",
    "rifd_loss",
    "score_error",
    "ifd_turns",
    "rifd_turns",
)


@dataclass
class SelectionResult:
    """What the selection kept, what it decided for every source row, and the counts of every step."""

    rows: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    counts: dict[str, int]
    files: dict[str, Path] = field(default_factory=dict)  # what ``run_select`` wrote, by kind ("output", "card", ...)


def _stat(row: Mapping[str, Any], key: str) -> float | None:
    value = row.get(key)
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_") or "unknown"


def _index_key(row: Mapping[str, Any]) -> tuple[str, Any] | None:
    for col in ("source_index", "row_index"):
        if row.get(col) is not None:
            return col, row[col]
    return None


def check_alignment(views: Mapping[str, Sequence[Mapping[str, Any]]], files: Mapping[str, str | None]) -> None:
    """The views must hold the same source rows in the same order: same length, and where both sides carry an
    index (``source_index``, else ``row_index``) the variant's index equals the original's."""
    ori = views["ori"]
    for name, rows in views.items():
        where = files.get(name) or name
        if len(rows) != len(ori):
            raise SelectionInputError(
                f"{where} ({name}): {len(rows)} rows, but {files.get('ori') or 'ori'} (ori) has {len(ori)}; the four "
                "inputs must be scores of the same rows in the same order"
            )
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise SelectionInputError(f"{where} ({name}) row {i}: not an object: {row!r:.80}")
            for col in ("ifd", "rifd"):
                if col not in row:
                    raise SelectionInputError(
                        f"{where} ({name}) row {i}: no field {col!r}; is it an `srt score` output?"
                    )
        if name == "ori":
            continue
        for i, (o, v) in enumerate(zip(ori, rows, strict=True)):
            ko, kv = _index_key(o), _index_key(v)
            if ko is not None and kv is not None and ko[1] != kv[1]:
                raise SelectionInputError(
                    f"{where} ({name}) row {i}: field {kv[0]!r} is {kv[1]!r}, but the original at that position "
                    f"({files.get('ori') or 'ori'} row {i}) has {ko[0]!r} {ko[1]!r}; the inputs are not aligned"
                )


def _candidate(row: Mapping[str, Any], config: SelectionArguments) -> str | None:
    """The threshold cut of a candidate pair, or None when it passes."""
    if config.policy != "ifd" and not _stat(row, "rifd") < config.rifd_threshold:
        return "cut_rifd"
    if not _stat(row, "ifd") < config.ifd_threshold:
        return "cut_ifd"
    return None


CUT_TEXT = {
    "cut_rifd": "r-IFD ≥ {rifd_threshold:g}",
    "cut_ifd": "IFD ≥ {ifd_threshold:g}",
    "not_kept": "not kept by the paper rule",
}


def _missing(rows: Mapping[str, Mapping[str, Any]], needs: Sequence[tuple[str, str]]) -> list[str]:
    """``VIEW (reason)`` for each view whose needed statistic is null."""
    out = []
    for view, key in needs:
        if _stat(rows[view], key) is None:
            label = f"{view} ({rows[view].get('score_error') or 'null ' + key})"
            if label not in out:
                out.append(label)
    return out


def unchanged(rewrite: Mapping[str, Any], source: Mapping[str, Any]) -> bool:
    """A rewrite that is its source again: the teacher fell back to the original text."""
    if rewrite.get("reflection_status") == "fallback":
        return True
    return all((rewrite.get(k) or "") == (source.get(k) or "") for k in ("instruction", "input", "output"))


def _judge_paper(r: Mapping[str, Mapping[str, Any]], config: SelectionArguments) -> tuple[Any, str | None, list[str]]:
    """(branch, candidate view or None, missing statistics) of one source row under the released rule.

    A rewrite identical to its source is not accepted, as in the release, where it scores exactly like its source
    and the strict comparisons fail; checking the text keeps that so under batched scoring's rounding noise.
    """
    missing = _missing(r, [("ori", "ifd")] + ([] if unchanged(r["Q"], r["ori"]) else [("Q", "ifd")]))
    if missing:
        return NO_STATISTICS, None, missing
    if not unchanged(r["Q"], r["ori"]) and _stat(r["Q"], "ifd") > _stat(r["ori"], "ifd"):
        missing = _missing(r, [("QA", "rifd"), ("Q", "rifd"), ("QA", "ifd")])
        if missing:
            return NO_STATISTICS, None, missing
        if not unchanged(r["QA"], r["Q"]) and _stat(r["QA"], "rifd") < _stat(r["Q"], "rifd"):
            return 1, "QA", []
        return 2, ("Q" if config.keep_unaccepted_winners else None), []
    missing = _missing(r, [("A", "rifd"), ("ori", "rifd"), ("A", "ifd")])
    if missing:
        return NO_STATISTICS, None, missing
    if not unchanged(r["A"], r["ori"]) and _stat(r["A"], "rifd") < _stat(r["ori"], "rifd"):
        return 3, "A", []
    return 4, ("ori" if config.keep_unaccepted_winners else None), []


def _kept_row(view_row: Mapping[str, Any], variant: str, source_index: Any, branch: Any, ori: Mapping[str, Any]):
    # kept rows are single exchanges (the rule judges the first one): a source conversation's `messages` would
    # contradict a rewritten instruction or response, and would make loaders read the file as chat data
    extras = {
        k: v
        for k, v in view_row.items()
        if k not in SCORE_COLUMNS
        and k
        not in (
            "row_index",
            "instruction",
            "input",
            "output",
            "source_index",
            "messages",
            "system",
            "num_turns",
            "source_format",
        )
    }
    return {
        "instruction": view_row.get("instruction") or "",
        "input": view_row.get("input") or "",
        "output": view_row.get("output") or "",
        "variant": variant,
        "source_index": source_index,
        "branch": branch,
        "ifd": _stat(view_row, "ifd"),
        "rifd": _stat(view_row, "rifd"),
        "ifd_ori": _stat(ori, "ifd"),
        "rifd_ori": _stat(ori, "rifd"),
        **extras,
    }


def _budget_limits(n: int, config: SelectionArguments) -> dict[str, int]:
    limits = {}
    if config.top_k is not None:
        limits["top_k"] = min(n, config.top_k)
    if config.top_p is not None:
        limits["top_p"] = int(n * config.top_p)  # rounded down, as Cherry_LLM's sample_rate
    return limits


def initial_counts(config: SelectionArguments) -> dict[str, int]:
    """Every count the policy can produce, at zero, so runs log the same keys."""
    counts = {"rows": 0}
    if config.policy == "paper":  # teacher fallbacks: rewrites that are their source again (not accepted)
        counts.update({"unchanged_rewrites": 0, **{f"unchanged_rewrites/{v}": 0 for v in ("Q", "A", "QA")}})
    counts.update({"no_statistics": 0, "judged": 0})
    if config.policy == "paper":
        for b in (1, 2, 3, 4):
            counts[f"branch_{b}"] = 0
            if b in (1, 3) or config.keep_unaccepted_winners:
                counts.update({f"branch_{b}/cut_rifd": 0, f"branch_{b}/cut_ifd": 0, f"branch_{b}/passed": 0})
            else:
                counts[f"branch_{b}/not_kept"] = 0
        kept = ["QA", "A", *(["Q", "ori"] if config.keep_unaccepted_winners else [])]
    else:
        counts.update({"ifd": 0, "ifd/cut_ifd": 0, "ifd/passed": 0})
        kept = ["ori"]
    counts.update({"passed_thresholds": 0, "budget_cut": 0, "kept": 0})
    counts.update({f"kept/{v}": 0 for v in kept})
    return counts


def select_rows(
    ori: Sequence[Mapping[str, Any]],
    q: Sequence[Mapping[str, Any]] | None,
    a: Sequence[Mapping[str, Any]] | None,
    qa: Sequence[Mapping[str, Any]] | None,
    config: SelectionArguments,
    files: Mapping[str, str | None] | None = None,
) -> SelectionResult:
    """Judge every source row with ``config.policy``, apply the thresholds and budgets, count every step.

    The inputs are `srt score` outputs of the same source rows in the same order (Q / A / QA may be None under the
    'ifd' policy); ``files`` names their files (by view) in error messages. Rows whose needed statistics are null
    are recorded and counted, never dropped silently. Kept rows come back in source order.
    """
    views: dict[str, Sequence[Mapping[str, Any]]] = {"ori": ori}
    for name, rows in (("Q", q), ("A", a), ("QA", qa)):
        if rows is not None:
            views[name] = rows
        elif name in config.needed_views():
            raise SelectionInputError(f"the {config.policy!r} policy needs the {name} scores")
    if config.policy == "ifd":
        views = {"ori": ori}
    check_alignment(views, files or {})

    counts = Counter(initial_counts(config))
    counts["rows"] = len(ori)
    for name, rows in views.items():  # teacher fallbacks / failures, where the reflect columns came through
        for row in rows:
            if row.get("reflection_status") is not None:
                counts[f"reflection_status/{name}/{_slug(row['reflection_status'])}"] += 1
    if config.policy == "paper":
        for name, source in (("Q", "ori"), ("A", "ori"), ("QA", "Q")):
            n = sum(unchanged(v, s) for v, s in zip(views[name], views[source], strict=True))
            counts["unchanged_rewrites"] += n
            counts[f"unchanged_rewrites/{name}"] = n

    decisions: list[dict[str, Any]] = []
    candidates: list[int] = []  # decision indices that passed the thresholds
    for i, ori_row in enumerate(ori):
        key = _index_key(ori_row)
        source_index = key[1] if key else i
        r = {name: rows[i] for name, rows in views.items()}
        if config.policy == "paper":
            branch, view, missing = _judge_paper(r, config)
        else:
            missing = _missing(r, [("ori", "ifd")])
            branch, view = (NO_STATISTICS, None) if missing else ("ifd", "ori")
        decision: dict[str, Any] = {"source_index": source_index, "branch": branch, "variant": None, "cut": None}
        decision.update({f"{k}_{name}": _stat(row, k) for name, row in r.items() for k in ("ifd", "rifd")})
        if branch == NO_STATISTICS:
            reason = ", ".join(missing)
            decision["cut"] = f"{NO_STATISTICS}: {reason}"
            counts["no_statistics"] += 1
            counts[f"no_statistics/{_slug(reason)}"] += 1
        else:
            counts["judged"] += 1
            prefix = f"branch_{branch}" if branch != "ifd" else "ifd"
            counts[prefix] += 1
            cut = "not_kept" if view is None else _candidate(r[view], config)
            if cut is None:
                counts[f"{prefix}/passed"] += 1
                counts["passed_thresholds"] += 1
                decision["variant"] = view
                candidates.append(i)
            else:
                counts[f"{prefix}/{cut}"] += 1
                decision["cut"] = CUT_TEXT[cut].format(**vars(config)) + (f" ({view})" if view else f" ({prefix})")
        decisions.append(decision)

    # budgets: rank what passed by the kept pair's IFD, highest first; ties keep source order
    limits = _budget_limits(len(candidates), config)
    ranked = sorted(candidates, key=lambda i: (-_stat(views[decisions[i]["variant"]][i], "ifd"), i))
    for name in limits:
        counts[f"budget_cut/{name}"] = 0
    for rank, i in enumerate(ranked):
        decisions[i]["ifd_rank"] = rank
        over = [name for name, limit in limits.items() if rank >= limit]
        if over:
            name = min(over, key=lambda n: limits[n])  # the budget that binds
            decisions[i]["cut"] = f"budget: {name}={getattr(config, name)} (IFD rank {rank})"
            decisions[i]["variant"] = None
            counts["budget_cut"] += 1
            counts[f"budget_cut/{name}"] += 1

    kept_rows = []
    for i, d in enumerate(decisions):
        if d["variant"] is None:
            continue
        kept_rows.append(_kept_row(views[d["variant"]][i], d["variant"], d["source_index"], d["branch"], ori[i]))
        counts["kept"] += 1
        counts[f"kept/{d['variant']}"] += 1
    # one schema for all kept rows (Parquet takes its columns from the first row)
    columns = list(dict.fromkeys(k for row in kept_rows for k in row))
    kept_rows = [{k: row.get(k) for k in columns} for row in kept_rows]
    return SelectionResult(rows=kept_rows, decisions=decisions, counts=_ordered(counts))


def _ordered(counts: Mapping[str, int]) -> dict[str, int]:
    """Each count followed by its parts (``key/...``), in funnel order; teacher statuses last."""
    out: dict[str, int] = {}
    for key in [k for k in counts if "/" not in k]:
        out[key] = counts[key]
        out.update({k: n for k, n in counts.items() if k.startswith(key + "/") and k not in out})
    out.update({k: n for k, n in counts.items() if k not in out})
    return out
