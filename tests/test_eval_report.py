"""`srt eval report`: the four evaluations' result files, as their tools write them, in one table per model with
the manifest of each number; bad files are one line naming file, line and field."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

from srt_trainer.cli import main as srt_main
from srt_trainer.evaluation.aggregate import aggregate_file
from srt_trainer.evaluation.manifest import endpoint_host


def _run(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = srt_main(["eval", "report", *args])
    return rc, out.getvalue(), err.getvalue()


def _mtbench(path: Path) -> list[dict]:
    """FastChat single-grade judgments: two models, two questions, both turns; one judgment failed (-1)."""
    rows = []
    for model, scores in (("tuned", [8, 7, 6, 9]), ("base", [5, 4, -1, 6])):
        for k, (qid, turn) in enumerate([(81, 1), (81, 2), (82, 1), (82, 2)]):
            prompt = "single-v1" if turn == 1 else "single-v1-multi-turn"
            rows.append(
                {
                    "question_id": qid,
                    "model": model,
                    "judge": ["gpt-4", prompt],
                    "user_prompt": "...",
                    "judgment": f"Rating: [[{scores[k]}]]",
                    "score": scores[k],
                    "turn": turn,
                    "tstamp": 0.0,
                }
            )
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_report_gathers_every_kind_with_its_manifest(tmp_path):
    # pairwise: reviews aggregated by srt eval aggregate's own code (A wins one item, ties one)
    reviews = tmp_path / "pair" / "reviews.jsonl"
    reviews.parent.mkdir()
    records = [
        {"id": 1, "review": "8 5\nA is better.", "review_reverse": "5 8\nA is better.", "generator_a": "tuned"},
        {"id": 2, "review": "7 7\nEven.", "review_reverse": "6 6\nEven.", "generator_b": "base", "judge": "gpt-4"},
    ]
    reviews.write_text("".join(json.dumps(r) + "\n" for r in records))
    judging = {"kind": "pairwise-judge", "judge": {"model": "gpt-4", "host": "api.openai.com"}, "seed": 0}
    (tmp_path / "pair" / "reviews.manifest.json").write_text(json.dumps(judging))  # as srt eval judge writes it
    pair = aggregate_file(reviews, plot=False).reports["json"]
    mt = tmp_path / "mt" / "model_judgment" / "gpt-4_single.jsonl"
    mt_rows = _mtbench(mt)
    board = tmp_path / "ae" / "leaderboard.csv"  # as alpaca_eval writes it
    board.parent.mkdir()
    board.write_text(
        ",win_rate,standard_error,mode,avg_length,n_wins,n_wins_base,n_draws,n_total,discrete_win_rate\n"
        "tuned,62.5,17.1,community,412,5,3,0,8,62.5\n"
    )
    harness = tmp_path / "results_2026.json"  # as the lm_eval command writes it
    harness.write_text(
        json.dumps(
            {
                "results": {"srt_mc": {"alias": "srt_mc", "acc,none": 0.35, "acc_stderr,none": 0.1094}},
                "n-shot": {"srt_mc": 2},
                "config": {"model": "hf", "model_args": "pretrained=/models/base,peft=/runs/tuned"},
            }
        )
    )
    out = tmp_path / "report" / "report.md"
    args = ["--pairwise", pair, "--mtbench", str(mt), "--alpacaeval", str(board.parent), "--harness", str(harness)]
    rc, stdout, stderr = _run([*args, "--output", str(out)])
    assert rc == 0, stderr

    data = json.loads(out.with_suffix(".json").read_text())
    models = data["models"]
    assert models["tuned"]["pairwise vs base (W/T/L)"] == "1/1/0"
    assert models["tuned"]["pairwise vs base (WS)"] == 1.5
    # MT-Bench as FastChat's show_result computes it: mean per turn and overall, the -1 left out
    for model in ("tuned", "base"):
        mine = [r for r in mt_rows if r["model"] == model and r["score"] != -1]
        for turn in (1, 2):
            scores = [r["score"] for r in mine if r["turn"] == turn]
            assert models[model][f"MT-Bench turn {turn}"] == sum(scores) / len(scores)
        assert models[model]["MT-Bench"] == sum(r["score"] for r in mine) / len(mine)
    assert data["details"]["base"]["mtbench"][0]["failed"] == 1 and models["base"]["MT-Bench scored"] == "3/4"
    assert models["tuned"]["AlpacaEval win rate (%)"] == 62.5
    assert models["base+tuned"]["srt_mc (2-shot)"] == 0.35

    # every source with its sha256; the pairwise one with its manifest, the others reported without one
    sources = {Path(s["path"]).name: s for s in data["sources"]}
    assert sources["gpt-4_single.jsonl"]["sha256"] == hashlib.sha256(mt.read_bytes()).hexdigest()
    # the aggregate's manifest holds the judging manifest beside the reviews, and the reviews' sha256
    aggregated = sources["reviews.aggregate.json"]["manifest"]
    assert aggregated["judge"]["host"] == "api.openai.com" and aggregated["judging"] == judging
    assert aggregated["files"]["reviews"]["sha256"] == hashlib.sha256(reviews.read_bytes()).hexdigest()
    assert sources["leaderboard.csv"]["manifest"] is None
    assert data["manifest"]["packages"]["srt-trainer"]
    text = out.read_text()
    assert "| tuned |" in text and "| base |" in text and "judge: gpt-4 at api.openai.com" in text
    assert f"judged as `{reviews.with_name('reviews.manifest.json')}` says:" in text
    assert "no manifest beside" in stdout


def test_bad_judgment_line_is_one_line(tmp_path):
    mt = tmp_path / "model_judgment" / "gpt-4_single.jsonl"
    mt.parent.mkdir()
    mt.write_text(json.dumps({"question_id": 81, "model": "m", "score": 5, "turn": 1}) + "\n")
    mt.write_text(mt.read_text() + json.dumps({"question_id": 82, "model": "m", "turn": 1}) + "\n")
    rc, _, stderr = _run(["--mtbench", str(mt), "--output", str(tmp_path / "r.md")])
    assert rc == 2 and stderr.strip() == f"srt eval report: {mt}: line 2: missing field 'score'"


def test_endpoint_host_keeps_no_credentials():
    assert endpoint_host("https://user:secret@api.example.com:8443/v1?key=abc") == "api.example.com:8443"
    assert endpoint_host("http://10.0.0.1:8000/v1,http://10.0.0.2:8000/v1") == "10.0.0.1:8000,10.0.0.2:8000"
    assert endpoint_host(None) is None
