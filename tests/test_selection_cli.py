"""`srt select` end to end on real `srt score` outputs: real rows and rewrites built from them, scored by the
embedded student."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from srt_trainer.cli import main
from srt_trainer.io import read_rows
from tests.processes import lock_held_elsewhere

N = 8


def _restate(instruction: str, output: str) -> str:
    # a response that opens by restating its instruction implies it strongly (low r-IFD): the kind of
    # rewrite the student accepts
    return f"{instruction.rstrip('.?!')}: here is the answer.\n\n{output}"


@pytest.fixture(scope="module")
def scored_files(short_rows, embedded_dir, embedded_tokenizer, tmp_path_factory) -> dict[str, Path]:
    """ori = 8 real rows; Q = 8 other real rows (row 7 a teacher fallback, i.e. ori again); A = ori with restated or
    swapped responses; QA = Q with restated or lightly edited responses, one empty (no statistics).

    Short real rows and a bfloat16 student keep the four `srt score` runs to seconds on two CPU cores."""
    from srt_trainer.models import load_student
    from srt_trainer.models.config import SRTModelConfig
    from srt_trainer.scoring import ScoreArguments, ScoringArguments, run_score

    d = tmp_path_factory.mktemp("select")
    base, other = short_rows[:N], short_rows[N : 2 * N]
    q = [{**o, "source_index": i, "reflection_status": "ok"} for i, o in enumerate(other)]
    q[7] = {**base[7], "source_index": 7, "reflection_status": "fallback"}
    a = [
        {
            **b,
            "output": _restate(b["instruction"], b["output"]) if i % 2 == 0 else base[(i + 1) % N]["output"],
            "source_index": i,
            "reflection_status": "ok",
        }
        for i, b in enumerate(base)
    ]
    qa = [
        {
            **x,
            "output": _restate(x["instruction"], x["output"]) if i % 2 == 0 else x["output"] + " I hope it helps.",
            "source_index": i,
            "reflection_status": "ok",
        }
        for i, x in enumerate(q)
    ]
    qa[5]["output"] = ""
    model = load_student(embedded_dir, dtype="bfloat16", device="cpu")
    files = {}
    for name, rows in (("ori", base), ("q", q), ("a", a), ("qa", qa)):
        data = d / f"{name}.json"
        data.write_text(json.dumps(rows))
        files[name] = d / f"{name}.scores.jsonl"
        run_score(
            ScoreArguments(data=str(data), output=str(files[name]), plot=False),
            ScoringArguments(),
            SRTModelConfig(dtype="bfloat16"),
            model=model,
            tokenizer=embedded_tokenizer,
        )
    return files


def expected_selection(files: dict[str, Path], winners: bool = False) -> list[tuple[int, str]]:
    """The rule written out again, as the release runs it (SPEC 1.3): a missing statistic is NaN, so every
    comparison with it is false; a teacher fallback is never accepted."""
    ori, q, a, qa = (read_rows(files[k]) for k in ("ori", "q", "a", "qa"))
    nan = float("nan")
    keep = []
    for i in range(len(ori)):
        o, x, y, z = ({k: nan if r[k] is None else r[k] for k in ("ifd", "rifd")} for r in (ori[i], q[i], a[i], qa[i]))
        fallback = q[i]["reflection_status"] == "fallback"
        if not fallback and x["ifd"] > o["ifd"]:
            pick = ("QA", z) if z["rifd"] < x["rifd"] else (("Q", x) if winners else None)
        else:
            pick = ("A", y) if y["rifd"] < o["rifd"] else (("ori", o) if winners else None)
        if pick and pick[1]["rifd"] < 1 and pick[1]["ifd"] < 1:
            keep.append((i, pick[0]))
    return keep


def _select(files: dict[str, Path], output: Path, *extra: str) -> int:
    args = ["select", *(a for k in ("ori", "q", "a", "qa") for a in (f"--{k}", str(files[k]))), "--output", str(output)]
    return main([*args, *extra])


def test_srt_select_end_to_end(scored_files, tmp_path, capsys):
    out = tmp_path / "selected.jsonl"
    assert _select(scored_files, out) == 0
    printed = capsys.readouterr().out
    rows = read_rows(out)
    expected = expected_selection(scored_files)
    assert [(r["source_index"], r["variant"]) for r in rows] == expected
    views = {"QA": read_rows(scored_files["qa"]), "A": read_rows(scored_files["a"])}
    for r in rows:
        src = views[r["variant"]][r["source_index"]]
        assert (r["instruction"], r["input"], r["output"]) == (src["instruction"], src["input"], src["output"])
        assert r["ifd"] == src["ifd"] < 1 and r["rifd"] == src["rifd"] < 1 and r["branch"] in (1, 3)

    report = json.loads((tmp_path / "selected.selection.json").read_text())
    c = report["counts"]
    assert c["rows"] == N == c["judged"]
    assert c["judged"] == sum(c[f"branch_{b}"] for b in (1, 2, 3, 4))
    for b in (1, 3):
        assert c[f"branch_{b}"] == c[f"branch_{b}/cut_rifd"] + c[f"branch_{b}/cut_ifd"] + c[f"branch_{b}/passed"]
    assert c["passed_thresholds"] == c["kept"] == len(rows) == c["kept/QA"] + c["kept/A"]
    assert c["reflection_status/Q/fallback"] == 1 and c["unchanged_rewrites/Q"] == 1
    assert report["inputs"]["ori"]["student"]["model"] == "embedded"  # from the score summary beside the input

    decisions = read_rows(tmp_path / "selected.decisions.jsonl")
    assert len(decisions) == N and decisions[7]["branch"] in (3, 4)  # the fallback Q is never "accepted"
    assert [d["source_index"] for d in decisions] == list(range(N))
    # only QA row 5 lacks statistics (an empty response): where Q won, its comparison is read as false
    nulls = [d for d in decisions if d.get("null_comparisons")]
    assert c["null_comparisons"] == len(nulls) <= 1
    for d in nulls:
        assert d["source_index"] == 5 and d["branch"] == 2
        assert d["null_comparisons"] == ["rIFD(QA) < rIFD(Q) read as false: QA has no rIFD (empty response)"]

    for png in ("funnel", "hist"):
        with Image.open(tmp_path / f"selected.{png}.png") as im:
            im.verify()
            assert im.format == "PNG" and im.size[0] > 600
    card = (tmp_path / "selected.card.md").read_text()
    assert f"{len(rows)} instruction-response pairs selected by the student from {N} source rows" in card
    assert "model `embedded`" in card and "dtype `bfloat16`" in card and "fallback 1" in card
    assert f"| judged | {c['judged']} |" in card and "![Funnel](selected.funnel.png)" in card
    for line in ("branch_1", "branch_4", "passed_thresholds", f"wrote {out} ({len(rows)} rows)"):
        assert line in printed


def test_srt_select_switch_and_budget(scored_files, tmp_path):
    out = tmp_path / "top.parquet"
    assert _select(scored_files, out, "--keep_unaccepted_winners", "--top_k", "2", "--no_plot", "--no_data_card") == 0
    candidates = expected_selection(scored_files, winners=True)
    by_view = {"ori": "ori", "Q": "q", "A": "a", "QA": "qa"}
    ifd = {(i, v): read_rows(scored_files[by_view[v]])[i]["ifd"] for i, v in candidates}
    top = sorted(sorted(candidates, key=lambda k: (-ifd[k], k[0]))[:2])
    assert [(r["source_index"], r["variant"]) for r in read_rows(out)] == top
    c = json.loads((tmp_path / "top.selection.json").read_text())["counts"]
    assert c["passed_thresholds"] == len(candidates) and c["budget_cut"] == c["budget_cut/top_k"] == len(candidates) - 2
    assert not (tmp_path / "top.funnel.png").exists() and not (tmp_path / "top.card.md").exists()


def test_srt_select_refuses_misaligned_inputs(scored_files, tmp_path, capsys):
    short = tmp_path / "a_short.jsonl"
    lines = scored_files["a"].read_text(encoding="utf-8").rstrip("\n").split("\n")  # JSONL: "\n" ends a row
    short.write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")
    files = {**scored_files, "a": short}
    assert _select(files, tmp_path / "x.jsonl") == 2
    err = capsys.readouterr().err
    assert f"srt select: {short} (A): {N - 1} rows, but {scored_files['ori']} (ori) has {N}" in err
    assert not (tmp_path / "x.jsonl").exists()


def test_srt_select_refuses_an_output_another_run_holds(scored_files, tmp_path, capsys):
    """A second selection into an output another run is writing stops at once with a message, writing nothing."""
    out = tmp_path / "selected.jsonl"
    with lock_held_elsewhere(out):
        assert _select(scored_files, out) == 2
        assert "another run is writing this selection" in capsys.readouterr().err and not out.exists()
    assert _select(scored_files, out) == 0 and out.exists()


def test_srt_select_ifd_policy_needs_only_the_originals(scored_files, tmp_path, capsys):
    assert main(["select", "--ori", str(scored_files["ori"]), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "srt select: --q, --a, --qa required (the 'paper' policy)" in capsys.readouterr().err
    out = tmp_path / "cherry.jsonl"
    assert main(["select", "--policy", "ifd", "--ori", str(scored_files["ori"]), "--output", str(out)]) == 0
    ori = read_rows(scored_files["ori"])  # Cherry_LLM's IFD: the loss ratio, at most 1
    assert [r["source_index"] for r in read_rows(out)] == [i for i, r in enumerate(ori) if r["ifd_loss"] <= 1]


# -- inputs that cannot be a selection's: ori again for a rewrite, no rows ----------------------------------------


def _select_argv(files: dict[str, Path], output: Path) -> list[str]:
    argv = ["select"]
    for view, path in files.items():
        argv += [f"--{view.lower()}", str(path)]
    return [*argv, "--output", str(output), "--no_plot", "--no_data_card"]


@pytest.mark.parametrize("how", ["same file", "symbolic link", "copy"])
@pytest.mark.parametrize("view", ["A", "QA"])
def test_srt_select_refuses_a_rewrite_that_is_ori(tmp_path, capsys, how, view):
    from srt_trainer.io import write_rows
    from tests.test_selection import make_views

    files = {v: write_rows(rows, tmp_path / f"{v.lower()}.jsonl") for v, rows in make_views().named().items()}
    if how == "same file":
        files[view] = files["ori"]
    elif how == "symbolic link":
        files[view] = tmp_path / f"{view.lower()}.link.jsonl"
        files[view].symlink_to(files["ori"])
    else:
        files[view] = write_rows(read_rows(files["ori"]), tmp_path / f"{view.lower()}.copy.jsonl")
    if view == "QA":  # QA must share Q's instructions: a Q that is ori too lets a copy of ori through that check
        files["Q"] = write_rows(read_rows(files["ori"]), tmp_path / "q.copy.jsonl")
    out = tmp_path / "selected.jsonl"
    assert main(_select_argv(files, out)) == 2
    err = capsys.readouterr().err
    assert f"({view})" in err and "(ori)" in err and "nothing would be kept" in err
    assert ("same file" in err) == (how != "copy") and not out.exists()


def test_srt_select_takes_a_rewrite_file_of_all_fallbacks(tmp_path):
    """A teacher that fell back on every row gives A rows with ori's texts, but they are its rows, not ori's file:
    judged (every rewrite unchanged, none accepted), not refused."""
    from srt_trainer.io import write_rows
    from tests.test_selection import make_views

    views = make_views().named()
    views["A"] = [{**o, "source_index": i, "reflection_status": "fallback"} for i, o in enumerate(views["ori"])]
    files = {v: write_rows(rows, tmp_path / f"{v.lower()}.jsonl") for v, rows in views.items()}
    assert main(_select_argv(files, tmp_path / "selected.jsonl")) == 0
    counts = json.loads((tmp_path / "selected.selection.json").read_text())["counts"]
    assert counts["unchanged_rewrites/A"] == len(views["ori"]) and counts["kept/A"] == 0


def test_srt_select_stops_on_an_empty_input(tmp_path, capsys):
    files = {v: tmp_path / f"{v.lower()}.jsonl" for v in ("ori", "Q", "A", "QA")}
    for path in files.values():
        path.write_text("")
    out = tmp_path / "selected.jsonl"
    assert main(_select_argv(files, out)) == 2
    assert "ori.jsonl: contains no rows" in capsys.readouterr().err and not out.exists()
    assert not (tmp_path / "selected.lock").exists()  # a refused run leaves no lock file behind
    files["ori"].write_text('{"row_index": 0, "instruction": "x", "output": "y", "ifd": 0.5, "rifd": 0.5}\n')
    assert main(_select_argv(files, out)) == 2  # the others are still empty: not the same rows
    assert "q.jsonl (Q): 0 rows, but" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "ori.jsonl", "q.jsonl", "qa.jsonl"]


def test_srt_select_ifd_policy_stops_on_an_empty_ori(tmp_path, capsys):
    """The ifd policy reads ori alone; an empty one is refused as the paper policy refuses it: exit 2 naming the
    file, no output, no report and no lock file left behind."""
    ori = tmp_path / "ori.jsonl"
    ori.write_text("")
    out = tmp_path / "selected.jsonl"
    assert main(["select", "--policy", "ifd", "--ori", str(ori), "--output", str(out)]) == 2
    assert f"{ori}: contains no rows" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["ori.jsonl"]
