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

A missing statistic (null; NaN, the release's own mark, reads the same) is a NaN in the release's script: every
comparison with it is false. So a row whose Q (or ori) has no IFD goes down the A path, one whose QA has no r-IFD
lands in branch 2, one whose A or ori has no r-IFD in branch 4, and a threshold on a missing value cuts. Every such
comparison and cut is counted (``null_comparisons/...``, ``.../cut_rifd_null``, ``.../cut_ifd_null``).

The 'ifd' policy is Cherry_LLM's selection (``select_from_ifd_json.py``) on the original pairs: its IFD is the
ratio of mean losses s(y|x) / s(y) (our ``ifd_loss``, not the perplexity ratio ``ifd``), pairs with IFD ≤ the
threshold pass, they are ranked by IFD, highest first (ties in source order), and ``top_p`` is a fraction of the
whole data set.
"""

from __future__ import annotations

import logging
import math
import numbers
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from srt_trainer.selection.config import SelectionArguments, SelectionInputError

logger = logging.getLogger(__name__)

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
    "ifd_error",
    "rifd_error",
    "ifd_turns",
    "rifd_turns",
)
# ratios of perplexities or of losses: positive where there; a mean loss is 0 or more
RATIO_FIELDS = {"ifd": "IFD", "rifd": "r-IFD", "ifd_loss": "IFD (loss ratio)"}
LOSS_FIELDS = ("loss_out_cond", "loss_out_alone")
# the release's comparisons between views, by count key: (first view, statistic, operator, second view)
COMPARISONS = {
    "ifd_Q_vs_ori": ("Q", "ifd", ">", "ori"),
    "rifd_QA_vs_Q": ("QA", "rifd", "<", "Q"),
    "rifd_A_vs_ori": ("A", "rifd", "<", "ori"),
}
# each rewrite keeps its source's instruction and input: A is ori's pair with a new response, QA is Q's
SHARED_INSTRUCTION = (("A", "ori"), ("QA", "Q"))


@dataclass
class SelectionResult:
    """What the selection kept, what it decided for every source row, and the counts of every step."""

    rows: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    counts: dict[str, int]
    files: dict[str, Path] = field(default_factory=dict)  # what ``run_select`` wrote, by kind ("output", "card", ...)


def _stat(row: Mapping[str, Any], key: str) -> float | None:
    """A checked statistic (see ``check_alignment``), None when missing (null or NaN)."""
    value = row.get(key)
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def cherry_ifd(row: Mapping[str, Any]) -> float | None:
    """Cherry_LLM's IFD of a scored pair: the mean loss of the response with its instruction over the mean loss of
    the response alone (``ifd_loss``; from the two losses where a file has only those)."""
    if "ifd_loss" in row:
        return _stat(row, "ifd_loss")
    cond, alone = _stat(row, "loss_out_cond"), _stat(row, "loss_out_alone")
    return None if cond is None or alone is None or alone == 0 else cond / alone


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_") or "unknown"


def _index_key(row: Mapping[str, Any]) -> tuple[str, Any] | None:
    for col in ("source_index", "row_index"):
        if row.get(col) is not None:
            return col, row[col]
    return None


def _bad_value(value: Any, field: str) -> str | None:
    """Why ``value`` cannot be the statistic ``field`` (None when it can): a real number (not a string or a bool),
    finite, positive for a ratio and non-negative for a loss; null, or NaN as the release writes it, is missing."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"is {value!r:.60} ({type(value).__name__}), not a number"
    if math.isnan(value):
        return None
    if not math.isfinite(value):
        return f"is {value!r}, not finite"
    if field in RATIO_FIELDS and not value > 0:
        return f"is {value!r}: {RATIO_FIELDS[field]} is a ratio of perplexities or losses, always above 0"
    if field in LOSS_FIELDS and value < 0:
        return f"is {value!r}: a mean loss is 0 or more"
    return None


def _required(policy: str, row: Mapping[str, Any]) -> str | None:
    """The field a row lacks for ``policy`` (None when it has what the policy reads)."""
    if policy == "ifd":
        if "ifd_loss" not in row and not all(f in row for f in LOSS_FIELDS):
            return "'ifd_loss' (nor 'loss_out_cond' and 'loss_out_alone')"
        return None
    for col in ("ifd", "rifd"):
        if col not in row:
            return repr(col)
    return None


def _instruction(row: Mapping[str, Any]) -> tuple[str, str]:
    return row.get("instruction") or "", row.get("input") or ""


def check_alignment(
    views: Mapping[str, Sequence[Mapping[str, Any]]], files: Mapping[str, str | None], policy: str = "paper"
) -> None:
    """Refuse inputs that cannot be judged together, naming the file, row and field at fault:

    - every view holds the same number of rows as ori, each an object with the statistics ``policy`` reads;
    - every statistic is null or a real, finite number (IFD, r-IFD and the loss ratio above 0), never a string, a
      bool or a list, which would be coerced or crash later;
    - where both sides carry an index (``source_index``, else ``row_index``) a variant's index equals ori's;
    - A has ori's instruction and input, QA has Q's, row by row: rewrites of other data whose indices happen to
      line up are refused at the first row that differs.
    """
    ori = views["ori"]

    def where(name: str) -> str:
        return f"{files.get(name) or name} ({name})"

    for name, rows in views.items():
        if len(rows) != len(ori):
            raise SelectionInputError(
                f"{where(name)}: {len(rows)} rows, but {where('ori')} has {len(ori)}; the four inputs must be scores "
                "of the same rows in the same order"
            )
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise SelectionInputError(f"{where(name)} row {i}: not an object: {row!r:.80}")
            lacking = _required(policy, row)
            if lacking:
                raise SelectionInputError(f"{where(name)} row {i}: no field {lacking}; is it an `srt score` output?")
            for col in (*RATIO_FIELDS, *LOSS_FIELDS):
                bad = _bad_value(row.get(col), col)
                if bad:
                    raise SelectionInputError(f"{where(name)} row {i}: field {col!r} {bad}")
        if name == "ori":
            continue
        for i, (o, v) in enumerate(zip(ori, rows, strict=True)):
            ko, kv = _index_key(o), _index_key(v)
            if ko is not None and kv is not None and ko[1] != kv[1]:
                raise SelectionInputError(
                    f"{where(name)} row {i}: field {kv[0]!r} is {kv[1]!r}, but the original at that position "
                    f"({files.get('ori') or 'ori'} row {i}) has {ko[0]!r} {ko[1]!r}; the inputs are not aligned"
                )
    for name, source in SHARED_INSTRUCTION:
        if name not in views or source not in views:
            continue
        for i, (v, s) in enumerate(zip(views[name], views[source], strict=True)):
            for col, mine, theirs in zip(("instruction", "input"), _instruction(v), _instruction(s), strict=True):
                if mine != theirs:
                    raise SelectionInputError(
                        f"{where(name)} row {i}: field {col!r} is {mine!r:.60}, but {where(source)} row {i} has "
                        f"{theirs!r:.60}; {name} must be {source}'s pairs with rewritten responses, in {source}'s order"
                    )


def _candidate(row: Mapping[str, Any], config: SelectionArguments) -> str | None:
    """The threshold cut of a candidate pair, or None when it passes. A missing value fails its threshold, as a
    NaN fails every comparison in the release."""
    if config.policy == "ifd":  # Cherry_LLM: IFD (loss ratio) ≤ threshold
        value = cherry_ifd(row)
        if value is None:
            return "cut_ifd_null"
        return None if value <= config.ifd_threshold else "cut_ifd"
    for key, threshold in (("rifd", config.rifd_threshold), ("ifd", config.ifd_threshold)):
        value = _stat(row, key)
        if value is None:
            return f"cut_{key}_null"
        if not value < threshold:
            return f"cut_{key}"
    return None


CUT_TEXT = {
    "cut_rifd": "r-IFD ≥ {rifd_threshold:g}",
    "cut_ifd": "IFD ≥ {ifd_threshold:g}",
    "cut_rifd_null": "no r-IFD",
    "cut_ifd_null": "no IFD",
    "not_kept": "not kept by the paper rule",
}
IFD_POLICY_CUT_TEXT = {"cut_ifd": "IFD (loss ratio) > {ifd_threshold:g}", "cut_ifd_null": "no IFD (loss ratio)"}


def _why_missing(row: Mapping[str, Any], key: str) -> str:
    return row.get(f"{key}_error") or row.get("score_error") or f"null {key}"


def unchanged(rewrite: Mapping[str, Any], source: Mapping[str, Any]) -> bool:
    """A rewrite that is its source again: the teacher fell back to the original text."""
    if rewrite.get("reflection_status") == "fallback":
        return True
    return all((rewrite.get(k) or "") == (source.get(k) or "") for k in ("instruction", "input", "output"))


def _compare(r: Mapping[str, Mapping[str, Any]], key: str, nulls: list[str]) -> bool:
    """One of the release's comparisons; with a missing side it is false and ``key`` goes to ``nulls``."""
    first, stat, op, second = COMPARISONS[key]
    a, b = _stat(r[first], stat), _stat(r[second], stat)
    if a is None or b is None:
        nulls.append(key)
        return False
    return a > b if op == ">" else a < b


def _judge_paper(r: Mapping[str, Mapping[str, Any]], config: SelectionArguments) -> tuple[int, str | None, list[str]]:
    """(branch, candidate view or None, comparisons read as false for a missing statistic) of one source row under
    the released rule.

    A rewrite identical to its source is not accepted, as in the release, where it scores exactly like its source
    and the strict comparisons fail; checking the text keeps that so under batched scoring's rounding noise.
    """
    nulls: list[str] = []
    if not unchanged(r["Q"], r["ori"]) and _compare(r, "ifd_Q_vs_ori", nulls):
        if not unchanged(r["QA"], r["Q"]) and _compare(r, "rifd_QA_vs_Q", nulls):
            return 1, "QA", nulls
        return 2, ("Q" if config.keep_unaccepted_winners else None), nulls
    if not unchanged(r["A"], r["ori"]) and _compare(r, "rifd_A_vs_ori", nulls):
        return 3, "A", nulls
    return 4, ("ori" if config.keep_unaccepted_winners else None), nulls


def _kept_row(
    view_row: Mapping[str, Any], variant: str, source_index: Any, branch: Any, ori: Mapping[str, Any], policy: str
) -> dict[str, Any]:
    # kept rows are single exchanges (the rule judges the first one): a source conversation (`messages`, ShareGPT's
    # `conversations`) would contradict a rewritten instruction or response, and would make loaders (training's
    # included) read the file as chat data and train on the source conversation instead of the kept pair
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
            "conversations",
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
        **({"ifd_loss": cherry_ifd(view_row)} if policy == "ifd" else {}),
        **extras,
    }


def _budget_limits(passed: int, total: int, config: SelectionArguments) -> dict[str, int]:
    """How many of the ``passed`` candidates each budget keeps. ``top_p`` is a fraction of the candidates under the
    paper policy and, as in Cherry_LLM, of the whole data set (``total`` rows) under the 'ifd' policy; both round
    down, as Cherry_LLM's ``int(len(data) * sample_rate)``."""
    limits = {}
    if config.top_k is not None:
        limits["top_k"] = min(passed, config.top_k)
    if config.top_p is not None:
        limits["top_p"] = min(passed, int((total if config.policy == "ifd" else passed) * config.top_p))
    return limits


def initial_counts(config: SelectionArguments) -> dict[str, int]:
    """Every count the policy can produce, at zero, so runs log the same keys."""
    counts = {"rows": 0}
    if config.policy == "paper":  # teacher fallbacks: rewrites that are their source again (not accepted)
        counts.update({"unchanged_rewrites": 0, **{f"unchanged_rewrites/{v}": 0 for v in ("Q", "A", "QA")}})
        # comparisons with a missing statistic, read as false as NaN is in the release
        counts.update({"null_comparisons": 0, **{f"null_comparisons/{k}": 0 for k in COMPARISONS}})
    counts["judged"] = 0
    cuts = ("cut_rifd", "cut_rifd_null", "cut_ifd", "cut_ifd_null", "passed")
    if config.policy == "paper":
        for b in (1, 2, 3, 4):
            counts[f"branch_{b}"] = 0
            if b in (1, 3) or config.keep_unaccepted_winners:
                counts.update({f"branch_{b}/{cut}": 0 for cut in cuts})
            else:
                counts[f"branch_{b}/not_kept"] = 0
        kept = ["QA", "A", *(["Q", "ori"] if config.keep_unaccepted_winners else [])]
    else:
        counts.update({"ifd": 0, "ifd/cut_ifd": 0, "ifd/cut_ifd_null": 0, "ifd/passed": 0})
        kept = ["ori"]
    counts.update({"passed_thresholds": 0, "budget_cut": 0, "kept": 0})
    counts.update({f"kept/{v}": 0 for v in kept})
    return counts


def _ranking_key(row: Mapping[str, Any], config: SelectionArguments) -> float:
    value = cherry_ifd(row) if config.policy == "ifd" else _stat(row, "ifd")
    assert value is not None  # a candidate passed its IFD threshold
    return value


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
    'ifd' policy), read from ``files`` (by view; named in errors); ``check_alignment`` refuses any that are not.
    Every row is judged: a missing statistic makes the comparisons and thresholds that read it false, as NaN does
    in the release, and each such case is counted.
    Kept rows come back in source order.
    """
    views: dict[str, Sequence[Mapping[str, Any]]] = {"ori": ori}
    for name, rows in (("Q", q), ("A", a), ("QA", qa)):
        if rows is not None:
            views[name] = rows
        elif name in config.needed_views():
            raise SelectionInputError(f"the {config.policy!r} policy needs the {name} scores")
    if config.policy == "ifd":
        views = {"ori": ori}
    check_alignment(views, files or {}, config.policy)

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

    cut_text = {**CUT_TEXT, **(IFD_POLICY_CUT_TEXT if config.policy == "ifd" else {})}
    decisions: list[dict[str, Any]] = []
    candidates: list[int] = []  # decision indices that passed the thresholds
    for i, ori_row in enumerate(ori):
        key = _index_key(ori_row)
        source_index = key[1] if key else i
        r = {name: rows[i] for name, rows in views.items()}
        nulls: list[str] = []
        if config.policy == "paper":
            branch, view, nulls = _judge_paper(r, config)
        else:
            branch, view = "ifd", "ori"
        decision: dict[str, Any] = {"source_index": source_index, "branch": branch, "variant": None, "cut": None}
        decision.update({f"{k}_{name}": _stat(row, k) for name, row in r.items() for k in ("ifd", "rifd")})
        if config.policy == "ifd":
            decision["ifd_loss_ori"] = cherry_ifd(ori_row)
        if nulls:
            decision["null_comparisons"] = [_null_text(r, k) for k in nulls]
            for k in nulls:
                counts["null_comparisons"] += 1
                counts[f"null_comparisons/{k}"] += 1
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
            text = cut_text[cut].format(**vars(config))
            if cut.endswith("_null"):
                stat = "rifd" if "rifd" in cut else "ifd"
                decision["cut"] = f"{text} ({view}: {_why_missing(r[view], stat)})"
            else:
                decision["cut"] = text + (f" ({view})" if view else f" ({prefix})")
        decisions.append(decision)

    # budgets: rank what passed by the kept pair's IFD, highest first; ties keep source order
    limits = _budget_limits(len(candidates), len(ori), config)
    for name, limit in limits.items():
        if limit == 0 and candidates:  # a fraction of a few rows rounds down to nothing: say so, do not guess
            logger.warning(
                "%s=%s of %d rows keeps none (the count rounds down to 0)", name, getattr(config, name), len(ori)
            )
    ranked = sorted(candidates, key=lambda i: (-_ranking_key(views[decisions[i]["variant"]][i], config), i))
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
        kept_rows.append(
            _kept_row(views[d["variant"]][i], d["variant"], d["source_index"], d["branch"], ori[i], config.policy)
        )
        counts["kept"] += 1
        counts[f"kept/{d['variant']}"] += 1
    # one schema for all kept rows (Parquet takes its columns from the first row)
    columns = list(dict.fromkeys(k for row in kept_rows for k in row))
    kept_rows = [{k: row.get(k) for k in columns} for row in kept_rows]
    return SelectionResult(rows=kept_rows, decisions=decisions, counts=_ordered(counts))


def _null_text(r: Mapping[str, Mapping[str, Any]], key: str) -> str:
    """``rIFD(QA) < rIFD(Q) read as false: QA has no r-IFD (empty response)``, for a decision record."""
    first, stat, op, second = COMPARISONS[key]
    label = {"ifd": "IFD", "rifd": "rIFD"}[stat]
    missing = [v for v in (first, second) if _stat(r[v], stat) is None]
    why = "; ".join(f"{v} has no {label} ({_why_missing(r[v], stat)})" for v in missing)
    return f"{label}({first}) {op} {label}({second}) read as false: {why}"


def _ordered(counts: Mapping[str, int]) -> dict[str, int]:
    """Each count followed by its parts (``key/...``), in funnel order; teacher statuses last."""
    out: dict[str, int] = {}
    for key in [k for k in counts if "/" not in k]:
        out[key] = counts[key]
        out.update({k: n for k, n in counts.items() if k.startswith(key + "/") and k not in out})
    out.update({k: n for k, n in counts.items() if k not in out})
    return out
