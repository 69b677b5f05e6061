"""The paper's selection rule (§3, as released) as pure functions of the student's statistics of one source row's
four views: ori = (x0, y0), Q = (x_ins, y_ins), A = (x0, y_res) and QA = (x_ins, y_res').

    if IFD(Q) > IFD(ori):            # the student accepts the new instruction
        if rIFD(QA) < rIFD(Q):       # ... and the new response
            keep QA if rIFD(QA) < 1 and IFD(QA) < 1          (branch 1)
        else: not kept in the release                          (branch 2)
    else:
        if rIFD(A) < rIFD(ori):
            keep A  if rIFD(A) < 1 and IFD(A) < 1            (branch 3)
        else: not kept in the release                          (branch 4)

``paper_rule`` is the branching, ``threshold_cut`` the thresholds on the pair a branch keeps. A missing statistic
(None) is a NaN in the release's script: every comparison with it is false, and it fails its threshold. A rewrite
identical to its source (a teacher fallback) is never accepted, as in the release where it scores exactly like its
source; the text decides, so that batched scoring's rounding noise cannot.
"""

from __future__ import annotations

from typing import NamedTuple

# the release's comparisons between views, by count key: (first view, statistic, operator, second view)
COMPARISONS = {
    "ifd_Q_vs_ori": ("Q", "ifd", ">", "ori"),
    "rifd_QA_vs_Q": ("QA", "rifd", "<", "Q"),
    "rifd_A_vs_ori": ("A", "rifd", "<", "ori"),
}


class Stats(NamedTuple):
    """One view's statistics of one source row (None where missing), and whether the view is a rewrite identical
    to its source."""

    ifd: float | None
    rifd: float | None
    unchanged: bool = False


class Decision(NamedTuple):
    """The branch a source row takes, the view whose pair it would keep (None: the release keeps nothing) and the
    comparisons read as false for a missing statistic (keys of ``COMPARISONS``)."""

    branch: int
    view: str | None
    nulls: list[str]


def _holds(key: str, first: float | None, second: float | None, nulls: list[str]) -> bool:
    """One of the release's comparisons; with a missing side it is false and ``key`` goes to ``nulls``."""
    if first is None or second is None:
        nulls.append(key)
        return False
    return first > second if COMPARISONS[key][2] == ">" else first < second


def accepts_instruction(q: Stats, ori: Stats, nulls: list[str]) -> bool:
    """IFD(Q) > IFD(ori): the new instruction makes the response harder to predict for the student."""
    return not q.unchanged and _holds("ifd_Q_vs_ori", q.ifd, ori.ifd, nulls)


def accepts_response(new: Stats, old: Stats, key: str, nulls: list[str]) -> bool:
    """rIFD(new) < rIFD(old): the new response implies its instruction better (``key``: QA against Q, or A against
    ori)."""
    return not new.unchanged and _holds(key, new.rifd, old.rifd, nulls)


def paper_rule(ori: Stats, q: Stats, a: Stats, qa: Stats, keep_unaccepted_winners: bool = False) -> Decision:
    """The released rule's branch for one source row. ``keep_unaccepted_winners``: branches 2 and 4 offer their
    winner (Q, ori) to the thresholds instead of keeping nothing."""
    nulls: list[str] = []
    if accepts_instruction(q, ori, nulls):
        if accepts_response(qa, q, "rifd_QA_vs_Q", nulls):
            return Decision(1, "QA", nulls)
        return Decision(2, "Q" if keep_unaccepted_winners else None, nulls)
    if accepts_response(a, ori, "rifd_A_vs_ori", nulls):
        return Decision(3, "A", nulls)
    return Decision(4, "ori" if keep_unaccepted_winners else None, nulls)


def threshold_cut(pair: Stats, ifd_threshold: float = 1.0, rifd_threshold: float = 1.0) -> str | None:
    """Which threshold the kept pair fails (None: it passes): rIFD < ``rifd_threshold``, then IFD <
    ``ifd_threshold``, so each pair is cut once; a missing value fails its threshold (``cut_rifd_null``)."""
    for key, value, threshold in (("rifd", pair.rifd, rifd_threshold), ("ifd", pair.ifd, ifd_threshold)):
        if value is None:
            return f"cut_{key}_null"
        if not value < threshold:
            return f"cut_{key}"
    return None


def cherry_cut(ifd_loss: float | None, ifd_threshold: float = 1.0) -> str | None:
    """Cherry_LLM's filter (``select_from_ifd_json.py``): its IFD, the loss ratio, at most the threshold."""
    if ifd_loss is None:
        return "cut_ifd_null"
    return None if ifd_loss <= ifd_threshold else "cut_ifd"
