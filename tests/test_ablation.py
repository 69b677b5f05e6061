"""``srt ablate``: every arm selected at one size, trained, answered and judged against ori; one table with
intervals; a real SIGKILL part-way and a rerun that neither retrains an arm nor asks the judge again.

The student is the tiny random Llama (one optimizer step per arm); the judge is a scripted loopback endpoint that
writes two scores on its first line (the pairwise reviewer's format) and a ``[[N]]`` rating (MT-Bench's), derived
from the prompt, so that the numbers vary and can be recomputed from the files.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from srt_trainer.ablation.config import ARMS, AblateArguments, AblationConfigError
from srt_trainer.ablation.held_out import HeldOutOverlapError, check_no_overlap, load_held_out, response_losses
from srt_trainer.ablation.uncertainty import bootstrap_mean, normal_interval, paired_difference, winning_score
from srt_trainer.io import read_rows, write_rows
from tests.processes import kill_when
from tests.serving import SlowTeacher

BIN = Path(sys.executable).parent
ITEMS = 2 * 5  # eval_limit 2 of each of the five test sets
QUESTIONS = 2  # mtbench_limit: two questions, two turns each


# --- the uncertainty module against hand computations -------------------------------------------------------


def test_two_items_give_the_extremes_as_the_interval():
    # two items, values 0 and 1: a resample's mean is 0 (1/4), 1/2 (1/2) or 1 (1/4), so the 2.5% and 97.5%
    # percentiles of the bootstrap distribution are 0 and 1
    est = bootstrap_mean([0.0, 1.0], n_resamples=4000, seed=3)
    assert (est.value, est.low, est.high, est.n) == (0.5, 0.0, 1.0, 2)


def test_winning_score_is_the_rule_with_its_interval():
    outcomes = ["win"] * 30 + ["tie"] * 10 + ["lose"] * 10
    est = winning_score(outcomes, n_resamples=20_000, seed=1)
    assert est.value == pytest.approx((30 - 10) / 50 + 1)
    # by hand: values +1 (30), 0 (10), -1 (10); mean 0.4, sd sqrt(0.8 - 0.16) = 0.8; normal 95%: ±1.96·0.8/√50
    half = 1.96 * 0.8 / np.sqrt(50)
    assert est.low == pytest.approx(1.4 - half, abs=0.03) and est.high == pytest.approx(1.4 + half, abs=0.03)
    assert est.excludes is True and est.reference == 1.0  # 1.0 lies below the interval
    even = winning_score(["win", "lose"] * 10, seed=1)
    assert even.value == 1.0 and even.low < 1.0 < even.high and even.excludes is False


def test_paired_difference_resamples_pairs():
    a = [3.0, 5.0, 7.0, 9.0]
    shifted = paired_difference([x + 0.5 for x in a], a)  # every pair differs by 0.5: no spread at all
    assert (shifted.value, shifted.low, shifted.high, shifted.excludes) == (0.5, 0.5, 0.5, True)
    same = paired_difference(a, a)
    assert (same.value, same.low, same.high, same.excludes) == (0.0, 0.0, 0.0, False)
    with pytest.raises(ValueError, match="differ in length"):
        paired_difference([1.0], [1.0, 2.0])


def test_seeded_and_degenerate_cases():
    x = [1.0, 4.0, 2.0, 8.0, 5.0]
    assert bootstrap_mean(x, seed=7) == bootstrap_mean(x, seed=7)
    assert bootstrap_mean([], seed=0).value is None and bootstrap_mean([2.0]).low is None
    est = normal_interval(0.5, 0.1, reference=0.0)  # 0.5 ± 1.96·0.1
    assert est.low == pytest.approx(0.304, abs=1e-3) and est.high == pytest.approx(0.696, abs=1e-3) and est.excludes
    assert est.format() == "0.50 [0.30, 0.70]*"


def test_arms_are_checked_and_ordered():
    assert AblateArguments(test_sets=["x"], arms=["longest", "paper"]).arms == ["ori", "paper", "longest"]
    assert AblateArguments(test_sets=["x"]).arms == list(ARMS)
    with pytest.raises(AblationConfigError, match="did you mean random"):
        AblateArguments(test_sets=["x"], arms=["randm"])
    with pytest.raises(AblationConfigError, match="nothing to measure the arms by"):
        AblateArguments()
    assert AblateArguments(held_out="held_out.jsonl").test_sets == []  # a judge-free ablation


def test_a_table_without_judged_test_sets_has_no_pairwise_columns():
    from srt_trainer.ablation.table import ArmRow, format_table

    loss = bootstrap_mean([1.0, 1.2, 0.9, 1.1], 0.95, 1000, 0)
    header = format_table([ArmRow("ori", 4, 1, held_out=loss), ArmRow("paper", 4, 1, held_out=loss)]).splitlines()[0]
    assert "held-out loss" in header and "winning score" not in header and "win / tie / lose" not in header
    judged = ArmRow("paper", 4, 1, held_out=loss, counts={"win": 1, "tie": 2, "lose": 1, "failed": 0})
    assert "win / tie / lose" in format_table([ArmRow("ori", 4, 1, held_out=loss), judged])


def test_the_chart_shows_paired_differences_and_the_noise_floor(tmp_path):
    from srt_trainer.ablation.table import ArmRow, chart_panels, plot_table

    ori = [2.0, 3.0, 1.0, 4.0, 2.5, 3.5]
    arms = {"ori": ori, "random": [x - 0.01 for x in ori], "paper": [x + 0.2 for x in ori]}
    table = [
        ArmRow(
            arm,
            6,
            1,
            held_out=bootstrap_mean(losses, 0.95, 1000, 0),
            held_out_vs_ori=None if arm == "ori" else paired_difference(losses, ori, 0.95, 1000, 0),
        )
        for arm, losses in arms.items()
    ]
    (panel,) = chart_panels(table)
    # the arms' paired differences (tight: every item moved alike), not their own wide intervals around ori's line
    assert list(panel.estimates) == ["random", "paper"] and panel.line == 0.0
    assert panel.estimates["paper"].value == pytest.approx(0.2)
    assert panel.estimates["paper"].high - panel.estimates["paper"].low < 1e-9
    assert panel.band == pytest.approx(0.01) and panel.marked == {"ori": False, "random": True, "paper": True}
    # with ori alone nothing is compared: its own number, no band
    (alone,) = chart_panels(table[:1])
    assert alone.estimates == {"ori": table[0].held_out} and alone.line == table[0].held_out.value
    assert alone.band is None
    assert plot_table(table, tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"


# --- the held-out loss against a plain forward pass -------------------------------------------------------------


def plain_response_loss(model, tokenizer, row: dict, max_length: int) -> tuple[float, int]:
    """The mean token NLL of the response given the prompt from one ordinary forward with ``labels`` (the prompt's
    tokens masked), and the number of response tokens: computed without the scorer."""
    import torch

    from srt_trainer.templates import get_template

    prompt = get_template("vicuna", tokenizer).prompt(row["instruction"], row["input"])
    start = len(tokenizer(prompt)["input_ids"])
    ids = tokenizer(prompt + row["output"])["input_ids"][:max_length]
    labels = [-100] * start + ids[start:]
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
    return float(loss), len(ids) - start


def training_rows(alpaca_rows: list[dict], n: int = 16) -> list[dict]:
    """The real rows ``variant_files`` builds its four views from (and ``held_out_file`` keeps out)."""
    return [r for r in alpaca_rows if 40 < len(r["output"]) < 300][:n]


def held_out_file(alpaca_rows: list[dict], path: Path, n: int = 6) -> Path:
    """``n`` real rows the arms of ``variant_files`` never see (from the end of the slice), one of them with an
    input, and a row without a reference answer (rejected)."""
    trained = {r["instruction"] for r in training_rows(alpaca_rows)}
    rows = [
        {k: r[k] for k in ("instruction", "input", "output")}
        for r in alpaca_rows[-60:]
        if len(r["output"]) < 400 and r["instruction"] not in trained  # the slice repeats a few rows
    ]
    rows = [r for r in rows if r["input"]][:1] + [r for r in rows if not r["input"]][: n - 1]
    return write_rows([*rows, {"instruction": "Name a colour.", "input": "", "output": ""}], path)


def test_held_out_loss_is_the_loss_of_a_plain_forward(tiny_models, alpaca_rows, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from srt_trainer.scoring.config import ScoringArguments
    from srt_trainer.templates import get_template

    path = held_out_file(alpaca_rows, tmp_path / "held_out.jsonl")
    loaded = load_held_out(path, tmp_path / "rejects.jsonl")
    assert len(loaded.rows) == 6 and [r["row"] for r in read_rows(tmp_path / "rejects.jsonl")] == [6]
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    options = ScoringArguments(score_max_length=200).scorer_options()  # two long rows are cut, as the scorer cuts
    got = response_losses(model, tokenizer, get_template("vicuna", tokenizer), loaded.rows, options)
    want = [plain_response_loss(model, tokenizer, r, 200) for r in loaded.rows]
    assert [n for _, n in got] == [n for _, n in want] and min(n for _, n in want) > 0
    assert [loss for loss, _ in got] == pytest.approx([loss for loss, _ in want], rel=1e-4)

    # a held-out row that an arm trains on is refused, naming the row and the arm
    arm = write_rows([{**loaded.rows[2], "source_index": 0}], tmp_path / "selected.jsonl")
    with pytest.raises(HeldOutOverlapError, match=r"held_out.jsonl: row 2 .* the paper arm's training data"):
        check_no_overlap(loaded, {"paper": arm})
    check_no_overlap(loaded, {"paper": write_rows([{**loaded.rows[2], "output": "other"}], tmp_path / "o.jsonl")})


# --- the whole command ----------------------------------------------------------------------------------------


def _scores(prompt: str) -> tuple[int, int]:
    h = int(hashlib.sha256(prompt.encode()).hexdigest(), 16)
    return 1 + h % 10, 1 + (h // 10) % 10


class ScriptedJudge:
    """Answers every request at once with scores derived from its prompt. In its first phase, once ``hold_after``
    exists (the state file of a finished step: the run sends its requests one step after another, so every later
    request comes after it), it holds every request unanswered, and the run is killed meanwhile: the requests
    answered in each phase are then known exactly."""

    def __init__(self, hold_after: Path) -> None:
        self.hold_after = hold_after
        self.phase = 1
        self.answered = {1: 0, 2: 0}
        self.lock = threading.Lock()
        self.never = threading.Event()
        self.server = SlowTeacher(0.0, reply=self.reply)

    def reply(self, prompt: str) -> str:
        with self.lock:
            phase = self.phase
            hold = phase == 1 and self.hold_after.is_file()
            if not hold:
                self.answered[phase] += 1
        if hold:
            self.never.wait()  # held until the test ends: its client was killed
            return "1 1"
        a, b = _scores(prompt)
        return f"{a} {b}\nRating: [[{a}]]. Both assistants answered."

    def close(self) -> None:
        self.never.set()
        self.server.close()


def _cached(out: Path) -> int:
    """The judge's answers in every cache of the run (one line each: the pairwise reviews' caches and MT-Bench's)."""
    caches = [*out.glob("arms/*/reviews.cache.jsonl"), *out.glob("mtbench/*.judge-cache.jsonl")]
    return sum(len(p.read_text().splitlines()) for p in caches)


def variant_files(alpaca_rows: list[dict], folder: Path, n: int = 16) -> dict[str, Path]:
    """Four variant files of ``n`` real Alpaca rows, no teacher needed: Q asks the instruction again in other words,
    A answers with the response's first sentence, QA is Q's instruction with that answer."""
    rows = training_rows(alpaca_rows, n)
    views: dict[str, list[dict]] = {"ori": [], "Q": [], "A": [], "QA": []}
    for i, r in enumerate(rows):
        asked = f"Answer briefly and precisely. {r['instruction']}"
        short = r["output"].split("\n")[0].split(". ")[0].rstrip(".") + "."
        views["ori"].append({"instruction": r["instruction"], "input": r["input"], "output": r["output"]})
        views["Q"].append({"instruction": asked, "input": r["input"], "output": r["output"], "source_index": i})
        views["A"].append({"instruction": r["instruction"], "input": r["input"], "output": short, "source_index": i})
        views["QA"].append({"instruction": asked, "input": r["input"], "output": short, "source_index": i})
    folder.mkdir(parents=True, exist_ok=True)
    return {v: write_rows(rs, folder / f"{v.lower()}.jsonl") for v, rs in views.items()}


def _command(
    files: dict[str, Path], model: Path, out: Path, judge_url: str, data_dir: Path, plot: bool, held_out: Path
) -> list[str]:
    mt = data_dir / "mt_bench"
    return [
        f"--held_out={held_out}",
        *(f"--{v.lower()}_data={p}" for v, p in files.items()),
        f"--model={model}",
        "--use_peft=true",
        "--lora_r=4",
        "--lora_alpha=8",
        "--lora_target_modules",
        "q_proj",
        "v_proj",
        "--max_steps=1",
        "--learning_rate=0.02",  # one step that moves the random student: the arms answer differently
        "--per_device_train_batch_size=2",
        "--global_batch_size=2",
        "--max_length=128",
        "--score_max_length=256",
        "--report_to=none",
        "--activation_checkpointing=false",
        "--dataloader_num_workers=0",
        "--warmup_steps=0",
        "--seed=0",
        "--ifd_threshold=100",
        "--rifd_threshold=100",
        f"--test_sets={data_dir / 'eval'}",
        "--eval_limit=2",
        "--eval_max_new_tokens=6",
        f"--mtbench_questions={mt / 'question.jsonl'}",
        f"--mtbench_judge_prompts={mt / 'judge_prompts.jsonl'}",
        f"--mtbench_reference_answers={mt / 'reference_answer' / 'reference.jsonl'}",
        f"--mtbench_limit={QUESTIONS}",
        "--mtbench_max_new_tokens=6",
        "--teacher=openai",
        f"--base_url={judge_url}",
        "--teacher_model=judge",
        "--bootstrap_resamples=2000",
        f"--plot={str(plot).lower()}",
        f"--output_dir={out}",
    ]


def _outcome(record: dict) -> str:
    """The paired rule, recomputed from the judge's raw texts (A is Assistant 1 in ``review``, 2 in the reverse)."""
    a1, b1 = map(float, record["review"].splitlines()[0].split())
    b2, a2 = map(float, record["review_reverse"].splitlines()[0].split())
    total = np.sign(a1 - b1) + np.sign(a2 - b2)
    return "win" if total > 0 else "lose" if total < 0 else "tie"


def test_ablation_end_to_end_resumes_after_a_kill(tiny_models, alpaca_rows, data_dir, tmp_path, monkeypatch):
    """The whole command on the tiny student, killed for real once two arms are judged, then run again."""
    from srt_trainer.cli import main

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    files = variant_files(alpaca_rows, tmp_path / "data")
    held_out = held_out_file(alpaca_rows, tmp_path / "data" / "held_out.jsonl")
    out = tmp_path / "ablate"
    second_judged = out / "arms" / "response_only" / "state" / "judge.json"
    judge = ScriptedJudge(hold_after=second_judged)
    try:
        argv = _command(files, tiny_models["llama"], out, judge.server.base_url, data_dir, False, held_out)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        kill_when([str(BIN / "srt"), "ablate", *argv], second_judged.is_file, timeout=900, env=env)
        assert not (out / "ablation.json").exists()
        assert judge.answered[1] == _cached(out) > 0  # three arms graded, two of them judged against ori
        adapters = {arm: out / "arms" / arm / "model" / "adapter_model.safetensors" for arm in ARMS}
        trained = {arm: p.stat().st_mtime_ns for arm, p in adapters.items() if p.is_file()}
        assert set(trained) == set(ARMS)  # every arm was trained before the evaluations began
        losses = {a: out / "arms" / a / "held_out.jsonl" for a in ("untuned", "ori", "instruction_only")}
        scored = {a: p.stat().st_mtime_ns for a, p in losses.items()}  # before the first arm was judged

        with judge.lock:
            judge.phase = 2
        argv = _command(files, tiny_models["llama"], out, judge.server.base_url, data_dir, True, held_out)
        assert main(["ablate", *argv]) == 0
    finally:
        judge.close()

    # resumed: no arm trained again, no request the judge answered asked again
    assert {arm: p.stat().st_mtime_ns for arm, p in adapters.items()} == trained
    assert {a: p.stat().st_mtime_ns for a, p in losses.items()} == scored  # nor a held-out loss computed again
    assert judge.answered[1] + judge.answered[2] == _cached(out)  # every answer asked for once, and kept

    result = json.loads((out / "ablation.json").read_text())
    paper_kept = len(read_rows(out / "arms" / "paper" / "selected.jsonl"))
    sizes = {arm: len(read_rows(out / "arms" / arm / "selected.jsonl")) for arm in ARMS}
    assert 0 < paper_kept < 16 and set(sizes.values()) == {paper_kept} and result["rows"] == sizes
    assert result["equal_size"] is True
    table = {row["arm"]: row for row in result["table"] if row["arm"] in ARMS}
    assert [row["arm"] for row in result["table"]] == [*ARMS, "untuned"]
    judged = json.loads((out / "mtbench" / "model_judgment" / "judge_single.jsonl").read_text().splitlines()[0])
    assert judged["judge"][0] == "judge"
    single_rows = read_rows(out / "mtbench" / "model_judgment" / "judge_single.jsonl")
    for arm in ARMS:
        state = json.loads((out / "arms" / arm / "state" / "train.json").read_text())
        assert state["result"]["global_step"] == 1 == table[arm]["train_steps"]
        answers = read_rows(out / "arms" / arm / "answers.jsonl")
        assert len(answers) == ITEMS and {a["generator"] for a in answers} == {arm}
        # MT-Bench: each question's mean grade, from FastChat's judgment file
        per_question: dict[int, list[float]] = {}
        for r in single_rows:
            if r["model"] == arm:
                per_question.setdefault(r["question_id"], []).append(r["score"])
        means = [np.mean(s) for s in per_question.values()]
        assert len(means) == QUESTIONS and table[arm]["mtbench"]["value"] == pytest.approx(np.mean(means))
        if arm == "ori":
            assert table[arm]["winning_score"] is None
            continue
        records = read_rows(out / "arms" / arm / "reviews.jsonl")
        outcomes = [_outcome(r) for r in records]
        counts = {k: outcomes.count(k) for k in ("win", "tie", "lose")}
        assert table[arm]["counts"] == counts | {"failed": 0}
        ws = table[arm]["winning_score"]
        assert ws["value"] == pytest.approx((counts["win"] - counts["lose"]) / ITEMS + 1) and ws["n"] == ITEMS
        assert ws["low"] <= ws["value"] <= ws["high"] and ws["excludes"] == (not ws["low"] <= 1.0 <= ws["high"])
    # the held-out loss: ori's tuned model (the tiny student with its adapter) against a plain forward pass, every
    # arm's mean and paired difference to ori from its per-item file, and the untuned student's row
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    base = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    ori_model = PeftModel.from_pretrained(base, str(out / "arms" / "ori" / "model")).eval()
    held = load_held_out(held_out, tmp_path / "rejects.jsonl").rows
    item = {a: [r["loss"] for r in read_rows(out / "arms" / a / "held_out.jsonl")] for a in [*ARMS, "untuned"]}
    want = [plain_response_loss(ori_model, tokenizer, r, 256)[0] for r in held]
    assert len(want) == 6 and item["ori"] == pytest.approx(want, rel=1e-4)
    # training moved the losses (one LoRA step on the tiny student: by about 1e-3, far above fp32 rounding)
    assert np.max(np.abs(np.subtract(item["untuned"], item["ori"]))) > 1e-4
    table["untuned"] = next(r for r in result["table"] if r["arm"] == "untuned")
    for arm, losses in item.items():
        assert table[arm]["held_out_loss"]["value"] == pytest.approx(np.mean(losses))
        diff = table[arm]["held_out_loss_vs_ori"]
        if arm == "ori":
            assert diff is None
        else:
            assert diff["value"] == pytest.approx(np.mean(np.subtract(losses, item["ori"])))
            assert diff["low"] <= diff["value"] <= diff["high"] and diff["n"] == 6
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((out / "ablation.manifest.json").read_text())
    assert manifest["kind"] == "ablation" and manifest["rows"] == sizes and manifest["judge"]["model"] == "judge"
    markdown = (out / "ablation.md").read_text()
    assert all(f"| {arm} | {paper_kept} | 1 |" in markdown for arm in ARMS)
    random_rows = {r["instruction"] for r in read_rows(out / "arms" / "random" / "selected.jsonl")}
    assert random_rows != {r["instruction"] for r in read_rows(out / "arms" / "ori" / "selected.jsonl")}
    assert "ori vs random: the difference two random draws make" in markdown
    assert "held-out loss random − ori" in markdown and "| untuned | - | - |" in markdown


def test_from_the_original_pairs_alone_the_run_reflects_first_and_needs_no_judge(
    tiny_models, alpaca_rows, tmp_path, monkeypatch
):
    """--ori_data alone: Q, A and QA are made by the teacher of --reflect_teacher_config (a scripted endpoint that
    writes tagged rewrites) before scoring; with --held_out and no test set, no judge is asked anything. A rerun
    asks the teacher nothing again."""
    from srt_trainer.cli import main
    from tests.serving import SlowTeacher

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    ori = variant_files(alpaca_rows, tmp_path / "data", n=8)["ori"]
    held_out = held_out_file(alpaca_rows, tmp_path / "data" / "held_out.jsonl", n=3)
    teacher = SlowTeacher(0.0, reply=SlowTeacher.reflection_reply)
    config = tmp_path / "teacher.yaml"
    config.write_text(f"teacher: openai\nbase_url: {teacher.base_url}\nteacher_model: teacher\nmax_reasks: 0\n")
    out = tmp_path / "ablate"
    argv = [
        f"--ori_data={ori}",
        f"--reflect_teacher_config={config}",
        f"--held_out={held_out}",
        "--test_sets=",
        "--arms=paper,reflection_all",
        f"--model={tiny_models['llama']}",
        "--use_peft=true",
        "--lora_r=4",
        "--lora_alpha=8",
        "--max_steps=1",
        "--per_device_train_batch_size=2",
        "--global_batch_size=2",
        "--max_length=128",
        "--score_max_length=256",
        "--report_to=none",
        "--ifd_threshold=100",
        "--rifd_threshold=100",
        "--plot=false",
        f"--output_dir={out}",
    ]
    try:
        assert main(["ablate", *argv]) == 0
        asked = len(teacher.requests)
        assert main(["ablate", *argv]) == 0  # everything done: nothing asked again
        assert len(teacher.requests) == asked == 3 * 8  # Q, A and QA of eight rows, once each
    finally:
        teacher.close()
    for name in ("q", "a", "qa"):
        rows = read_rows(out / "reflect" / f"{name}.jsonl")
        assert len(rows) == 8 and all(r["reflection_status"] == "ok" for r in rows)
    result = json.loads((out / "ablation.json").read_text())
    assert [r["arm"] for r in result["table"]] == ["ori", "reflection_all", "paper", "untuned"]
    assert all(r["held_out_loss"]["n"] == 3 for r in result["table"]) and result["equal_size"] is True
    markdown = (out / "ablation.md").read_text()
    assert "held-out loss" in markdown and "winning score" not in markdown and "win / tie" not in markdown


@pytest.mark.parametrize("recipe", ["smollm2-135m/ablate/config_cpu.yaml", "llama2-7b/ablate/config_full.yaml"])
def test_recipes_parse(recipe):
    from srt_trainer.ablation.cli import make_parser

    repo = Path(__file__).resolve().parents[1]
    args, script, _, _, training, model, judge, _ = make_parser().parse_args_and_config(
        ["--config", str(repo / "recipes" / recipe), "--teacher_model", "judge"]
    )
    assert args.arms == list(ARMS) and script.ori_scores and judge.teacher == "openai"
    if "llama2-7b" in recipe:  # the paper's SFT settings
        assert (training.learning_rate, training.num_train_epochs, training.global_batch_size) == (2e-5, 3, 128)
        assert model.model_name_or_path == "meta-llama/Llama-2-7b-hf" and not model.use_peft
    else:
        assert model.use_peft and model.model_name_or_path == "embedded"
