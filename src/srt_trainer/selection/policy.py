"""The student's choice among the original pair and its rewrites (the paper's rule, ``selection/rule.py``), the
ablation's arms and baselines, thresholds, budgets and size.

``select_rows(Views(ori, q, a, qa), config)`` runs one ``Selection``: every source row is judged as it is read
(``Selection.judge``: the policy's per-row step, its counts, its decision, and the row's candidate pair), then the
candidates are cut to the budgets and size by the policy's order (``Selection.cut``), and the kept pairs are read
again from their files (``Selection.fetch``). Only the decisions (column by column, ``DecisionTable``) and where each
candidate is in its file are held: four million-row score files are never in memory.

The policies (docs/selection.md says exactly what each keeps):

- 'paper': the released rule (``rule.paper_rule``); a branch's pair is kept when rIFD < ``rifd_threshold`` and IFD <
  ``ifd_threshold`` (both 1 in the release), cut r-IFD first so each row is cut once; with
  ``keep_unaccepted_winners`` the winners of branches 2 (Q) and 4 (ori) go through the same thresholds. Budgets rank
  the pairs that passed by IFD, highest (hardest, still feasible) first, as Cherry_LLM does.
- 'ifd': Cherry_LLM's selection (``select_from_ifd_json.py``) on the original pairs: its IFD is the ratio of mean
  losses s(y|x) / s(y) (``ifd_loss``, not the perplexity ratio ``ifd``), pairs with IFD ≤ the threshold pass,
  ranked highest first (ties in source order), and ``top_p`` is a fraction of the whole data set.
- The paper's ablation, one pair per source row: 'ori'; 'instruction_only' (Q where the student accepts the new
  instruction and Q passes the thresholds, else ori); 'response_only' (the same with A and the new response);
  'reflection_all' (QA, no selection).
- Baselines on the original pairs, sized like the paper policy unless ``size`` says: 'random', 'ifd_top' (the
  highest IFD among IFD < ``ifd_threshold``), 'longest' (the longest responses).

A missing statistic (null; NaN, the release's own mark, reads the same) makes every comparison with it false and
fails its threshold, as NaN does in the release's script; every such comparison and cut is counted
(``null_comparisons/...``, ``.../cut_rifd_null``, ``.../cut_ifd_null``).
"""

from __future__ import annotations

import logging
import math
import re
from array import array
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from srt_trainer.selection.config import SelectionArguments, SelectionInputError
from srt_trainer.selection.counts import ACCEPTING, NOT_KEPT, SelectionCounts
from srt_trainer.selection.rule import (
    COMPARISONS,
    Stats,
    accepts_instruction,
    accepts_response,
    cherry_cut,
    paper_rule,
    threshold_cut,
)
from srt_trainer.selection.views import Views, ViewScan, ViewSource, ViewSummary, _index_key, _stat, cherry_ifd

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
# each rewrite and the view it rewrites: a rewrite identical to its source is a teacher fallback
SOURCES = {"Q": "ori", "A": "ori", "QA": "Q"}
# the comparisons each policy reads (keys of ``rule.COMPARISONS``)
POLICY_COMPARISONS = {
    "paper": tuple(COMPARISONS),
    "instruction_only": ("ifd_Q_vs_ori",),
    "response_only": ("rifd_A_vs_ori",),
}


def _slug(text: str) -> str:
    slug = _SLUGS.get(text) if isinstance(text, str) else None
    if slug is None:
        slug = re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_") or "unknown"
        if isinstance(text, str) and len(_SLUGS) < 1024:
            _SLUGS[text] = slug
    return slug


_SLUGS: dict[str, str] = {}  # a file holds a handful of distinct statuses, each seen on many rows


class DecisionTable:
    """One decision per source row, column by column: a million decisions as dicts would hold over a gigabyte.
    ``row(i)`` (and iteration) gives each as the dict written to ``decisions.jsonl``; a statistic is None where
    missing."""

    def __init__(self, views: Sequence[str], policy: str, order: str = "IFD") -> None:
        self.views = tuple(views)
        self.policy = policy
        self.source_index: list[Any] = []
        self.branch: list[Any] = []
        self.variant: list[str | None] = []
        self.cut: list[str | None] = []
        self.stats = {(v, k): array("d") for v in self.views for k in ("ifd", "rifd")}
        self.ifd_loss_ori = array("d")
        self.response_chars = array("q")  # the 'longest' policy's order
        self.null_comparisons: dict[int, list[str]] = {}
        self.replaced: dict[int, str] = {}  # why ori took the place of an accepted rewrite (a threshold)
        self.rank: dict[int, int] = {}  # each candidate's rank in the policy's order
        self.rank_name = f"{order.lower()}_rank"

    def __len__(self) -> int:
        return len(self.branch)

    def stat(self, view: str, key: str, i: int) -> float | None:
        value = self.stats[(view, key)][i]
        return None if math.isnan(value) else value

    def row(self, i: int) -> dict[str, Any]:
        d: dict[str, Any] = {
            "source_index": self.source_index[i],
            "branch": self.branch[i],
            "variant": self.variant[i],
            "cut": self.cut[i],
        }
        for v in self.views:
            for k in ("ifd", "rifd"):
                value = self.stats[(v, k)][i]
                d[f"{k}_{v}"] = None if math.isnan(value) else value
        if self.policy == "ifd":
            value = self.ifd_loss_ori[i]
            d["ifd_loss_ori"] = None if math.isnan(value) else value
        elif self.policy == "longest":
            d["response_chars"] = self.response_chars[i]
        if i in self.null_comparisons:
            d["null_comparisons"] = self.null_comparisons[i]
        if i in self.replaced:
            d["replaced"] = self.replaced[i]
        if i in self.rank:
            d[self.rank_name] = self.rank[i]
        return d

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self.row(i) for i in range(len(self)))

    def values(self, view: str, key: str) -> np.ndarray:
        """The statistic ``key`` of ``view`` over every row (NaN where missing)."""
        return np.frombuffer(self.stats[(view, key)], dtype=np.float64)


class SelectionResult:
    """What the selection kept (``rows``, in source order), what it decided for every source row
    (``decisions``, built on first use; ``iter_decisions`` streams them), the counts of every step, what each view
    held (``views``), the size it was cut to (``size``) and, once written, the files (``files``: "output", "card",
    ...)."""

    def __init__(
        self,
        rows: list[dict[str, Any]],
        decisions: DecisionTable | list[dict[str, Any]],
        counts: SelectionCounts,
        files: dict[str, Path] | None = None,
        views: dict[str, ViewSummary] | None = None,
        size: int | None = None,
        sized_by: str | None = None,
    ) -> None:
        self.rows = rows
        self.table = decisions if isinstance(decisions, DecisionTable) else None
        self._decisions = None if self.table is not None else list(decisions)
        self.counts = counts
        self.files = files or {}
        self.views = views or {}
        self.size = size  # the size the candidates were cut to (None: none)
        self.sized_by = sized_by  # "size" (given), "paper" (the paper policy's kept count on the same views)

    @property
    def decisions(self) -> list[dict[str, Any]]:
        if self._decisions is None:
            assert self.table is not None
            self._decisions = list(self.table)
        return self._decisions

    def iter_decisions(self) -> Iterator[dict[str, Any]]:
        return iter(self._decisions) if self._decisions is not None else iter(self.table or ())

    def kept_positions(self, view: str) -> list[int]:
        """The source rows whose kept pair is ``view``'s."""
        variants = self.table.variant if self.table is not None else [d["variant"] for d in self.decisions]
        return [i for i, v in enumerate(variants) if v == view]


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
    get, source_get = rewrite.get, source.get
    return (
        (get("output") or "") == (source_get("output") or "")
        and (get("instruction") or "") == (source_get("instruction") or "")
        and (get("input") or "") == (source_get("input") or "")
    )


def _kept_row(
    view_row: Mapping[str, Any],
    variant: str,
    source_index: Any,
    branch: Any,
    ifd_ori: float | None,
    rifd_ori: float | None,
    policy: str,
) -> dict[str, Any]:
    # kept rows are single exchanges (the rule judges the first one): a source conversation (`messages`, ShareGPT's
    # `conversations`) would contradict a rewritten instruction or response, and would make loaders (training's
    # included) read the file as chat data and train on the source conversation instead of the kept pair
    extras = {k: v for k, v in view_row.items() if k not in _NOT_EXTRAS}
    return {
        "instruction": view_row.get("instruction") or "",
        "input": view_row.get("input") or "",
        "output": view_row.get("output") or "",
        "variant": variant,
        "source_index": source_index,
        "branch": branch,
        "ifd": _stat(view_row, "ifd"),
        "rifd": _stat(view_row, "rifd"),
        "ifd_ori": ifd_ori,
        "rifd_ori": rifd_ori,
        **({"ifd_loss": cherry_ifd(view_row)} if policy == "ifd" else {}),
        **extras,
    }


_NOT_EXTRAS = frozenset(SCORE_COLUMNS) | {
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
}


def _budget_limits(passed: int, total: int, config: SelectionArguments, policy: str | None = None) -> dict[str, int]:
    """How many of the ``passed`` candidates each budget keeps. ``top_p`` is a fraction of the candidates under the
    paper policy and, as in Cherry_LLM, of the whole data set (``total`` rows) under the 'ifd' policy; both round
    down, as Cherry_LLM's ``int(len(data) * sample_rate)``. ``policy``: the one whose budgets these are (the
    config's by default)."""
    policy = policy or config.policy
    limits = {}
    if config.top_k is not None:
        limits["top_k"] = min(passed, config.top_k)
    if config.top_p is not None:
        limits["top_p"] = min(passed, int((total if policy == "ifd" else passed) * config.top_p))
    return limits


FETCH_CHUNK = 65536  # kept pairs read back per file at a time


def select_rows(
    views: Views[Any], config: SelectionArguments, files: Mapping[str, Any] | None = None, seed: int = 42
) -> SelectionResult:
    """Judge every source row with ``config.policy``, apply the thresholds, budgets and size, count every step.

    ``views``: `srt score` outputs of the same source rows in the same order, each the rows (a sequence) or a
    ``ViewSource`` read one row at a time; the policy reads those it needs (``config.needed_views()``), the others
    may be None. ``files`` (by view name) name them in errors; inputs that cannot be judged together are refused
    (``ViewScan``), and so is an A or QA that is a copy of ori. ``seed``: the random order's (``SelectArguments``).
    Every row is judged: a missing statistic makes the comparisons and thresholds that read it false, as NaN does
    in the release, and each such case is counted. Kept rows come back in source order.
    """
    given = views.named()
    for name in config.needed_views():
        if name not in given:
            why = " without size (its size is the paper policy's kept count)" if config.sized_by_paper() else ""
            raise SelectionInputError(f"the {config.policy!r} policy{why} needs the {name} scores")
    sources = {
        name: view if isinstance(view, ViewSource) else ViewSource.of(view)
        for name, view in ((name, given[name]) for name in config.needed_views())
    }
    selection = Selection(config, list(sources), seed)
    refuse_copies = "A" in sources or "QA" in sources  # a rewrite given ori's own rows
    ViewScan(sources, config.policy, files or {}, selection.judge, refuse_copies=refuse_copies).run()
    selection.cut()
    return selection.fetch(sources)


RANDOM_STREAM = 1  # the 'random' baseline's own stream of --seed: default_rng([seed, RANDOM_STREAM])


def random_order(n: int, seed: int, policy: str) -> np.ndarray:
    """The seeded random order of ``n`` source rows: numpy's ``default_rng(seed).permutation(n)``, shared by every
    policy with no order of its own (cut to one size, ``ori`` and the ablation's arms hold the same source rows,
    each in its own version), except the ``random`` baseline, which draws from its own stream of the same seed,
    ``default_rng([seed, RANDOM_STREAM])``: ``ori`` and ``random`` at one size are two independent random subsets,
    so their difference is what two random draws make."""
    rng = np.random.default_rng([seed, RANDOM_STREAM] if policy == "random" else seed)
    return rng.permutation(n)


class Selection:
    """One selection, fed the source rows one at a time; its state is what it has counted and decided so far.

    - ``judge(i, got)``: one source row as it is read (the views' rows with where each is): what the views hold is
      summarised, the policy's step decides the row's candidate pair and counts it, the decision is recorded.
    - ``cut()``: the candidates ranked by the policy's order (``SelectionArguments.order``: IFD, response length,
      else random) and cut to the budgets and the size.
    - ``fetch(sources)``: the kept pairs read again from their views, in source order; returns the result.
    """

    def __init__(self, config: SelectionArguments, views: Sequence[str], seed: int = 42) -> None:
        self.config = config
        self.policy = config.policy
        self.names = tuple(views)
        self.seed = seed
        self.order = config.order()
        self.table = DecisionTable(self.names, self.policy, self.order)
        comparisons = POLICY_COMPARISONS.get(self.policy, ())
        rewrites = (ACCEPTING[self.policy],) if self.policy in ACCEPTING else ("Q", "A", "QA")
        self.counts = SelectionCounts.zero(self.policy, config.keep_unaccepted_winners, comparisons, rewrites)
        self.statuses: dict[str, Counter[str]] = {name: Counter() for name in self.names}
        self.summaries = {name: ViewSummary() for name in self.names}
        cut_text = {**CUT_TEXT, **(IFD_POLICY_CUT_TEXT if self.policy == "ifd" else {})}
        self.cut_text = {k: v.format(**vars(config)) for k, v in cut_text.items()}
        self.texts: dict[str, str] = {}  # one string object per distinct cut text, not one per row
        self.candidates: list[int] = []  # source rows whose pair passed the policy's step
        self.keys = array("d")  # each candidate's place in the policy's order (IFD, response length)
        self.places: list[Any] = []  # where the candidate is in its view's file
        self.sized_by_paper = config.sized_by_paper()
        self.paper_passed = 0  # rows the paper policy would keep before its budgets (a baseline's size)
        self.size: int | None = config.size

    # -- each source row, as it is read

    def judge(self, i: int, got: Mapping[str, tuple[Any, Any]]) -> None:
        """Judge source row ``i``: ``got`` holds each view's row and its place in its file."""
        r = {name: row for name, (row, _) in got.items()}
        stats = self._read(r)
        step, view, cut, nulls = self._decide(i, r, stats)
        table = self.table
        key = _index_key(r["ori"])
        table.source_index.append(key[1] if key else i)
        table.branch.append(step)
        if nulls:
            table.null_comparisons[i] = [_null_text(r, k) for k in nulls]
            for k in nulls:
                self.counts.add("null_comparisons", k)
        self.counts.add("judged")
        if cut is None:
            assert view is not None
            self.counts.add("passed_thresholds")
            table.variant.append(view)
            table.cut.append(None)
            self.candidates.append(i)
            self.keys.append(self._order_key(r, view, stats))
            self.places.append(got[view][1])
            return
        if cut.endswith("_null"):
            stat = "rifd" if "rifd" in cut else "ifd"
            text = f"{self.cut_text[cut]} ({view}: {_why_missing(r[view], stat)})"  # type: ignore[index]
        else:
            text = self.cut_text[cut] + (f" ({view})" if view else f" (branch_{step})")
        table.variant.append(None)
        table.cut.append(self.texts.setdefault(text, text))

    def _read(self, r: Mapping[str, Mapping[str, Any]]) -> dict[str, Stats]:
        """Summarise what each view's row holds, record its statistics, and return them; a rewrite identical to
        its source is marked (and counted where the policy judges it)."""
        stats = {}
        table = self.table
        for name, row in r.items():
            status = self.summaries[name].add(row)
            if status is not None:  # teacher fallbacks / failures, where the reflect columns came through
                self.statuses[name][_slug(status)] += 1
            ifd, rifd = _stat(row, "ifd"), _stat(row, "rifd")
            table.stats[(name, "ifd")].append(math.nan if ifd is None else ifd)
            table.stats[(name, "rifd")].append(math.nan if rifd is None else rifd)
            stats[name] = Stats(ifd, rifd)
        if self.policy == "ifd":
            value = cherry_ifd(r["ori"])
            table.ifd_loss_ori.append(math.nan if value is None else value)
        elif self.policy == "longest":
            table.response_chars.append(len(r["ori"].get("output") or ""))
        for name, source in SOURCES.items():
            if name in r and source in r and unchanged(r[name], r[source]):
                stats[name] = stats[name]._replace(unchanged=True)
                if f"unchanged_rewrites/{name}" in self.counts:  # a rewrite this policy judges
                    self.counts.add("unchanged_rewrites", name)
        return stats

    def _decide(
        self, i: int, r: Mapping[str, Mapping[str, Any]], stats: Mapping[str, Stats]
    ) -> tuple[Any, str | None, str | None, list[str]]:
        """The policy's step for one row: (its step, which the decision's ``branch`` records; the view whose pair is
        the row's candidate; the cut that removed it, None when it passed; comparisons a missing statistic decided).
        Counts the step and its outcome."""
        config, policy = self.config, self.policy
        thresholds = (config.ifd_threshold, config.rifd_threshold)
        if self.sized_by_paper and self._paper_keeps(stats, thresholds):
            self.paper_passed += 1
        if policy == "paper":
            branch, view, nulls = paper_rule(
                stats["ori"], stats["Q"], stats["A"], stats["QA"], config.keep_unaccepted_winners
            )
            cut = NOT_KEPT if view is None else threshold_cut(stats[view], *thresholds)
            self.counts.add(f"branch_{branch}", cut or "passed")
            return branch, view, cut, nulls
        if policy == "ifd":  # Cherry_LLM: IFD (loss ratio) ≤ threshold
            cut = cherry_cut(cherry_ifd(r["ori"]), config.ifd_threshold)
            self.counts.add("ifd", cut or "passed")
            return "ifd", "ori", cut, []
        if policy == "ifd_top":  # the perplexity ratio, below the threshold, as the paper's budgets rank it
            ifd = stats["ori"].ifd
            cut = "cut_ifd_null" if ifd is None else None if ifd < config.ifd_threshold else "cut_ifd"
            self.counts.add("ifd_top", cut or "passed")
            return "ifd_top", "ori", cut, []
        if policy in ACCEPTING:
            return self._accept(i, ACCEPTING[policy], stats, thresholds)
        return policy, "QA" if policy == "reflection_all" else "ori", None, []

    def _accept(
        self, i: int, rewrite: str, stats: Mapping[str, Stats], thresholds: tuple[float, float]
    ) -> tuple[str, str, None, list[str]]:
        """'instruction_only' / 'response_only': the rewrite where the student accepts it and it passes the
        thresholds, else ori (one pair per source row: a cut puts ori back instead of removing the row)."""
        nulls: list[str] = []
        if rewrite == "Q":
            accepted = accepts_instruction(stats["Q"], stats["ori"], nulls)
        else:
            accepted = accepts_response(stats["A"], stats["ori"], "rifd_A_vs_ori", nulls)
        if not accepted:
            self.counts.add("not_accepted")
            return "not_accepted", "ori", None, nulls
        cut = threshold_cut(stats[rewrite], *thresholds)
        self.counts.add("accepted", cut or "passed")
        if cut is None:
            return "accepted", rewrite, None, nulls
        self.table.replaced[i] = self.cut_text[cut] + f" ({rewrite}): ori kept"
        return "accepted", "ori", None, nulls

    def _paper_keeps(self, stats: Mapping[str, Stats], thresholds: tuple[float, float]) -> bool:
        """Whether the paper policy keeps this row before its budgets (a baseline's size is its kept count)."""
        view = paper_rule(stats["ori"], stats["Q"], stats["A"], stats["QA"], self.config.keep_unaccepted_winners).view
        return view is not None and threshold_cut(stats[view], *thresholds) is None

    def _order_key(self, r: Mapping[str, Mapping[str, Any]], view: str, stats: Mapping[str, Stats]) -> float:
        """A candidate's place in the policy's order, highest first (IFD, response length); 0 where the order is
        random."""
        if self.order == "length":
            return self.table.response_chars[-1]
        if self.order == "random":
            return 0.0
        value = cherry_ifd(r[view]) if self.policy == "ifd" else stats[view].ifd
        assert value is not None  # a candidate passed its IFD threshold
        return value

    # -- once every row is read

    def cut(self) -> None:
        """Count what the views held, then rank the candidates by the policy's order and cut them to the budgets
        (``top_k``, ``top_p``) and the size, whichever binds first; ties keep source order."""
        config, table, counts = self.config, self.table, self.counts
        n = len(table)
        counts["rows"] = n
        for name in self.names:
            for status, k in self.statuses[name].items():
                counts.add(f"reflection_status/{name}/{status}", n=k)
            stats = self.summaries[name]
            ifd, rifd = ~np.isnan(table.values(name, "ifd")), ~np.isnan(table.values(name, "rifd"))
            stats.rows, stats.with_ifd, stats.with_rifd = n, int(ifd.sum()), int(rifd.sum())
            stats.with_statistics = int((ifd & rifd).sum())
        if self.sized_by_paper:
            self.size = min([self.paper_passed, *_budget_limits(self.paper_passed, n, config, "paper").values()])
        passed = len(self.candidates)
        limits = {} if self.sized_by_paper else _budget_limits(passed, n, config)
        for name, limit in limits.items():
            if limit == 0 and passed:  # a fraction of a few rows rounds down to nothing: say so, do not guess
                logger.warning(
                    "%s=%s of %d rows keeps none (the count rounds down to 0)", name, getattr(config, name), n
                )
        if self.size is not None:
            limits["size"] = min(passed, self.size)
            if passed < self.size:
                logger.warning(
                    "size=%d: the %r policy has %d candidate rows, and keeps them all", self.size, self.policy, passed
                )
        for name in limits:
            counts.setdefault(f"budget_cut/{name}", 0)
        if self.order == "random" and not self.config.uses_seed():
            return  # every candidate is kept, in no order
        values = {"top_k": config.top_k, "top_p": config.top_p, "size": self.size}
        binding = sorted(limits.items(), key=lambda kv: kv[1])  # the budget that binds first, for each rank
        for rank, c in enumerate(self._ranked().tolist()):
            i = self.candidates[c]
            table.rank[i] = rank
            over = [name for name, limit in binding if rank >= limit]
            if over:
                name = over[0]
                table.cut[i] = f"budget: {name}={values[name]} ({self.order} rank {rank})"
                table.variant[i] = None
                counts.add("budget_cut", name)

    def _ranked(self) -> np.ndarray:
        """The candidates (positions in ``candidates``) in the policy's order: highest key first, ties in source
        order; or the seeded random order of the source rows (``random_order``), restricted to the candidates."""
        if not self.candidates:
            return np.array([], dtype=np.int64)
        if self.order == "random":
            position = np.empty(len(self.table), dtype=np.int64)
            position[random_order(len(self.table), self.seed, self.policy)] = np.arange(len(self.table))
            return np.argsort(position[np.array(self.candidates, dtype=np.int64)], kind="stable")
        return np.argsort(-np.frombuffer(self.keys, dtype=np.float64), kind="stable")

    def fetch(self, sources: Mapping[str, ViewSource]) -> SelectionResult:
        """Read the kept pairs again from their views (a chunk of places at a time), in source order."""
        table = self.table
        kept = [(i, place) for i, place in zip(self.candidates, self.places, strict=True) if table.variant[i]]
        fetched = {
            name: _fetch_in_chunks(sources[name], [p for i, p in kept if table.variant[i] == name])
            for name in self.names
        }
        kept_rows = []
        for i, _ in kept:
            variant = table.variant[i]
            assert variant is not None
            row = next(fetched[variant])
            kept_rows.append(
                _kept_row(
                    row,
                    variant,
                    table.source_index[i],
                    table.branch[i],
                    table.stat("ori", "ifd", i),
                    table.stat("ori", "rifd", i),
                    self.policy,
                )
            )
            self.counts.add("kept", variant)
        # one schema for all kept rows (Parquet takes its columns from the first row)
        columns = tuple(dict.fromkeys(k for row in kept_rows for k in row))
        for j, row in enumerate(kept_rows):
            if tuple(row) != columns:
                kept_rows[j] = {k: row.get(k) for k in columns}
        sized_by = "paper" if self.sized_by_paper else "size" if self.size is not None else None
        return SelectionResult(
            kept_rows, table, self.counts.ordered(), views=self.summaries, size=self.size, sized_by=sized_by
        )


def _fetch_in_chunks(source: ViewSource, places: list[Any]) -> Iterator[Any]:
    """The rows at ``places``, read back a chunk at a time."""
    for start in range(0, len(places), FETCH_CHUNK):
        yield from source.fetch(places[start : start + FETCH_CHUNK])


def _null_text(r: Mapping[str, Mapping[str, Any]], key: str) -> str:
    """``rIFD(QA) < rIFD(Q) read as false: QA has no r-IFD (empty response)``, for a decision record."""
    first, stat, op, second = COMPARISONS[key]
    label = {"ifd": "IFD", "rifd": "rIFD"}[stat]
    missing = [v for v in (first, second) if _stat(r[v], stat) is None]
    why = "; ".join(f"{v} has no {label} ({_why_missing(r[v], stat)})" for v in missing)
    return f"{label}({first}) {op} {label}({second}) read as false: {why}"
