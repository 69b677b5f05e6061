"""The four views of the same source rows, read side by side and checked before they are judged.

``Views`` names them (ori = (x0, y0), Q = (x_ins, y_ins), A = (x0, y_res), QA = (x_ins, y_res')); each is the rows
in memory or a ``ViewSource`` (rows read one at a time with where each is, and read again by place). ``ViewScan``
reads them one row of each at a time, refuses what cannot be judged together (naming the file, row and field) and
hands every good row to a callback (``Selection.judge``), so four million-row files are never in memory;
``check_alignment`` runs the checks alone.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from srt_trainer.io import gc_paused, no_rows_message
from srt_trainer.selection.config import VARIANTS, SelectionInputError

# ratios of perplexities or of losses: positive where there; a mean loss is 0 or more
RATIO_FIELDS = {"ifd": "IFD", "rifd": "r-IFD", "ifd_loss": "IFD (loss ratio)"}
LOSS_FIELDS = ("loss_out_cond", "loss_out_alone")
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

T = TypeVar("T")


@dataclass(frozen=True)
class Views(Generic[T]):
    """The views of the same source rows, in the same order: ``ori`` = (x0, y0), ``q`` = Q (x_ins, y_ins), ``a`` =
    A (x0, y_res), ``qa`` = QA (x_ins, y_res'). Each is the rows (a sequence of `srt score` rows) or a
    ``ViewSource``; a policy reads the views it needs (``SelectionArguments.needed_views``), the others may be
    None."""

    ori: T
    q: T | None = None
    a: T | None = None
    qa: T | None = None

    def named(self) -> dict[str, T]:
        """The views given, by the names the rule uses (ori, Q, A, QA)."""
        given = zip(VARIANTS, (self.ori, self.q, self.a, self.qa), strict=True)
        return {name: view for name, view in given if view is not None}

    @classmethod
    def of(cls, views: Mapping[str, T]) -> Views[T]:
        """From a mapping by view name (``ori``, ``Q``, ``A``, ``QA``, in any case)."""
        by_name = {name.lower(): view for name, view in views.items()}
        unknown = set(by_name) - {v.lower() for v in VARIANTS}
        if unknown:
            raise ValueError(f"views are {', '.join(VARIANTS)}, not {', '.join(sorted(unknown))}")
        return cls(**by_name)


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


def _where(files: Mapping[str, Any], name: str) -> str:
    return f"{files.get(name) or name} ({name})"


def check_alignment(
    views: Views[Sequence[Mapping[str, Any]]], files: Mapping[str, str | None], policy: str = "paper"
) -> None:
    """Refuse inputs that cannot be judged together, naming the file, row and field at fault:

    - every view holds the same number of rows as ori, each an object with the statistics ``policy`` reads;
    - every statistic is null or a real, finite number (IFD, r-IFD and the loss ratio above 0), never a string, a
      bool or a list, which would be coerced or crash later;
    - where both sides carry an index (``source_index``, else ``row_index``) a variant's index equals ori's;
    - A has ori's instruction and input, QA has Q's, row by row: rewrites of other data whose indices happen to
      line up are refused at the first row that differs.
    """
    ViewScan({name: ViewSource.of(rows) for name, rows in views.named().items()}, policy, files).run()


class ViewScan:
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
                self._fail((3, k, 0), copy_message(name, self.files, policy=self.policy))
        if self.errors:
            raise SelectionInputError(self.errors[min(self.errors)])


def copy_message(name: str, files: Mapping[str, Any], same_file: bool = False, policy: str = "paper") -> str:
    """Why an A or QA input that is ori itself (the same file, or a copy of its rows) is refused."""
    source = "ori" if name == "A" else "Q"
    what = "is the same file as" if same_file else "holds exactly the rows of"
    outcome = {
        "response_only": "every row would keep ori",
        "reflection_all": "the arm would be ori itself",
    }.get(policy, "nothing would be kept")
    return (
        f"{_where(files, name)} {what} {_where(files, 'ori')}: {name} must be the scores of the response reflection "
        f"of {source}'s pairs (srt reflect --mode response, then srt score); with ori's own rows every rewrite is "
        f"unchanged and {outcome}"
    )
