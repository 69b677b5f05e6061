"""`srt agree`: rank agreement of two students' statistics and of their selections, checked by hand on small
arrays and end to end on the embedded student's fp32 and bf16 scores of the same real rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from srt_trainer.agreement.measure import read_statistics, statistic_agreement
from srt_trainer.cli import main as srt
from srt_trainer.io import read_rows, write_rows
from srt_trainer.selection import SelectionArguments, Views, select_rows

N = 8


def test_rank_correlations_and_top_overlap_by_hand():
    # b swaps the middle two of four: one discordant pair of six, sum of squared rank differences 2
    got = statistic_agreement(np.array([1.0, 2, 3, 4]), np.array([0.1, 0.3, 0.2, 0.4]), "ifd", top_p=0.5)
    assert got.rows == 4
    assert got.spearman == pytest.approx(1 - 6 * 2 / (4 * 15))
    assert got.kendall == pytest.approx((5 - 1) / 6)
    assert got.top_overlap == 0.5  # the two highest IFDs: rows 3 and 2 against rows 3 and 1
    one = statistic_agreement(np.array([1.0, 2, 3, 4]), np.array([0.1, 0.3, 0.2, 0.4]), "ifd", top_p=0.25)
    assert one.top_overlap == 1.0  # the highest: row 3 on both sides
    # r-IFD's top set is the lowest values: rows 0 and 1 against rows 0 and 2
    low = statistic_agreement(np.array([1.0, 2, 3, 4]), np.array([0.1, 0.3, 0.2, 0.4]), "rifd", top_p=0.5)
    assert low.top_overlap == 0.5
    # a missing value on either side leaves the row out; fewer than two rows have no correlation
    nan = float("nan")
    part = statistic_agreement(np.array([1.0, nan, 3, 4]), np.array([4.0, 2, nan, 1]), "ifd", top_p=1.0)
    assert (part.rows, part.spearman) == (2, pytest.approx(-1.0))
    assert statistic_agreement(np.array([nan, 1.0]), np.array([1.0, nan]), "ifd", 0.1).spearman is None


def test_files_of_different_rows_are_refused(tmp_path: Path):
    rows = [{"row_index": i, "instruction": f"q{i}", "input": "", "ifd": 0.5, "rifd": 0.5} for i in range(3)]
    a, b, short = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "short.jsonl"
    write_rows(rows, a)
    write_rows([*rows[:2], {**rows[2], "instruction": "other"}], b)
    write_rows(rows[:2], short)
    with pytest.raises(ValueError, match=r"b.jsonl row 3, field 'instruction': differs from .*a.jsonl row 3"):
        read_statistics(a, b)
    with pytest.raises(ValueError, match=r"short.jsonl has 2 rows"):
        read_statistics(a, short)
    assert srt(["agree", "--a", str(a), "--b", str(short), "--output", str(tmp_path / "x.json")]) == 2


@pytest.fixture(scope="module")
def two_precisions(short_rows, embedded_dir, embedded_tokenizer, tmp_path_factory) -> dict[str, dict[str, Path]]:
    """The four views of 8 short real rows (Q: other rows, A and QA: other responses), each scored by the embedded
    student in fp32 and in bf16."""
    from srt_trainer.models import load_student
    from srt_trainer.models.config import SRTModelConfig
    from srt_trainer.scoring import ScoreArguments, ScoringArguments, run_score

    d = tmp_path_factory.mktemp("agree")
    base, other = short_rows[:N], short_rows[N : 2 * N]
    views = {
        "ori": base,
        "q": [{**o, "source_index": i} for i, o in enumerate(other)],
        "a": [{**b, "output": base[(i + 1) % N]["output"], "source_index": i} for i, b in enumerate(base)],
        "qa": [{**o, "output": o["output"] + " That is all.", "source_index": i} for i, o in enumerate(other)],
    }
    files: dict[str, dict[str, Path]] = {}
    for dtype in ("float32", "bfloat16"):
        model = load_student(embedded_dir, dtype=dtype, device="cpu")
        files[dtype] = {}
        for name, rows in views.items():
            data = d / f"{name}.json"
            data.write_text(json.dumps(rows))
            files[dtype][name] = d / f"{name}.{dtype}.scores.jsonl"
            run_score(
                ScoreArguments(data=str(data), output=str(files[dtype][name]), plot=False),
                ScoringArguments(),
                SRTModelConfig(dtype=dtype),
                model=model,
                tokenizer=embedded_tokenizer,
            )
    return files


def test_srt_agree_on_fp32_and_bf16_scores_of_real_rows(two_precisions, tmp_path: Path, capsys):
    a, b = two_precisions["float32"], two_precisions["bfloat16"]
    out = tmp_path / "agreement.json"
    argv = ["agree", "--a", str(a["ori"]), "--b", str(b["ori"]), "--output", str(out), "--top_p", "0.25"]
    for side, files in (("a", a), ("b", b)):
        argv += [x for v in ("q", "a", "qa") for x in (f"--{side}_{v}", str(files[v]))]
    assert srt(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["rows"] == N and Path(report["plot"]).stat().st_size > 10_000
    by_stat = {s["statistic"]: s for s in report["statistics"]}
    # bf16 rounds the losses, not the order of rows this far apart: the ranks agree closely
    assert by_stat["ifd"]["rows"] == by_stat["rifd"]["rows"] == N
    assert by_stat["ifd"]["spearman"] > 0.9 and by_stat["rifd"]["spearman"] > 0.9
    assert 0 <= by_stat["ifd"]["top_overlap"] <= 1 and by_stat["ifd"]["top_p"] == 0.25
    d = report["decisions"]
    assert d["rows"] == N and 0 <= d["same_branch"] <= 1 and 0 <= d["same_kept_variant"] <= 1
    for side, files in (("a", a), ("b", b)):  # the rule as `srt select` runs it on each side's four views
        kept = select_rows(Views(*(read_rows(files[v]) for v in ("ori", "q", "a", "qa"))), SelectionArguments()).rows
        assert d[f"kept_{side}"] == len(kept)
    assert f"| ifd | {N} | {by_stat['ifd']['spearman']:.3f} |" in printed and "decisions (paper rule)" in printed
    # the same file against itself agrees exactly, decisions included
    same = tmp_path / "same.json"
    argv = ["agree", "--a", str(a["ori"]), "--b", str(a["ori"]), "--output", str(same), "--plot", "false"]
    argv += [x for side in "ab" for v in ("q", "a", "qa") for x in (f"--{side}_{v}", str(a[v]))]
    assert srt([*argv, "--min_spearman", "0.99"]) == 0
    exact = json.loads(same.read_text())
    assert [s["spearman"] for s in exact["statistics"]] == [pytest.approx(1.0)] * 2 and exact["passed"] is True
    assert exact["decisions"]["same_branch"] == exact["decisions"]["same_kept_variant"] == 1.0


def test_srt_agree_below_the_threshold_exits_2(two_precisions, tmp_path: Path, capsys):
    files = two_precisions["float32"]
    # ori's statistics against those of unrelated rows (Q): the ranks do not agree
    q_as_ori = tmp_path / "q_as_ori.jsonl"
    ori_rows = [json.loads(line) for line in files["ori"].read_text().splitlines()]
    q_rows = [json.loads(line) for line in files["q"].read_text().splitlines()]
    write_rows([{**o, "ifd": q["ifd"], "rifd": q["rifd"]} for o, q in zip(ori_rows, q_rows, strict=True)], q_as_ori)
    argv = ["agree", "--a", str(files["ori"]), "--b", str(q_as_ori), "--output", str(tmp_path / "r.json")]
    assert srt([*argv, "--min_spearman", "0.95", "--plot", "false"]) == 2
    err = capsys.readouterr().err
    assert "below --min_spearman 0.95" in err and "score the rest with the real student" in err
    assert json.loads((tmp_path / "r.json").read_text())["passed"] is False


def test_a_selection_by_a_proxy_states_the_agreement_in_its_card(two_precisions, tmp_path: Path, capsys):
    """The proxy workflow: bf16 stands in for fp32 once `srt agree` passes; `srt select` on the proxy's files with
    --agreement says so in the data card, numbers included; a file that is not a report is refused first."""
    real, proxy = two_precisions["float32"], two_precisions["bfloat16"]
    report = tmp_path / "agreement.json"
    argv = ["agree", "--a", str(real["ori"]), "--b", str(proxy["ori"]), "--output", str(report), "--plot", "false"]
    assert srt([*argv, "--min_spearman", "0.9"]) == 0
    measured = {s["statistic"]: s for s in json.loads(report.read_text())["statistics"]}
    out = tmp_path / "selected.jsonl"
    views = [x for v in ("ori", "q", "a", "qa") for x in (f"--{v}", str(proxy[v]))]
    assert srt(["select", "--output", str(out), "--plot", "false", "--agreement", str(report), *views]) == 0
    card = (tmp_path / "selected.card.md").read_text()
    assert f"stands in for the one that scored `{real['ori'].name}`" in card
    assert f"measured on {N} rows" in card and f"IFD Spearman {measured['ifd']['spearman']:.3f}" in card
    assert "Proxy agreement threshold 0.9: passed." in card
    bad = tmp_path / "bad.json"
    bad.write_text('{"rows": 3}')
    other = tmp_path / "other.jsonl"
    assert srt(["select", "--output", str(other), "--agreement", str(bad), *views]) == 2
    assert f"--agreement {bad}: not an `srt agree` report" in capsys.readouterr().err and not other.exists()


def test_files_without_scores_are_refused(tmp_path: Path, capsys):
    """A file with no score columns, scores as text, or no score on any row is no score output: refused with the
    file, row and field, not measured over zero rows."""
    rows = [{"row_index": i, "instruction": f"q{i}", "input": "", "ifd": 0.5 + i / 10, "rifd": 0.9} for i in range(3)]
    a = write_rows(rows, tmp_path / "a.jsonl")
    cases = {
        "plain": ([{k: r[k] for k in ("row_index", "instruction", "input")} for r in rows], "row 1: no field 'ifd'"),
        "text": ([{**r, "rifd": str(r["rifd"])} for r in rows], "row 1, field 'rifd': is '0.9' (str), not a number"),
        "nulls": ([{**r, "ifd": None, "rifd": None} for r in rows], "none of its 3 rows has a score"),
    }
    for name, (b_rows, message) in cases.items():
        b = write_rows(b_rows, tmp_path / f"{name}.jsonl")
        out = tmp_path / f"{name}.json"
        assert srt(["agree", "--a", str(a), "--b", str(b), "--output", str(out), "--plot", "false"]) == 2
        assert f"{b}" in (err := capsys.readouterr().err) and message in err, err
        assert not out.exists()
