"""The count of every step of a selection: filled by the policy, read by the report, ``srt select`` and the trainer.

Keys are ``step`` or ``step/part`` (``branch_1``, ``branch_1/cut_rifd``, ``kept/QA``), so the object is also the flat
JSON that the selection summary holds and the trainer logs.
"""

from __future__ import annotations

from collections.abc import Iterable

# the parts of a judged step (a branch, or the 'ifd' policy's single step) that removed its rows
THRESHOLD_CUTS = ("cut_rifd", "cut_rifd_null", "cut_ifd", "cut_ifd_null")
MISSING_STATISTIC_CUTS = ("cut_rifd_null", "cut_ifd_null")
NOT_KEPT = "not_kept"  # branches 2 and 4, whose winner the release does not keep
BRANCHES = (1, 2, 3, 4)
REWRITES = ("Q", "A", "QA")
# the policies that put one rewrite in place of ori where the student accepts it: the rewrite they judge
ACCEPTING = {"instruction_only": "Q", "response_only": "A"}
# the step whose threshold cuts put ori back instead of removing the row
REPLACING = "accepted"


class SelectionCounts(dict[str, int]):
    """How many rows went through each step of the selection, each step followed by its parts.

    A ``dict`` (what JSON, logging and ``counts["kept"]`` read), with the steps' structure in methods: ``add`` counts
    a row at a step and one of its parts, ``removals`` says which steps removed rows.
    """

    @classmethod
    def zero(
        cls,
        policy: str,
        keep_unaccepted_winners: bool = False,
        comparisons: Iterable[str] = (),
        rewrites: Iterable[str] = REWRITES,
    ) -> SelectionCounts:
        """Every count the policy can produce, at zero, so that runs log the same keys. ``comparisons`` and
        ``rewrites``: the comparisons between views and the rewrites the policy judges."""
        counts = cls(rows=0)
        if policy in ("paper", *ACCEPTING):  # teacher fallbacks: rewrites that are their source again (not accepted)
            counts.update({"unchanged_rewrites": 0, **{f"unchanged_rewrites/{v}": 0 for v in rewrites}})
            # comparisons with a missing statistic, read as false as NaN is in the release
            counts.update({"null_comparisons": 0, **{f"null_comparisons/{k}": 0 for k in comparisons}})
        counts["judged"] = 0
        if policy == "paper":
            for b in BRANCHES:
                counts[f"branch_{b}"] = 0
                judged = b in (1, 3) or keep_unaccepted_winners
                for part in (*THRESHOLD_CUTS, "passed") if judged else (NOT_KEPT,):
                    counts[f"branch_{b}/{part}"] = 0
            kept = ["QA", "A", *(["Q", "ori"] if keep_unaccepted_winners else [])]
        elif policy in ("ifd", "ifd_top"):
            counts.update({policy: 0, **{f"{policy}/{part}": 0 for part in ("cut_ifd", "cut_ifd_null", "passed")}})
            kept = ["ori"]
        elif policy in ACCEPTING:  # a rewrite the student accepts, and that passes the thresholds, replaces ori
            counts.update({"accepted": 0, **{f"accepted/{part}": 0 for part in (*THRESHOLD_CUTS, "passed")}})
            counts["not_accepted"] = 0
            kept = [ACCEPTING[policy], "ori"]
        else:
            kept = ["QA" if policy == "reflection_all" else "ori"]
        counts.update({"passed_thresholds": 0, "budget_cut": 0, "kept": 0})
        counts.update({f"kept/{v}": 0 for v in kept})
        return counts

    def add(self, step: str, part: str | None = None, n: int = 1) -> None:
        """Count ``n`` rows at ``step`` and, when given, at its ``part``."""
        self[step] = self.get(step, 0) + n
        if part is not None:
            self[f"{step}/{part}"] = self.get(f"{step}/{part}", 0) + n

    def removals(self) -> dict[str, int]:
        """The steps that removed rows, with how many, largest first: threshold cuts by branch (``branch_1/cut_rifd``),
        winners the release does not keep (``branch_2/not_kept``) and the budgets (``budget_cut``). A rewrite cut
        under ``accepted`` is not a removal: ori takes its place."""
        removing = (*THRESHOLD_CUTS, NOT_KEPT)
        got = {
            k: n
            for k, n in self.items()
            if n and (k == "budget_cut" or (k.rpartition("/")[2] in removing and not k.startswith(REPLACING + "/")))
        }
        return dict(sorted(got.items(), key=lambda kv: -kv[1]))

    def missing_statistic_cuts(self) -> int:
        """Rows cut because the statistic a threshold reads is missing."""
        return sum(
            n
            for k, n in self.items()
            if k.rpartition("/")[2] in MISSING_STATISTIC_CUTS and not k.startswith(REPLACING + "/")
        )

    def ordered(self) -> SelectionCounts:
        """The same counts, each step followed by its parts, in funnel order; teacher statuses last."""
        out = SelectionCounts()
        for key in [k for k in self if "/" not in k]:
            out[key] = self[key]
            out.update({k: n for k, n in self.items() if k.startswith(key + "/") and k not in out})
        out.update({k: n for k, n in self.items() if k not in out})
        return out
