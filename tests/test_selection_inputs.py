"""What `srt select` refuses: statistics of the wrong type or range, and rewrites of other data whose indices line
up; each with the file, row and field, as a user error (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from srt_trainer.cli import main
from srt_trainer.errors import SRTUserError
from srt_trainer.selection import SelectionArguments, SelectionInputError, Views, select_rows
from tests.test_selection import make_views

FILES = {"ori": "ori.jsonl", "Q": "q.jsonl", "A": "a.jsonl", "QA": "qa.jsonl"}


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("0.2", r"is '0\.2' \(str\), not a number"),
        (True, r"is True \(bool\), not a number"),
        ("low", r"is 'low' \(str\), not a number"),
        ([0.5], r"is \[0\.5\] \(list\), not a number"),
        ({"v": 1}, r"is {'v': 1} \(dict\), not a number"),
        (-0.3, r"is -0\.3: r-IFD is a ratio of perplexities or losses, always above 0"),
        (0, r"is 0: r-IFD is a ratio"),
        (float("inf"), r"is inf, not finite"),
        (float("-inf"), r"is -inf, not finite"),
    ],
)
def test_bad_statistics_name_file_row_and_field(value, why):
    views = make_views()
    views.qa[4]["rifd"] = value
    with pytest.raises(SelectionInputError, match=rf"^qa\.jsonl \(QA\) row 4: field 'rifd' {why}"):
        select_rows(views, SelectionArguments(), FILES)


def test_good_statistics_pass():
    """Integers are numbers; null and NaN (the release's mark) are a missing statistic."""
    views = make_views()
    views.ori[0]["ifd"] = 1
    views.a[2]["ifd"] = None
    views.q[3]["rifd"] = float("nan")
    assert select_rows(views, SelectionArguments(), FILES).counts["rows"] == 13


def test_ifd_policy_checks_its_own_statistic():
    views = make_views()
    views.ori[6]["ifd_loss"] = "0.9"
    with pytest.raises(SelectionInputError, match=r"ori\.jsonl \(ori\) row 6: field 'ifd_loss' is '0\.9' \(str\)"):
        select_rows(Views(views.ori), SelectionArguments(policy="ifd"), FILES)
    views = make_views()
    for r in views.ori:
        del r["ifd_loss"]
    with pytest.raises(SelectionInputError, match=r"row 0: no field 'ifd_loss' \(nor 'loss_out_cond' and"):
        select_rows(Views(views.ori), SelectionArguments(policy="ifd"), FILES)
    views.ori[0].update(loss_out_cond=-1.0, loss_out_alone=2.0)
    for r in views.ori[1:]:
        r.update(loss_out_cond=1.0, loss_out_alone=2.0)
    with pytest.raises(SelectionInputError, match=r"row 0: field 'loss_out_cond' is -1\.0: a mean loss is 0 or more"):
        select_rows(Views(views.ori), SelectionArguments(policy="ifd"), FILES)


def test_rewrites_of_other_data_are_refused_at_the_first_row_that_differs():
    """Indices line up (both files number their rows 0..12) but A is not ori's pairs: A's row 5 and on hold
    other instructions."""
    views = make_views()
    for r in views.a[5:]:
        r["instruction"] = "Another data set: instruction"
    with pytest.raises(
        SelectionInputError,
        match=r"^a\.jsonl \(A\) row 5: field 'instruction' is 'Another data set: instruction', but ori\.jsonl "
        r"\(ori\) row 5 has 'ori instruction 5'; A must be ori's pairs with rewritten responses",
    ):
        select_rows(views, SelectionArguments(), FILES)
    views = make_views()
    views.qa[2]["input"] = "an input Q does not have"
    with pytest.raises(SelectionInputError, match=r"^qa\.jsonl \(QA\) row 2: field 'input' .* q\.jsonl \(Q\) row 2"):
        select_rows(views, SelectionArguments(), FILES)


def test_cli_exits_2_with_one_line(tmp_path: Path, capsys):
    views = make_views()
    views.a[3]["ifd"] = "low"
    paths = {}
    for name, rows in views.named().items():
        paths[name.lower()] = tmp_path / f"{name.lower()}.jsonl"
        paths[name.lower()].write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["select", *(x for k, p in paths.items() for x in (f"--{k}", str(p))), "--output", str(tmp_path / "o.jsonl")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"srt select: {paths['a']} (A) row 3: field 'ifd' is 'low' (str), not a number"
    assert not (tmp_path / "o.jsonl").exists()
    assert issubclass(SelectionInputError, SRTUserError)


def test_kept_rows_of_sharegpt_sources_are_pairs_not_conversations(tmp_path):
    """A kept row of ShareGPT data must train on the kept pair: its source conversation would make the training
    loader read the selection as ShareGPT again."""
    from srt_trainer.training.data import load_training_rows

    views = make_views()
    for r in views.ori:
        r["conversations"] = [{"from": "human", "value": r["instruction"]}, {"from": "gpt", "value": r["output"]}]
    res = select_rows(Views(views.ori), SelectionArguments(policy="ifd", top_k=3))
    assert len(res.rows) == 3 and all("conversations" not in r for r in res.rows)
    path = tmp_path / "selected.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in res.rows))
    trained = load_training_rows(path, None, "auto")
    assert [(r["instruction"], r["output"]) for r in trained] == [(r["instruction"], r["output"]) for r in res.rows]
