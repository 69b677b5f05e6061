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

The four views are read side by side, one row of each at a time (``select_from``): what a row needs is checked and
judged as it is read, and only the decisions (column by column, ``DecisionTable``) and where each kept pair is in
its file are held; the kept pairs are read again at the end. Four million-row score files are never in memory.
"""

from __future__ import annotations

import logging
import math
import numbers
import re
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from srt_trainer.io import gc_paused, no_rows_message
from srt_trainer.selection.config import SelectionArguments, SelectionInputError
from srt_trainer.selection.counts import NOT_KEPT, SelectionCounts

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


def _stat(row: Mapping[str, Any], key: str) -> float | None:
    """A checked statistic (see ``check_alignment``), None when missing (null or NaN)."""
    value = row.get(key)
    if type(value) is float:  # the common case first: this runs for every statistic of every row
        return value if value == value else None
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
    slug = _SLUGS.get(text) if isinstance(text, str) else None
    if slug is None:
        slug = re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_") or "unknown"
        if isinstance(text, str) and len(_SLUGS) < 1024:
            _SLUGS[text] = slug
    return slug


_SLUGS: dict[str, str] = {}  # a file holds a handful of distinct statuses, each seen on many rows


def _index_key(row: Mapping[str, Any]) -> tuple[str, Any] | None:
    for col in ("source_index", "row_index"):
        if row.get(col) is not None:
            return col, row[col]
    return None


def _bad_value(value: Any, field: str) -> str | None:
    """Why ``value`` cannot be the statistic ``field`` (None when it can): a real number (not a string or a bool),
    finite, positive for a ratio and non-negative for a loss; null, or NaN as the release writes it, is missing."""
    if value is None or (type(value) is float and 0 < value < math.inf):  # the common values first
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


def _row_problem(row: Any, policy: str) -> str | None:
    """Why a row of a view cannot be judged (not an object, a field missing, a statistic that is no number)."""
    if type(row) is not dict and not isinstance(row, Mapping):
        return f"not an object: {row!r:.80}"
    lacking = _required(policy, row)
    if lacking:
        return f"no field {lacking}; is it an `srt score` output?"
    get = row.get
    for col in STAT_FIELDS:
        value = get(col)
        if value is None or (type(value) is float and 0 < value < math.inf):  # the common values, checked inline
            continue
        bad = _bad_value(value, col)
        if bad:
            return f"field {col!r} {bad}"
    return None


STAT_FIELDS = (*RATIO_FIELDS, *LOSS_FIELDS)


@dataclass
class ViewSource:
    """Where one view's rows come from: ``rows`` yields each row with where it is (``SelectionInputError`` for a
    row or file that cannot be read); ``fetch(places)`` gives the rows at those places again, in that order."""

    rows: Iterable[tuple[Any, Any]]
    fetch: Callable[[list[Any]], Iterable[Any]]

    @classmethod
    def of(cls, rows: Sequence[Any]) -> ViewSource:
        """A view already in memory: a row's place is its position."""
        return cls(((row, i) for i, row in enumerate(rows)), lambda places: (rows[i] for i in places))


@dataclass
class ViewSummary:
    """What one view held: rows, rows with each statistic, reflection statuses, the teachers named in its rows."""

    rows: int = 0
    with_statistics: int = 0
    with_ifd: int = 0
    with_rifd: int = 0
    reflection_status: dict[str, int] = field(default_factory=dict)
    teacher: list[str] = field(default_factory=list)

    def add(self, row: Mapping[str, Any]) -> Any:
        """Count one row; returns its reflection status (None where it has none)."""
        get = row.get
        status = get("reflection_status")
        if status is not None:
            key = status if type(status) is str else str(status)
            self.reflection_status[key] = self.reflection_status.get(key, 0) + 1
        for name in ("teacher_model", "teacher"):
            value = get(name)
            if value and value not in self.teacher and str(value) not in self.teacher:
                self.teacher.append(str(value))
        return status


class DecisionTable:
    """One decision per source row, column by column: a million decisions as dicts would hold over a gigabyte.
    ``row(i)`` (and iteration) gives each as the dict written to ``decisions.jsonl``; a statistic is None where
    missing."""

    def __init__(self, views: Sequence[str], policy: str) -> None:
        self.views = tuple(views)
        self.policy = policy
        self.source_index: list[Any] = []
        self.branch: list[Any] = []
        self.variant: list[str | None] = []
        self.cut: list[str | None] = []
        self.stats = {(v, k): array("d") for v in self.views for k in ("ifd", "rifd")}
        self.ifd_loss_ori = array("d")
        self.null_comparisons: dict[int, list[str]] = {}
        self.rank: dict[int, int] = {}  # the IFD rank of each row that passed the thresholds

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
        if i in self.null_comparisons:
            d["null_comparisons"] = self.null_comparisons[i]
        if i in self.rank:
            d["ifd_rank"] = self.rank[i]
        return d

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self.row(i) for i in range(len(self)))

    def values(self, view: str, key: str) -> np.ndarray:
        """The statistic ``key`` of ``view`` over every row (NaN where missing)."""
        return np.frombuffer(self.stats[(view, key)], dtype=np.float64)


class SelectionResult:
    """What the selection kept (``rows``, in source order), what it decided for every source row
    (``decisions``, built on first use; ``iter_decisions`` streams them), the counts of every step, what each view
    held (``views``) and, once written, the files (``files``: "output", "card", ...)."""

    def __init__(
        self,
        rows: list[dict[str, Any]],
        decisions: DecisionTable | list[dict[str, Any]],
        counts: SelectionCounts,
        files: dict[str, Path] | None = None,
        views: dict[str, ViewSummary] | None = None,
    ) -> None:
        self.rows = rows
        self.table = decisions if isinstance(decisions, DecisionTable) else None
        self._decisions = None if self.table is not None else list(decisions)
        self.counts = counts
        self.files = files or {}
        self.views = views or {}

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


def _where(files: Mapping[str, Any], name: str) -> str:
    return f"{files.get(name) or name} ({name})"


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
    _Scan({name: ViewSource.of(rows) for name, rows in views.items()}, policy, files).run()


class _Scan:
    """The views read side by side: every row checked, and judged by ``judge`` when given.

    An error is not raised where it is met but kept, the first of each kind, and the one that a reading of each
    file in turn, then its checks, would meet first is raised at the end: the message does not depend on how far
    the other files were read. Judging stops at the first error; reading goes on to count the rows.
    """

    def __init__(
        self,
        sources: Mapping[str, ViewSource],
        policy: str,
        files: Mapping[str, Any],
        judge: Callable[[int, dict[str, tuple[Any, Any]]], None] | None = None,
        refuse_copies: bool = False,
    ) -> None:
        self.sources = sources
        self.names = list(sources)
        self.policy = policy
        self.files = files
        self.judge = judge
        # A or QA holding ori's rows unchanged: a copy of ori given for a rewrite
        self.copies = {n: True for n in ("A", "QA") if n in self.names} if refuse_copies else {}
        self.errors: dict[tuple[int, int, int], str] = {}
        self.num_rows = dict.fromkeys(self.names, 0)

    def _fail(self, key: tuple[int, int, int], message: str) -> None:
        self.errors.setdefault(key, message)

    def run(self) -> None:
        rank = {name: k for k, name in enumerate(self.names)}
        iters = {name: iter(src.rows) for name, src in self.sources.items()}
        alive = list(self.names)
        shared = [(k, v, src) for k, (v, src) in enumerate(SHARED_INSTRUCTION) if v in rank and src in rank]
        i = 0
        with gc_paused():
            while alive:
                r: dict[str, tuple[Any, Any]] = {}
                for name in list(alive):
                    try:
                        r[name] = next(iters[name])
                    except StopIteration:
                        alive.remove(name)
                    except SelectionInputError as e:  # the file, or a row of it, cannot be read
                        alive.remove(name)
                        self._fail((0, rank[name], 0), str(e))
                        if name == self.names[0]:
                            raise  # nothing a later file holds could come first
                if not r:
                    break
                valid = {}
                for name, (row, _) in r.items():
                    self.num_rows[name] += 1
                    problem = _row_problem(row, self.policy)
                    if problem is not None:
                        self._fail((1, rank[name], 1), f"{_where(self.files, name)} row {i}: {problem}")
                    else:
                        valid[name] = row
                ori = valid.get("ori")
                if ori is not None:
                    ko = _index_key(ori)
                    for name, row in valid.items():
                        kv = _index_key(row) if name != "ori" else None
                        if ko is not None and kv is not None and ko[1] != kv[1]:
                            self._fail(
                                (1, rank[name], 2),
                                f"{_where(self.files, name)} row {i}: field {kv[0]!r} is {kv[1]!r}, but the original "
                                f"at that position ({self.files.get('ori') or 'ori'} row {i}) has {ko[0]!r} "
                                f"{ko[1]!r}; the inputs are not aligned",
                            )
                for k, name, source in shared:
                    if name in valid and source in valid:
                        self._check_shared(k, name, source, valid[name], valid[source], i)
                for name in self.copies:
                    if self.copies[name] and (name not in valid or ori is None or valid[name] != ori):
                        self.copies[name] = False
                if self.judge is not None and not self.errors and len(valid) == len(self.names):
                    self.judge(i, r)
                i += 1
        self._finish(rank)

    def _check_shared(self, k: int, name: str, source: str, v: Mapping[str, Any], s: Mapping[str, Any], i: int) -> None:
        for col, mine, theirs in zip(("instruction", "input"), _instruction(v), _instruction(s), strict=True):
            if mine != theirs:
                self._fail(
                    (2, k, 0),
                    f"{_where(self.files, name)} row {i}: field {col!r} is {mine!r:.60}, but "
                    f"{_where(self.files, source)} row {i} has {theirs!r:.60}; {name} must be {source}'s pairs with "
                    f"rewritten responses, in {source}'s order",
                )
                return

    def _finish(self, rank: Mapping[str, int]) -> None:
        ori_rows = self.num_rows[self.names[0]]
        for name in self.names[1:]:
            if self.num_rows[name] != ori_rows:
                self._fail(
                    (1, rank[name], 0),
                    f"{_where(self.files, name)}: {self.num_rows[name]} rows, but {_where(self.files, 'ori')} has "
                    f"{ori_rows}; the four inputs must be scores of the same rows in the same order",
                )
        if self.copies and ori_rows == 0:  # a stage's input with no rows stops it, as every stage does
            self._fail((0, 0, 1), no_rows_message(self.files.get("ori") or "ori"))
        for k, (name, is_copy) in enumerate(self.copies.items()):
            if is_copy and ori_rows:
                self._fail((3, k, 0), copy_message(name, self.files))
        if self.errors:
            raise SelectionInputError(self.errors[min(self.errors)])


def copy_message(name: str, files: Mapping[str, Any], same_file: bool = False) -> str:
    """Why an A or QA input that is ori itself (the same file, or a copy of its rows) is refused."""
    source = "ori" if name == "A" else "Q"
    what = "is the same file as" if same_file else "holds exactly the rows of"
    return (
        f"{_where(files, name)} {what} {_where(files, 'ori')}: {name} must be the scores of the response reflection "
        f"of {source}'s pairs (srt reflect --mode response, then srt score); with ori's own rows every rewrite is "
        "unchanged and nothing would be kept"
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
    get, source_get = rewrite.get, source.get
    return (
        (get("output") or "") == (source_get("output") or "")
        and (get("instruction") or "") == (source_get("instruction") or "")
        and (get("input") or "") == (source_get("input") or "")
    )


def _compare(r: Mapping[str, Mapping[str, Any]], key: str, nulls: list[str]) -> bool:
    """One of the release's comparisons; with a missing side it is false and ``key`` goes to ``nulls``."""
    first, stat, op, second = COMPARISONS[key]
    a, b = _stat(r[first], stat), _stat(r[second], stat)
    if a is None or b is None:
        nulls.append(key)
        return False
    return a > b if op == ">" else a < b


def _judge_paper(
    r: Mapping[str, Mapping[str, Any]], config: SelectionArguments, same: Mapping[str, bool] | None = None
) -> tuple[int, str | None, list[str]]:
    """(branch, candidate view or None, comparisons read as false for a missing statistic) of one source row under
    the released rule.

    A rewrite identical to its source is not accepted, as in the release, where it scores exactly like its source
    and the strict comparisons fail; checking the text keeps that so under batched scoring's rounding noise.
    ``same``: ``unchanged`` of Q, A and QA against their sources, where the caller has it already.
    """
    if same is None:
        same = {name: unchanged(r[name], r[source]) for name, source in (("Q", "ori"), ("A", "ori"), ("QA", "Q"))}
    nulls: list[str] = []
    if not same["Q"] and _compare(r, "ifd_Q_vs_ori", nulls):
        if not same["QA"] and _compare(r, "rifd_QA_vs_Q", nulls):
            return 1, "QA", nulls
        return 2, ("Q" if config.keep_unaccepted_winners else None), nulls
    if not same["A"] and _compare(r, "rifd_A_vs_ori", nulls):
        return 3, "A", nulls
    return 4, ("ori" if config.keep_unaccepted_winners else None), nulls


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


def _ranking_key(row: Mapping[str, Any], config: SelectionArguments) -> float:
    value = cherry_ifd(row) if config.policy == "ifd" else _stat(row, "ifd")
    assert value is not None  # a candidate passed its IFD threshold
    return value


FETCH_CHUNK = 65536  # kept pairs read back per file at a time


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
    'ifd' policy), read from ``files`` (by view; named in errors); ``check_alignment`` refuses any that are not, and
    an A or QA that is a copy of ori is refused too. Every row is judged: a missing statistic makes the comparisons
    and thresholds that read it false, as NaN does in the release, and each such case is counted.
    Kept rows come back in source order.
    """
    views: dict[str, Sequence[Mapping[str, Any]]] = {"ori": ori}
    for name, rows in (("Q", q), ("A", a), ("QA", qa)):
        if rows is not None:
            views[name] = rows
        elif name in config.needed_views():
            raise SelectionInputError(f"the {config.policy!r} policy needs the {name} scores")
    return select_from({name: ViewSource.of(rows) for name, rows in views.items()}, config, files or {})


def select_from(
    sources: Mapping[str, ViewSource], config: SelectionArguments, files: Mapping[str, Any] | None = None
) -> SelectionResult:
    """``select_rows`` over views read one row at a time (``ViewSource``): ``sources`` by view, ori first, then Q,
    A and QA as the policy needs them (the others are not read). The kept pairs are fetched again at the end."""
    files = files or {}
    missing = [v for v in config.needed_views() if v not in sources]
    if missing:
        raise SelectionInputError(f"the {config.policy!r} policy needs the {missing[0]} scores")
    sources = {v: sources[v] for v in config.needed_views()}
    names = list(sources)
    table = DecisionTable(names, config.policy)
    counts = SelectionCounts.zero(config.policy, config.keep_unaccepted_winners, COMPARISONS)
    statuses: dict[str, Counter[str]] = {name: Counter() for name in names}
    summaries = {name: ViewSummary() for name in names}
    cut_text = {**CUT_TEXT, **(IFD_POLICY_CUT_TEXT if config.policy == "ifd" else {})}
    cut_text = {k: v.format(**vars(config)) for k, v in cut_text.items()}
    texts: dict[str, str] = {}  # one string object per distinct cut text, not one per row
    candidates: list[int] = []  # source rows whose candidate passed the thresholds
    keys = array("d")  # the candidate's IFD, for the budgets
    places: list[Any] = []  # where the candidate is in its view's file

    def judge(i: int, got: dict[str, tuple[Any, Any]]) -> None:
        r = {name: row for name, (row, _) in got.items()}
        ori_row = r["ori"]
        key = _index_key(ori_row)
        source_index = key[1] if key else i
        for name, row in r.items():  # teacher fallbacks / failures, where the reflect columns came through
            status = summaries[name].add(row)
            if status is not None:
                statuses[name][_slug(status)] += 1
        nulls: list[str] = []
        if config.policy == "paper":
            same = {name: unchanged(r[name], r[source]) for name, source in (("Q", "ori"), ("A", "ori"), ("QA", "Q"))}
            for name, is_same in same.items():
                if is_same:
                    counts.add("unchanged_rewrites", name)
            branch, view, nulls = _judge_paper(r, config, same)
        else:
            branch, view = "ifd", "ori"
        table.source_index.append(source_index)
        table.branch.append(branch)
        for name, row in r.items():
            for k in ("ifd", "rifd"):
                value = _stat(row, k)
                table.stats[(name, k)].append(math.nan if value is None else value)
        if config.policy == "ifd":
            value = cherry_ifd(ori_row)
            table.ifd_loss_ori.append(math.nan if value is None else value)
        if nulls:
            table.null_comparisons[i] = [_null_text(r, k) for k in nulls]
            for k in nulls:
                counts.add("null_comparisons", k)
        counts.add("judged")
        prefix = f"branch_{branch}" if branch != "ifd" else "ifd"
        cut = NOT_KEPT if view is None else _candidate(r[view], config)
        counts.add(prefix, cut or "passed")
        if cut is None:
            counts.add("passed_thresholds")
            table.variant.append(view)
            table.cut.append(None)
            candidates.append(i)
            keys.append(_ranking_key(r[view], config))
            places.append(got[view][1])
            return
        if cut.endswith("_null"):
            stat = "rifd" if "rifd" in cut else "ifd"
            text = f"{cut_text[cut]} ({view}: {_why_missing(r[view], stat)})"
        else:
            text = cut_text[cut] + (f" ({view})" if view else f" ({prefix})")
        table.variant.append(None)
        table.cut.append(texts.setdefault(text, text))

    _Scan(sources, config.policy, files, judge, refuse_copies=config.policy == "paper").run()
    n = len(table)
    counts["rows"] = n
    for name in names:
        for status, k in statuses[name].items():
            counts.add(f"reflection_status/{name}/{status}", n=k)
        stats = summaries[name]
        ifd, rifd = ~np.isnan(table.values(name, "ifd")), ~np.isnan(table.values(name, "rifd"))
        stats.rows, stats.with_ifd, stats.with_rifd = n, int(ifd.sum()), int(rifd.sum())
        stats.with_statistics = int((ifd & rifd).sum())

    # budgets: rank what passed by the kept pair's IFD, highest first; ties keep source order
    limits = _budget_limits(len(candidates), n, config)
    for name, limit in limits.items():
        if limit == 0 and candidates:  # a fraction of a few rows rounds down to nothing: say so, do not guess
            logger.warning("%s=%s of %d rows keeps none (the count rounds down to 0)", name, getattr(config, name), n)
    for name in limits:
        counts.setdefault(f"budget_cut/{name}", 0)
    ranked = np.argsort(-np.frombuffer(keys, dtype=np.float64), kind="stable") if candidates else []
    binding = sorted(limits.items(), key=lambda kv: kv[1])  # the budget that binds first, for each rank
    for rank, c in enumerate(ranked.tolist() if len(ranked) else []):
        i = candidates[c]
        table.rank[i] = rank
        over = [name for name, limit in binding if rank >= limit]
        if over:
            name = over[0]
            table.cut[i] = f"budget: {name}={getattr(config, name)} (IFD rank {rank})"
            table.variant[i] = None
            counts.add("budget_cut", name)

    kept = [(i, place) for i, place in zip(candidates, places, strict=True) if table.variant[i] is not None]
    fetched = {
        name: _fetch_in_chunks(sources[name], [p for i, p in kept if table.variant[i] == name]) for name in names
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
                config.policy,
            )
        )
        counts.add("kept", variant)
    # one schema for all kept rows (Parquet takes its columns from the first row)
    columns = tuple(dict.fromkeys(k for row in kept_rows for k in row))
    for j, row in enumerate(kept_rows):
        if tuple(row) != columns:
            kept_rows[j] = {k: row.get(k) for k in columns}
    return SelectionResult(kept_rows, table, counts.ordered(), views=summaries)


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
