"""The selection rule (SPEC 1.3) on hand-made score rows: every branch and cut, the switch, budgets, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from srt_trainer.io import read_rows, write_rows
from srt_trainer.selection import (
    SelectArguments,
    SelectionArguments,
    SelectionInputError,
    Views,
    run_select,
    select_rows,
    write_selection,
)
from srt_trainer.selection.cli import format_result

# Per source row: (ifd, rifd) of ori, Q, A, QA; None = no statistics. Comments give the hand-derived outcome.
SPEC_ROWS = [
    ((0.5, 0.6), (0.7, 0.8), (0.9, 0.9), (0.6, 0.5)),  # 0: branch 1, QA kept (IFD .6)
    ((0.5, 0.6), (0.7, 1.5), (0.9, 0.9), (0.6, 1.2)),  # 1: branch 1, cut by rIFD(QA) = 1.2
    ((0.5, 0.6), (0.7, 0.8), (0.9, 0.9), (1.1, 0.5)),  # 2: branch 1, cut by IFD(QA) = 1.1
    ((0.5, 0.6), (0.7, 0.8), (0.9, 0.9), (0.6, 0.9)),  # 3: branch 2 (rIFD(QA) .9 ≥ rIFD(Q) .8); winner Q passes
    ((0.5, 0.6), (0.4, 0.8), (0.9, 0.5), (0.6, 0.5)),  # 4: branch 3, A kept (IFD .9)
    ((0.5, 1.3), (0.4, 0.8), (0.9, 1.05), (0.6, 0.5)),  # 5: branch 3, cut by rIFD(A) = 1.05
    ((0.5, 0.6), (0.4, 0.8), (1.0, 0.5), (0.6, 0.5)),  # 6: branch 3, cut by IFD(A) = 1.0 (strict <)
    ((0.5, 0.6), (0.5, 0.6), (0.9, 0.6), (0.6, 0.5)),  # 7: Q is a fallback (= ori): branch 4; winner ori passes
    ((1.2, 0.6), (0.9, 0.8), (0.9, 0.7), (0.6, 0.5)),  # 8: branch 4; winner ori cut by IFD 1.2
    ((0.5, 0.6), (0.7, 0.8), (0.9, 0.9), None),  # 9: instruction accepted, QA has no statistics
    (None, (0.7, 0.8), (0.9, 0.9), (0.6, 0.5)),  # 10: ori has no statistics
    ((0.5, 0.6), (0.7, 0.8), (0.9, 0.9), (0.95, 0.5)),  # 11: branch 1, QA kept (IFD .95)
    ((0.5, 0.6), (0.4, 0.8), (0.3, 0.5), (0.6, 0.5)),  # 12: branch 3, A kept (IFD .3)
]
VIEWS = ("ori", "Q", "A", "QA")


def make_views(spec=SPEC_ROWS) -> Views[list[dict]]:
    rows: dict[str, list[dict]] = {v: [] for v in VIEWS}
    for i, row in enumerate(spec):
        for v, stats in zip(VIEWS, row, strict=True):
            # A keeps ori's instruction, QA keeps Q's: only the response is rewritten
            x = f"{'ori' if v in ('ori', 'A') else 'Q'} instruction {i}"
            r = {"row_index": i, "instruction": x, "input": "", "output": f"{v} answer {i}"}
            if v != "ori":
                r["source_index"] = i
                r["reflection_status"] = "ok"
            if stats is None:
                r.update(ifd=None, rifd=None, ifd_loss=None, score_error="empty response")
                r["output"] = ""
            else:
                r.update(ifd=stats[0], rifd=stats[1], ifd_loss=stats[0], score_error=None)
            rows[v].append(r)
    views = Views.of(rows)
    views.q[7].update(
        instruction=views.ori[7]["instruction"], output=views.ori[7]["output"], reflection_status="fallback"
    )
    views.qa[7]["instruction"] = views.ori[7]["instruction"]  # reflected from the fallback Q
    views.q[10]["reflection_status"] = "failed"
    return views


def assert_consistent(counts: dict[str, int]) -> None:
    """Every row lands in exactly one place of the funnel."""
    branches = [k for k in counts if k.startswith("branch_") and "/" not in k]
    assert counts["rows"] == counts["judged"]  # a missing statistic never keeps a row from being judged
    assert counts["judged"] == sum(counts[b] for b in branches)
    for b in branches:
        assert counts[b] == sum(n for k, n in counts.items() if k.startswith(b + "/"))
    assert counts["passed_thresholds"] == sum(counts.get(f"{b}/passed", 0) for b in branches)
    assert counts["passed_thresholds"] == counts["kept"] + counts["budget_cut"]
    assert counts["kept"] == sum(n for k, n in counts.items() if k.startswith("kept/"))


def test_paper_rule_reaches_every_branch_and_cut():
    res = select_rows(make_views(), SelectionArguments())
    c = res.counts
    assert_consistent(c)
    assert (c["rows"], c["judged"]) == (13, 13)
    assert (c["branch_1"], c["branch_1/cut_rifd"], c["branch_1/cut_ifd"], c["branch_1/passed"]) == (4, 1, 1, 2)
    assert (c["branch_2"], c["branch_2/not_kept"]) == (2, 2)  # row 9: QA has no r-IFD
    assert (c["branch_3"], c["branch_3/cut_rifd"], c["branch_3/cut_ifd"], c["branch_3/passed"]) == (4, 1, 1, 2)
    assert (c["branch_4"], c["branch_4/not_kept"]) == (3, 3)  # row 10: ori has no statistics
    assert (c["kept"], c["kept/QA"], c["kept/A"], c["budget_cut"]) == (4, 2, 2, 0)
    assert c["null_comparisons"] == 3 and c["null_comparisons/rifd_QA_vs_Q"] == 1
    assert c["null_comparisons/ifd_Q_vs_ori"] == c["null_comparisons/rifd_A_vs_ori"] == 1
    assert c["reflection_status/Q/fallback"] == 1 and c["reflection_status/Q/failed"] == 1
    assert c["reflection_status/Q/ok"] == 11 and c["reflection_status/QA/ok"] == 13
    assert (c["unchanged_rewrites"], c["unchanged_rewrites/Q"], c["unchanged_rewrites/A"]) == (1, 1, 0)

    assert [(r["source_index"], r["variant"], r["branch"]) for r in res.rows] == [
        (0, "QA", 1),
        (4, "A", 3),
        (11, "QA", 1),
        (12, "A", 3),
    ]
    kept = res.rows[0]
    assert (kept["instruction"], kept["output"], kept["ifd"], kept["rifd"]) == (
        "Q instruction 0",
        "QA answer 0",
        0.6,
        0.5,
    )
    assert kept["ifd_ori"] == 0.5 and kept["reflection_status"] == "ok" and "row_index" not in kept
    assert "loss_out_cond" not in kept and "score_error" not in kept

    d = res.decisions
    assert len(d) == 13 and [x["branch"] for x in d] == [1, 1, 1, 2, 3, 3, 3, 4, 4, 2, 4, 1, 3]
    assert d[1]["cut"] == "r-IFD ≥ 1 (QA)" and d[2]["cut"] == "IFD ≥ 1 (QA)" and d[6]["cut"] == "IFD ≥ 1 (A)"
    assert d[3]["cut"] == "not kept by the paper rule (branch_2)" and d[3]["variant"] is None
    assert d[9]["null_comparisons"] == ["rIFD(QA) < rIFD(Q) read as false: QA has no rIFD (empty response)"]
    assert d[10]["null_comparisons"] == [
        "IFD(Q) > IFD(ori) read as false: ori has no IFD (empty response)",
        "rIFD(A) < rIFD(ori) read as false: ori has no rIFD (empty response)",
    ]
    assert d[9]["cut"] == "not kept by the paper rule (branch_2)" and "null_comparisons" not in d[0]
    assert (d[0]["ifd_Q"], d[0]["rifd_QA"]) == (0.7, 0.5)


def test_counts_say_which_steps_removed_rows():
    c = select_rows(make_views(), SelectionArguments()).counts
    # rows 1, 2 (branch 1 cuts), 5, 6 (branch 3 cuts), 3, 9 (branch 2) and 7, 8, 10 (branch 4): 9 of 13 removed
    assert c.removals() == {
        "branch_4/not_kept": 3,
        "branch_2/not_kept": 2,
        "branch_1/cut_rifd": 1,
        "branch_1/cut_ifd": 1,
        "branch_3/cut_rifd": 1,
        "branch_3/cut_ifd": 1,
    }
    assert sum(c.removals().values()) + c["kept"] == c["rows"] and c.missing_statistic_cuts() == 0
    top = select_rows(make_views(), SelectionArguments(top_k=1)).counts
    assert top.removals()["budget_cut"] == 3 and "budget_cut/top_k" not in top.removals()
    # with the winners of branches 2 and 4 judged, row 9's Q and row 10's ori are cut for a missing statistic
    switched = select_rows(make_views(), SelectionArguments(keep_unaccepted_winners=True)).counts
    assert switched.missing_statistic_cuts() == switched["branch_4/cut_rifd_null"] + switched["branch_4/cut_ifd_null"]
    assert switched.missing_statistic_cuts() >= 1
    assert json.loads(json.dumps(c)) == dict(c)  # the summary's JSON is the counts as they are


def test_nothing_selected_names_the_removing_steps(tmp_path: Path):
    from srt_trainer.training.prepare import nothing_selected

    counts = select_rows(make_views(), SelectionArguments(rifd_threshold=0.1)).counts
    assert counts["kept"] == 0
    message = nothing_selected(counts, tmp_path / "selected.jsonl")
    assert message.startswith("the selection kept none of the 13 source rows (branch_1/cut_rifd 4, branch_3/cut_rifd 4")
    assert "missing statistic" not in message and str(tmp_path / "selected.jsonl") in message


def test_switch_keeps_branch_2_and_4_winners():
    res = select_rows(make_views(), SelectionArguments(keep_unaccepted_winners=True))
    c = res.counts
    assert_consistent(c)
    assert (c["branch_2/passed"], c["branch_4/passed"], c["branch_4/cut_ifd"], c["branch_4/cut_rifd"]) == (2, 1, 1, 0)
    assert c["branch_4/cut_rifd_null"] == 1  # row 10: the winner ori has no statistics
    assert "branch_2/not_kept" not in c
    assert [(r["source_index"], r["variant"]) for r in res.rows] == [
        (0, "QA"),
        (3, "Q"),
        (4, "A"),
        (7, "ori"),
        (9, "Q"),  # QA has no r-IFD: the release's comparison is false, Q wins
        (11, "QA"),
        (12, "A"),
    ]
    assert (c["kept/Q"], c["kept/ori"]) == (2, 1)
    assert all(list(r) == list(res.rows[0]) for r in res.rows)  # one schema, though ori rows have no teacher columns
    assert res.rows[3]["reflection_status"] is None and res.rows[1]["reflection_status"] == "ok"
    assert res.rows[1]["output"] == "Q answer 3" and res.rows[3]["instruction"] == "ori instruction 7"


def test_rewrites_identical_to_their_source_are_not_accepted():
    """Batched scoring may put a fallback's IFD a hair above its source's; the text decides, as in the release."""
    views = make_views()
    views.q[7]["ifd"] = 0.5 + 1e-7  # the fallback Q, scored in another batch
    views.a[4].update(output=views.ori[4]["output"], reflection_status="ok", rifd=0.6 - 1e-7)  # A = ori again
    views.qa[0].update(instruction=views.q[0]["instruction"], output=views.q[0]["output"], reflection_status="fallback")
    views.a[4]["instruction"] = views.ori[4]["instruction"]
    res = select_rows(views, SelectionArguments())
    assert [res.decisions[i]["branch"] for i in (0, 4, 7)] == [2, 4, 4]
    c = res.counts
    assert (c["unchanged_rewrites/Q"], c["unchanged_rewrites/A"], c["unchanged_rewrites/QA"]) == (1, 1, 1)
    assert [r["source_index"] for r in res.rows] == [11, 12]
    assert_consistent(c)


def test_thresholds_are_configurable():
    res = select_rows(make_views(), SelectionArguments(ifd_threshold=1.15, rifd_threshold=1.25))
    # row 1: rIFD(QA) 1.2 < 1.25, IFD .6 → kept; row 2: IFD 1.1 < 1.15 → kept; row 5: rIFD(A) 1.05 → kept;
    # row 6: IFD(A) 1.0 → kept
    assert [r["source_index"] for r in res.rows] == [0, 1, 2, 4, 5, 6, 11, 12]
    assert_consistent(res.counts)


@pytest.mark.parametrize(
    ("budget", "kept", "cut_key"),
    [
        ({"top_k": 2}, [4, 11], "budget_cut/top_k"),  # highest IFD first: row 11 (.95), row 4 (.9)
        ({"top_p": 0.5}, [4, 11], "budget_cut/top_p"),  # int(4 × 0.5) = 2
        ({"top_p": 0.8}, [0, 4, 11], "budget_cut/top_p"),  # int(3.2) = 3
        ({"top_k": 3, "top_p": 0.5}, [4, 11], "budget_cut/top_p"),  # the smaller budget binds
        ({"top_k": 1, "top_p": 0.5}, [11], "budget_cut/top_k"),
        ({"top_k": 10}, [0, 4, 11, 12], None),
        ({"top_k": 0}, [], "budget_cut/top_k"),
    ],
)
def test_budgets_rank_by_ifd(budget, kept, cut_key):
    res = select_rows(make_views(), SelectionArguments(**budget))
    c = res.counts
    assert_consistent(c)
    assert [r["source_index"] for r in res.rows] == kept  # source order
    assert c["budget_cut"] == 4 - len(kept) and c["passed_thresholds"] == 4
    if cut_key:
        assert c[cut_key] == c["budget_cut"]
    ranked = {d["source_index"]: d["ifd_rank"] for d in res.decisions if "ifd_rank" in d}
    assert ranked == {11: 0, 4: 1, 0: 2, 12: 3}
    for d in res.decisions:
        if d.get("ifd_rank") is not None and d["source_index"] not in kept:
            assert d["cut"].startswith("budget: ") and d["variant"] is None


def test_a_budget_that_rounds_to_nothing_says_so(caplog):
    res = select_rows(make_views(), SelectionArguments(top_p=0.01))  # int(13 × 0.01) = 0 of the 4 rows that passed
    assert res.rows == [] and res.counts["budget_cut/top_p"] == 4
    assert "top_p=0.01 of 13 rows keeps none (the count rounds down to 0)" in caplog.text


def test_budget_with_switch_ranks_all_variants_together():
    res = select_rows(make_views(), SelectionArguments(keep_unaccepted_winners=True, top_k=3))
    # candidates: QA .6, Q .7, A .9, ori .5, Q .7 (row 9), QA .95, A .3 → top 3: rows 11, 4, 3 (ties: source order)
    assert [(r["source_index"], r["variant"]) for r in res.rows] == [(3, "Q"), (4, "A"), (11, "QA")]


def test_ifd_policy_uses_the_original_pairs_only():
    views = make_views()
    res = select_rows(Views(views.ori), SelectionArguments(policy="ifd", top_k=5))
    c = res.counts
    # ori IFD: .5 everywhere but row 8 (1.2, cut) and row 10 (no statistics) → 11 pass, top 5 kept (ties: source order)
    assert (c["ifd"], c["ifd/cut_ifd"], c["ifd/cut_ifd_null"], c["ifd/passed"], c["kept/ori"]) == (13, 1, 1, 11, 5)
    assert [r["source_index"] for r in res.rows] == [0, 1, 2, 3, 4] and {r["variant"] for r in res.rows} == {"ori"}


def test_misaligned_inputs_are_refused():
    views = make_views()
    with pytest.raises(SelectionInputError, match=r"qa\.jsonl \(QA\): 12 rows, but ori\.jsonl \(ori\) has 13"):
        files = {"ori": "ori.jsonl", "QA": "qa.jsonl"}
        select_rows(Views(views.ori, views.q, views.a, views.qa[:-1]), SelectionArguments(), files)
    views.a[5]["source_index"] = 6
    with pytest.raises(SelectionInputError, match=r"a\.jsonl \(A\) row 5: field 'source_index' is 6, but .* 5"):
        select_rows(views, SelectionArguments(), {"A": "a.jsonl"})
    views = make_views()
    del views.q[3]["rifd"]
    with pytest.raises(SelectionInputError, match=r"Q \(Q\) row 3: no field 'rifd'"):
        select_rows(views, SelectionArguments())
    with pytest.raises(SelectionInputError, match="needs the QA scores"):
        select_rows(Views(views.ori, views.q, views.a), SelectionArguments())


def test_config_is_validated():
    for bad in ({"policy": "best"}, {"top_p": 5}, {"top_k": -1}, {"ifd_threshold": 0}):
        with pytest.raises(ValueError):
            SelectionArguments(**bad)


def test_nan_statistics_count_as_missing():
    """NaN is how the release's own files mark a missing statistic: it reads as null."""
    views = make_views()
    views.qa[0]["rifd"] = float("nan")
    res = select_rows(views, SelectionArguments())
    assert res.decisions[0]["branch"] == 2 and res.decisions[0]["null_comparisons"] == [
        "rIFD(QA) < rIFD(Q) read as false: QA has no rIFD (null rifd)"
    ]
    assert_consistent(res.counts)


def test_run_select_reads_json_jsonl_parquet_and_writes_the_report(tmp_path: Path):
    views = make_views()
    files = {
        "ori": tmp_path / "ori.json",
        "Q": tmp_path / "q.jsonl",
        "A": tmp_path / "a.parquet",
        "QA": tmp_path / "qa.jsonl",
    }
    files["ori"].write_text(json.dumps(views.ori))
    for v, rows in views.named().items():
        if v != "ori":
            write_rows(rows, files[v])
    args = SelectArguments(
        ori=str(files["ori"]),
        q=str(files["Q"]),
        a=str(files["A"]),
        qa=str(files["QA"]),
        output=str(tmp_path / "sel.parquet"),
    )
    config = SelectionArguments()
    res = run_select(args, config)
    assert res.counts == select_rows(views, SelectionArguments()).counts
    out = read_rows(tmp_path / "sel.parquet")
    assert [(r["source_index"], r["variant"]) for r in out] == [(0, "QA"), (4, "A"), (11, "QA"), (12, "A")]
    report = json.loads((tmp_path / "sel.selection.json").read_text())
    assert report["counts"] == res.counts and report["config"]["selection"]["policy"] == "paper"
    assert report["inputs"]["Q"]["reflection_status"] == {"ok": 11, "fallback": 1, "failed": 1}
    decisions = read_rows(tmp_path / "sel.decisions.jsonl")
    assert decisions == json.loads(json.dumps(res.decisions))
    for png in ("sel.funnel.png", "sel.hist.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (tmp_path / "sel.card.md").read_text()
    assert "| branch_1/cut_rifd | 1 |" not in card  # nested keys are indented
    assert "cut_rifd | 1 |" in card and "fallback 1" in card and "![Funnel](sel.funnel.png)" in card
    printed = format_result(res, config.policy)  # what `srt select` prints
    assert "branch_1" in printed and "wrote" in printed and "sel.card.md" in printed

    # a bad line in an input names the file and the row
    files["QA"].write_text(files["QA"].read_text().replace('{"row_index": 3', '{"row_index": 3,,', 1))
    with pytest.raises(SelectionInputError, match=r"qa\.jsonl row 3 \(line 4\): invalid JSON"):
        run_select(args, config)


def test_write_selection_with_nothing_kept(tmp_path: Path):
    views = make_views()
    args = SelectArguments(ori="ori.jsonl", output=str(tmp_path / "none.jsonl"))
    res = select_rows(views, SelectionArguments(top_k=0))
    paths = write_selection(
        res,
        args,
        SelectionArguments(top_k=0),
        views.named(),
    )
    assert read_rows(paths["output"]) == [] and set(paths) == {
        "output",
        "selection",
        "decisions",
        "funnel",
        "hist",
        "card",
    }
    assert "Budget: top_k = 0" in paths["card"].read_text()
