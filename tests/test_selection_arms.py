"""The ablation's arms and the baselines as `srt select --policy` values, on hand-written score rows: what each arm
keeps is worked out by hand below (from the definitions in docs/selection.md), not by the code under test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from srt_trainer.cli import main
from srt_trainer.io import read_rows, write_rows
from srt_trainer.selection import SelectionArguments, SelectionInputError, Views, select_rows

# Per source row: (ifd, rifd) of ori, Q, A, QA (None: no statistics), and the length of ori's response in characters.
ROWS = [
    ((0.50, 0.60), (0.70, 0.80), (0.40, 0.50), (0.60, 0.50), 40),
    ((0.80, 0.70), (0.85, 0.50), (0.90, 0.40), (0.50, 0.30), 10),
    ((0.95, 0.90), (1.20, 0.50), (0.70, 1.10), (0.80, 0.60), 55),
    ((0.30, 0.40), (0.30, 0.40), (0.20, 0.30), (0.25, 0.35), 40),  # Q is a teacher fallback: ori again
    (None, (0.60, 0.50), (0.50, 0.40), (0.55, 0.45), 0),  # ori has an empty response, so no statistics
    ((0.99, 0.50), (1.05, 0.70), (0.60, 0.45), (0.90, 0.65), 25),
    ((1.10, 0.80), (0.90, 0.70), (1.05, 0.75), (0.70, 0.60), 70),
    ((0.60, 0.70), (0.90, 1.20), (0.50, 0.65), (0.85, 1.10), 40),
]
N = len(ROWS)

# The paper's rule (thresholds 1): 0 branch 1 QA (IFD .6); 1 branch 1 QA (.5); 2 branch 2 (rIFD(QA) .6 ≥ rIFD(Q)
# .5); 3 Q unchanged → branch 3 A (.2); 4 branch 4 (ori has no statistics); 5 branch 1 QA (.9); 6 branch 3, A cut
# by IFD 1.05; 7 branch 1, QA cut by r-IFD 1.1. Four kept: the baselines' size.
PAPER = [(0, "QA"), (1, "QA"), (3, "A"), (5, "QA")]
# Q where IFD(Q) > IFD(ori) and Q passes the thresholds: rows 0 and 1. Accepted but cut (ori kept): 2 (IFD 1.2),
# 5 (IFD 1.05), 7 (r-IFD 1.2). Not accepted: 3 (a fallback), 4 (no IFD(ori): the comparison is false), 6.
INSTRUCTION_ONLY = ["Q", "Q", "ori", "ori", "ori", "ori", "ori", "ori"]
# A where rIFD(A) < rIFD(ori) and A passes: rows 0, 1, 3, 5, 7. Accepted but cut: 6 (IFD(A) 1.05). Not accepted:
# 2 (1.1 ≥ .9), 4 (no rIFD(ori)).
RESPONSE_ONLY = ["A", "A", "ori", "A", "ori", "A", "ori", "A"]
# IFD(ori) < 1, highest first: 5 (.99), 2 (.95), 1 (.8), 7 (.6) | 0 (.5), 3 (.3); 6 (1.1) and 4 (none) are cut.
IFD_TOP_4 = [1, 2, 5, 7]
# response length, longest first, ties in source order: 6 (70), 2 (55), 0, 3 (40) | 7 (40), 5 (25), 1 (10), 4 (0)
LONGEST_4 = [0, 2, 3, 6]


def arm_views() -> Views[list[dict]]:
    """Score rows of the four views: A keeps ori's instruction and QA keeps Q's; Q of row 3 is ori's pair again."""
    views: dict[str, list[dict]] = {v: [] for v in ("ori", "Q", "A", "QA")}
    for i, (*stats, chars) in enumerate(ROWS):
        for v, s in zip(views, stats, strict=True):
            source = "ori" if v in ("ori", "A") else "Q"
            output = "y" * chars if v == "ori" else f"{v} answer {i}"
            row = {"source_index": i, "instruction": f"{source} instruction {i}", "input": "", "output": output}
            ifd, rifd = s if s else (None, None)
            row.update(ifd=ifd, rifd=rifd, score_error=None if s else "empty response")
            if v != "ori":
                row["reflection_status"] = "ok"
            views[v].append(row)
    views["Q"][3].update(views["ori"][3], reflection_status="fallback")
    views["QA"][3]["instruction"] = views["ori"][3]["instruction"]
    return Views.of(views)


def kept(result) -> list[tuple[int, str]]:
    return [(r["source_index"], r["variant"]) for r in result.rows]


def random_rows(seed: int, size: int, stream: bool = False) -> list[int]:
    """The documented random orders, the first ``size`` source rows: numpy's default_rng(seed).permutation (every
    policy without an order of its own) or default_rng([seed, 1]).permutation (the random baseline's own stream)."""
    return sorted(np.random.default_rng([seed, 1] if stream else seed).permutation(N)[:size].tolist())


def test_paper_policy_keeps_the_hand_derived_rows():
    res = select_rows(arm_views(), SelectionArguments())
    assert kept(res) == PAPER and res.size is None
    # with a size, its own order cuts it: IFD of the kept pair, highest first (5: .9, 0: .6 | 1: .5, 3: .2)
    res = select_rows(arm_views(), SelectionArguments(size=2))
    assert kept(res) == [(0, "QA"), (5, "QA")] and res.counts["budget_cut/size"] == 2


def test_ori_and_reflection_all_keep_every_row():
    res = select_rows(arm_views(), SelectionArguments(policy="ori"))
    assert kept(res) == [(i, "ori") for i in range(N)]
    assert res.rows[4]["output"] == "" and res.rows[4]["ifd"] is None  # kept though it has no statistics
    assert res.rows[6]["output"] == "y" * 70 and res.rows[6]["branch"] == "ori"
    res = select_rows(arm_views(), SelectionArguments(policy="reflection_all"))
    assert kept(res) == [(i, "QA") for i in range(N)]
    assert res.rows[2]["instruction"] == "Q instruction 2" and res.rows[2]["output"] == "QA answer 2"
    assert res.rows[2]["ifd_ori"] == 0.95 and res.counts["kept/QA"] == N


def test_instruction_only_puts_an_accepted_q_in_place_of_ori():
    res = select_rows(arm_views(), SelectionArguments(policy="instruction_only"))
    assert kept(res) == list(enumerate(INSTRUCTION_ONLY))
    c = res.counts
    assert (c["accepted"], c["accepted/passed"], c["accepted/cut_ifd"], c["accepted/cut_rifd"]) == (5, 2, 2, 1)
    assert (c["not_accepted"], c["unchanged_rewrites/Q"], c["null_comparisons/ifd_Q_vs_ori"]) == (3, 1, 1)
    assert (c["kept"], c["kept/Q"], c["kept/ori"], c["passed_thresholds"]) == (N, 2, 6, N)
    assert c.removals() == {}  # a cut Q puts ori back: nothing is removed
    d = res.decisions
    assert d[2]["replaced"] == "IFD ≥ 1 (Q): ori kept" and d[7]["replaced"] == "r-IFD ≥ 1 (Q): ori kept"
    assert [x["branch"] for x in d] == ["accepted"] * 3 + ["not_accepted"] * 2 + [
        "accepted",
        "not_accepted",
        "accepted",
    ]
    assert res.rows[0]["output"] == "Q answer 0" and res.rows[2]["output"] == "y" * 55


def test_response_only_puts_an_accepted_a_in_place_of_ori():
    res = select_rows(arm_views(), SelectionArguments(policy="response_only"))
    assert kept(res) == list(enumerate(RESPONSE_ONLY))
    c = res.counts
    assert (c["accepted"], c["accepted/passed"], c["accepted/cut_ifd"], c["not_accepted"]) == (6, 5, 1, 2)
    assert c["null_comparisons/rifd_A_vs_ori"] == 1 and (c["kept/A"], c["kept/ori"]) == (5, 3)
    assert res.rows[1]["instruction"] == "ori instruction 1" and res.rows[1]["output"] == "A answer 1"
    # thresholds are the paper's: raised, row 6's A (IFD 1.05) is kept too
    res = select_rows(arm_views(), SelectionArguments(policy="response_only", ifd_threshold=1.1))
    assert kept(res)[6] == (6, "A")


def test_baselines_are_as_large_as_the_paper_selection():
    for policy, rows in (("ifd_top", IFD_TOP_4), ("longest", LONGEST_4), ("random", random_rows(42, 4, stream=True))):
        res = select_rows(arm_views(), SelectionArguments(policy=policy))
        assert kept(res) == [(i, "ori") for i in rows], policy
        assert (res.size, res.sized_by, res.counts["kept"]) == (4, "paper", 4)
    ifd_top = select_rows(arm_views(), SelectionArguments(policy="ifd_top")).counts
    assert (ifd_top["ifd_top/cut_ifd"], ifd_top["ifd_top/cut_ifd_null"], ifd_top["ifd_top/passed"]) == (1, 1, 6)
    assert ifd_top["budget_cut/size"] == 2
    # the paper policy's budgets shape the size: top_k 3 of its 4
    res = select_rows(arm_views(), SelectionArguments(policy="longest", top_k=3))
    assert kept(res) == [(0, "ori"), (2, "ori"), (6, "ori")] and res.size == 3
    decisions = select_rows(arm_views(), SelectionArguments(policy="longest")).decisions
    assert [d["response_chars"] for d in decisions] == [r[4] for r in ROWS]
    assert decisions[7]["length_rank"] == 4 and decisions[7]["cut"] == "budget: size=4 (length rank 4)"


def test_size_cuts_every_arm_by_its_own_order():
    views = arm_views()
    assert kept(select_rows(views, SelectionArguments(policy="longest", size=2))) == [(2, "ori"), (6, "ori")]
    assert kept(select_rows(views, SelectionArguments(policy="ifd_top", size=1))) == [(5, "ori")]
    # the baselines need only ori once the size is given
    assert kept(select_rows(Views(views.ori), SelectionArguments(policy="ifd_top", size=1))) == [(5, "ori")]
    # no order of its own: the seeded random order, the same source rows for every such arm; the random baseline
    # draws from its own stream of the seed, so that ori and random at one size are two independent subsets
    for seed in (42, 7):
        rows = random_rows(seed, 3)
        assert kept(select_rows(views, SelectionArguments(policy="random", size=3), seed=seed)) == [
            (i, "ori") for i in random_rows(seed, 3, stream=True)
        ]
        assert kept(select_rows(views, SelectionArguments(policy="ori", size=3), seed=seed)) == [
            (i, "ori") for i in rows
        ]
        got = select_rows(views, SelectionArguments(policy="instruction_only", size=3), seed=seed)
        assert kept(got) == [(i, INSTRUCTION_ONLY[i]) for i in rows]
        assert got.counts["budget_cut/size"] == N - 3
    assert random_rows(42, 3) != random_rows(7, 3) and random_rows(42, 3) != random_rows(42, 3, stream=True)


def test_a_size_above_the_candidates_keeps_them_all(caplog):
    res = select_rows(arm_views(), SelectionArguments(policy="ifd_top", size=10))
    assert kept(res) == [(i, "ori") for i in (0, 1, 2, 3, 5, 7)] and res.counts["budget_cut/size"] == 0
    assert "size=10: the 'ifd_top' policy has 6 candidate rows, and keeps them all" in caplog.text


def test_arm_options_are_checked():
    with pytest.raises(SelectionInputError, match=r"without size .* needs the Q scores"):
        select_rows(Views(arm_views().ori), SelectionArguments(policy="random"))
    with pytest.raises(SelectionInputError, match="'response_only' policy needs the A scores"):
        select_rows(Views(arm_views().ori), SelectionArguments(policy="response_only"))
    with pytest.raises(SelectionInputError, match=r"the 'ori' policy keeps one pair per source row .* size"):
        SelectionArguments(policy="ori", top_k=3)
    with pytest.raises(SelectionInputError, match="top_p shapes the paper policy's kept count"):
        SelectionArguments(policy="longest", top_p=0.5, size=3)
    with pytest.raises(SelectionInputError, match="size must be 1 or more"):
        SelectionArguments(policy="random", size=0)


# -- srt select, one run per policy ---------------------------------------------------------------------------

EXPECTED = {
    "ori": [(i, "ori") for i in range(N)],
    "instruction_only": list(enumerate(INSTRUCTION_ONLY)),
    "response_only": list(enumerate(RESPONSE_ONLY)),
    "reflection_all": [(i, "QA") for i in range(N)],
    "random": [(i, "ori") for i in random_rows(3, 4, stream=True)],
    "ifd_top": [(i, "ori") for i in IFD_TOP_4],
    "longest": [(i, "ori") for i in LONGEST_4],
}


@pytest.fixture(scope="module")
def arm_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("arms")
    return {v: write_rows(rows, d / f"{v.lower()}.jsonl") for v, rows in arm_views().named().items()}


@pytest.mark.parametrize("policy", list(EXPECTED))
def test_srt_select_policy(policy, arm_files, tmp_path, capsys):
    out = tmp_path / "selected.jsonl"
    argv = ["select", *(x for v, p in arm_files.items() for x in (f"--{v.lower()}", str(p)))]
    argv += ["--policy", policy, "--seed", "3", "--output", str(out)]
    plot = policy == "instruction_only"  # the funnel with the acceptance stage; the others skip the plots
    assert main([*argv, *([] if plot else ["--no_plot"])]) == 0
    printed = capsys.readouterr().out
    rows = read_rows(out)
    assert [(r["source_index"], r["variant"]) for r in rows] == EXPECTED[policy]
    assert all({"instruction", "input", "output", "branch", "ifd", "ifd_ori"} <= set(r) for r in rows)
    report = json.loads((tmp_path / "selected.selection.json").read_text())
    assert report["counts"]["kept"] == len(rows) and report["config"]["selection"]["policy"] == policy
    assert len(read_rows(tmp_path / "selected.decisions.jsonl")) == N
    card = (tmp_path / "selected.card.md").read_text()
    assert f"with the `{policy}` policy" in card and "## Reproduce" in card
    assert f"selection ({policy} policy) of {N} source rows" in printed
    if policy in ("random", "ifd_top", "longest"):
        assert report["size"] == {"rows": 4, "from": "paper"}
        assert "size 4: the paper policy's kept count on these four files" in printed
        assert "Size 4: as many rows as the `paper` policy keeps" in card
    assert ("--seed 3" in card) == (policy == "random")
    if plot:
        assert (tmp_path / "selected.funnel.png").read_bytes()[:4] == b"\x89PNG"
