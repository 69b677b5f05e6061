"""Selection with missing statistics, against the release's own scripts written out again on NaN: the paper rule
(Reflection_Tuning ``selection_code/get_select_data.py``) and Cherry_LLM's IFD selection
(``cherry_seletion/select_from_ifd_json.py``)."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from srt_trainer.selection import SelectArguments, SelectionArguments, Views, select_rows
from srt_trainer.selection.report import data_card

VIEWS = ("ori", "Q", "A", "QA")
NAN = float("nan")


def release_paper(stats: list[dict[str, tuple[float, float]]]) -> tuple[list[tuple[int, str]], list[int]]:
    """get_select_data.py on (ifd, rifd) per view, NaN where missing: the kept (row, view) and count_1..count_4,
    with the two commented-out appends of branches 2 and 4 listed too (as the winners' switch keeps them)."""
    kept, counts = [], [0, 0, 0, 0]
    for i, s in enumerate(stats):
        (ori_ifd, ori_rifd), (q_ifd, q_rifd), (a_ifd, a_rifd), (qa_ifd, qa_rifd) = (s[v] for v in VIEWS)
        if q_ifd > ori_ifd:
            if qa_rifd < q_rifd:
                if qa_rifd < 1 and qa_ifd < 1:
                    counts[0] += 1
                    kept.append((i, "QA"))
            else:
                if q_rifd < 1 and q_ifd < 1:
                    counts[1] += 1
                    kept.append((i, "Q"))
        else:
            if a_rifd < ori_rifd:
                if a_rifd < 1 and a_ifd < 1:
                    counts[2] += 1
                    kept.append((i, "A"))
            else:
                if ori_rifd < 1 and ori_ifd < 1:
                    counts[3] += 1
                    kept.append((i, "ori"))
    return kept, counts


def scored_views(stats: list[dict[str, tuple[float, float]]]) -> Views[list[dict]]:
    """Score rows of the four views; NaN becomes null, as `srt score` writes a missing statistic. Every rewrite
    has its own response (no teacher fallback), A keeps ori's instruction and QA keeps Q's."""
    views: dict[str, list[dict]] = {v: [] for v in VIEWS}
    for i, s in enumerate(stats):
        for v in VIEWS:
            ifd, rifd = (None if math.isnan(x) else x for x in s[v])
            x = f"{'ori' if v in ('ori', 'A') else 'Q'} instruction {i}"
            views[v].append(
                {
                    "row_index": i,
                    "source_index": i,
                    "instruction": x,
                    "input": "",
                    "output": f"{v} answer {i}",
                    "ifd": ifd,
                    "rifd": rifd,
                    "ifd_error": None if ifd is not None else "response is a single token",
                    "rifd_error": None if rifd is not None else "reverse prompt is 2049 tokens",
                }
            )
    return Views.of(views)


def random_stats(n: int, seed: int, p_null: float = 0.25) -> list[dict[str, tuple[float, float]]]:
    rng = random.Random(seed)
    values = (0.3, 0.5, 0.8, 0.99, 1.0, 1.2)  # ties, the threshold itself, both sides of it

    def value() -> float:
        return NAN if rng.random() < p_null else rng.choice(values)

    return [{v: (value(), value()) for v in VIEWS} for _ in range(n)]


@pytest.mark.parametrize("winners", [False, True])
def test_paper_rule_with_nulls_is_the_release_on_nan(winners):
    stats = random_stats(3000, seed=14)
    want, release_counts = release_paper(stats)
    if not winners:
        want = [(i, v) for i, v in want if v in ("QA", "A")]
    res = select_rows(scored_views(stats), SelectionArguments(keep_unaccepted_winners=winners))
    assert [(r["source_index"], r["variant"]) for r in res.rows] == want
    c = res.counts
    assert [c["branch_1/passed"], c["branch_3/passed"]] == [release_counts[0], release_counts[2]]
    if winners:
        assert [c["branch_2/passed"], c["branch_4/passed"]] == [release_counts[1], release_counts[3]]
    assert c["judged"] == c["rows"] == 3000
    assert sum(c[f"branch_{b}"] for b in (1, 2, 3, 4)) == 3000
    # the counted cases: each comparison that met a null, each threshold that met one
    assert c["null_comparisons"] == sum(len(d.get("null_comparisons", [])) for d in res.decisions) > 0
    assert c["null_comparisons"] == sum(
        c[f"null_comparisons/{k}"] for k in ("ifd_Q_vs_ori", "rifd_QA_vs_Q", "rifd_A_vs_ori")
    )
    # a candidate's statistic that won a comparison is there: QA's and A's r-IFD (branches 1, 3), Q's IFD
    # (branch 2); ori in branch 4 won nothing and may miss either
    reachable = {1: (False, True), 2: (True, False), 3: (False, True), 4: (True, True)}
    for b in (1, 2, 3, 4) if winners else (1, 3):
        assert (c[f"branch_{b}/cut_rifd_null"] > 0, c[f"branch_{b}/cut_ifd_null"] > 0) == reachable[b]
        parts = ("cut_rifd", "cut_rifd_null", "cut_ifd", "cut_ifd_null", "passed")
        assert c[f"branch_{b}"] == sum(c[f"branch_{b}/{p}"] for p in parts)


@pytest.mark.parametrize("nulls", list(itertools.product([False, True], repeat=8)))
def test_every_placement_of_nulls_on_every_branch(nulls):
    """All 256 placements of nulls over the eight statistics, on four value patterns that reach the four
    branches when nothing is missing; each row judged as the release judges it, winners kept too."""
    patterns = [  # (ifd, rifd) of ori, Q, A, QA
        ((0.5, 0.6), (0.7, 0.8), (0.9, 0.9), (0.6, 0.5)),  # branch 1
        ((0.5, 0.6), (0.7, 0.8), (0.9, 0.9), (0.6, 0.9)),  # branch 2
        ((0.5, 0.6), (0.4, 0.8), (0.9, 0.5), (0.6, 0.5)),  # branch 3
        ((0.5, 0.6), (0.4, 0.8), (0.9, 0.7), (0.6, 0.5)),  # branch 4
    ]
    stats = []
    for pattern in patterns:
        flat = [x for pair in pattern for x in pair]
        flat = [NAN if null else x for x, null in zip(flat, nulls, strict=True)]
        stats.append({v: (flat[2 * k], flat[2 * k + 1]) for k, v in enumerate(VIEWS)})
    want, _ = release_paper(stats)
    res = select_rows(scored_views(stats), SelectionArguments(keep_unaccepted_winners=True))
    assert [(r["source_index"], r["variant"]) for r in res.rows] == want


def test_each_null_path_is_named():
    stats = [
        # Q has no IFD: IFD(Q) > IFD(ori) is false, the A path; A wins and is kept
        {"ori": (0.5, 0.6), "Q": (NAN, 0.8), "A": (0.9, 0.5), "QA": (0.6, 0.5)},
        # ori has no IFD: the A path too; ori has no r-IFD either: rIFD(A) < rIFD(ori) false, branch 4
        {"ori": (NAN, NAN), "Q": (0.7, 0.8), "A": (0.9, 0.5), "QA": (0.6, 0.5)},
        # QA has no r-IFD: branch 2
        {"ori": (0.5, 0.6), "Q": (0.7, 0.8), "A": (0.9, 0.5), "QA": (0.6, NAN)},
        # branch 1, QA has no IFD: its threshold fails
        {"ori": (0.5, 0.6), "Q": (0.7, 0.8), "A": (0.9, 0.5), "QA": (NAN, 0.5)},
        # branch 3, A has no IFD: its threshold fails
        {"ori": (0.5, 0.6), "Q": (0.4, 0.8), "A": (NAN, 0.5), "QA": (0.6, 0.5)},
    ]
    res = select_rows(scored_views(stats), SelectionArguments())
    d, c = res.decisions, res.counts
    assert [x["branch"] for x in d] == [3, 4, 2, 1, 3]
    assert [(r["source_index"], r["variant"]) for r in res.rows] == [(0, "A")]
    assert d[0]["null_comparisons"] == ["IFD(Q) > IFD(ori) read as false: Q has no IFD (response is a single token)"]
    assert d[1]["null_comparisons"][1] == (
        "rIFD(A) < rIFD(ori) read as false: ori has no rIFD (reverse prompt is 2049 tokens)"
    )
    assert (
        d[3]["cut"] == "no IFD (QA: response is a single token)"
        and d[4]["cut"] == "no IFD (A: response is a single token)"
    )
    assert (c["null_comparisons/ifd_Q_vs_ori"], c["null_comparisons/rifd_A_vs_ori"]) == (2, 1)
    assert (c["null_comparisons/rifd_QA_vs_Q"], c["null_comparisons"]) == (1, 4)
    assert (c["branch_1/cut_ifd_null"], c["branch_3/cut_ifd_null"], c["branch_3/passed"]) == (1, 1, 1)
    res = select_rows(scored_views(stats), SelectionArguments(keep_unaccepted_winners=True))
    assert res.decisions[1]["cut"] == "no r-IFD (ori: reverse prompt is 2049 tokens)"
    # row 2's winner Q (IFD .7, r-IFD .8) passes; row 1's ori has neither
    assert res.counts["branch_4/cut_rifd_null"] == 1 and res.counts["branch_2/passed"] == 1
    card = data_card(
        res,
        SelectArguments(ori="ori.jsonl", output="x.jsonl"),
        SelectionArguments(keep_unaccepted_winners=True),
        scored_views(stats),
        {},
    )
    assert "null_comparisons" in card and "as NaN does in the release" in card


# -- the 'ifd' policy: Cherry_LLM ----------------------------------------------------------------------------


def cherry_select(data: list[dict], sample_rate: float = 0.0, sample_number: int = 0) -> list[dict]:
    """select_from_ifd_json.py, written out again: the number over the whole data set, the ≤ 1 filter, the
    highest ``ifd_score`` first (a stable sort: ties in input order). NaN fails the filter."""
    if sample_number == 0:
        sample_number = int(len(data) * sample_rate)
    filtered = [item for item in data if item["ifd_score"] <= 1]
    return sorted(filtered, key=lambda x: x["ifd_score"], reverse=True)[:sample_number]


def cherry_rows(n: int, seed: int) -> list[dict]:
    """Score rows whose loss ratio (Cherry_LLM's IFD) ranks otherwise than the perplexity ratio: with losses
    (s_cond, s_alone) = (2.0, 2.2) and (0.5, 0.6) the loss ratios are .909 and .833, the perplexity ratios .819 and
    .905. Some rows miss it, some sit exactly at 1, some above."""
    rng = random.Random(seed)
    pairs = [(2.0, 2.2), (0.5, 0.6), (1.0, 1.0), (3.0, 2.0), (1.1, 2.2), (0.9, 1.8), (0.7, 0.9), (None, 1.0)]
    rows = []
    for i in range(n):
        cond, alone = rng.choice(pairs)
        missing = cond is None
        rows.append(
            {
                "row_index": i,
                "instruction": f"instruction {i}",
                "input": "",
                "output": f"answer {i}",
                "loss_out_cond": cond,
                "loss_out_alone": alone,
                "ifd": None if missing else math.exp(cond - alone),
                "rifd": 0.5,
                "ifd_loss": None if missing else cond / alone,
            }
        )
    return rows


@pytest.mark.parametrize(("top_p", "top_k"), [(0.05, None), (0.3, None), (0.9, None), (None, 7), (None, 1000)])
def test_ifd_policy_is_cherry_llm_selection(top_p, top_k):
    rows = cherry_rows(200, seed=3)
    data = [{"i": r["row_index"], "ifd_score": NAN if r["ifd_loss"] is None else r["ifd_loss"]} for r in rows]
    want = cherry_select(data, sample_rate=top_p or 0.0, sample_number=top_k or 0)
    res = select_rows(Views(rows), SelectionArguments(policy="ifd", top_p=top_p, top_k=top_k))
    assert [r["source_index"] for r in res.rows] == sorted(x["i"] for x in want)  # ours in source order
    ranked = sorted((d for d in res.decisions if "ifd_rank" in d), key=lambda d: d["ifd_rank"])
    assert [d["source_index"] for d in ranked][: len(want)] == [x["i"] for x in want]  # Cherry's order
    c = res.counts
    assert c["ifd/cut_ifd_null"] == sum(r["ifd_loss"] is None for r in rows) > 0
    assert c["ifd/passed"] == sum(r["ifd_loss"] is not None and r["ifd_loss"] <= 1 for r in rows)
    assert any(r["ifd_loss"] == 1.0 for r in res.rows)  # exactly 1 passes (≤ 1), and ranks first
    assert all(r["ifd_loss"] == rows[r["source_index"]]["ifd_loss"] for r in res.rows)


def test_ifd_policy_ranks_by_the_loss_ratio_not_the_perplexity_ratio():
    rows = cherry_rows(2, seed=0)
    for r, (cond, alone) in zip(rows, [(2.0, 2.2), (0.5, 0.6)], strict=True):
        r.update(loss_out_cond=cond, loss_out_alone=alone, ifd=math.exp(cond - alone), ifd_loss=cond / alone)
    assert rows[0]["ifd"] < rows[1]["ifd"] and rows[0]["ifd_loss"] > rows[1]["ifd_loss"]
    res = select_rows(Views(rows), SelectionArguments(policy="ifd", top_k=1))
    assert [r["source_index"] for r in res.rows] == [0]
    # a file with the losses but no ifd_loss column (the golden file's form) gives the same
    bare = [{k: v for k, v in r.items() if k != "ifd_loss"} for r in rows]
    res = select_rows(Views(bare), SelectionArguments(policy="ifd", top_k=1))
    assert [r["source_index"] for r in res.rows] == [0] and res.rows[0]["ifd_loss"] == pytest.approx(2.0 / 2.2)


def test_ifd_policy_top_p_is_a_fraction_of_all_rows():
    """10 rows, 4 pass (IFD ≤ 1): top_p 0.3 keeps int(10 × 0.3) = 3, not int(4 × 0.3) = 1."""
    rows = cherry_rows(10, seed=1)
    for i, r in enumerate(rows):
        r["ifd_loss"] = 0.5 + 0.1 * i if i < 4 else 1.5
    res = select_rows(Views(rows), SelectionArguments(policy="ifd", top_p=0.3))
    assert [r["source_index"] for r in res.rows] == [1, 2, 3]
    assert res.counts["budget_cut/top_p"] == 1 and res.counts["ifd/cut_ifd"] == 6
