"""The SFT stage: the paper's defaults, global-batch arithmetic, the response-only loss on a real tokenized batch,
LoRA / full / QLoRA training on real rows, and the selection statistics in TensorBoard and in every checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from srt_trainer.io import read_rows, write_rows
from srt_trainer.training import (
    GlobalBatchError,
    SRTScriptArguments,
    SRTSFTConfig,
    SRTSFTTrainer,
    Student,
    TrainingDataError,
    build_sft_dataset,
    gradient_accumulation_for,
    prepare_training_data,
    resolve_resume,
    train,
)
from srt_trainer.training.cli import main as train_main
from srt_trainer.training.cli import make_parser
from srt_trainer.training.data import load_training_rows

# Small and quick on a 2-core CPU: few steps, short sequences, no gradient checkpointing.
QUICK = {
    "max_length": 128,
    "per_device_train_batch_size": 2,
    "global_batch_size": 4,
    "report_to": "none",
    "gradient_checkpointing": False,
    "logging_steps": 1,
    "dataloader_num_workers": 0,
    "seed": 0,
    "warmup_steps": 0,
}


def write_variant_files(alpaca_rows: list[dict], data_dir: Path, folder: Path, n: int = 6) -> dict[str, Path]:
    """Four variant files of ``n`` real Alpaca rows, no teacher needed: ori is the row; Q its instruction as the
    release's compressed data rewrote it (the input folded in); A the original instruction answered by the first
    sentence of its response; QA the rewritten instruction with that answer."""
    compressed = json.loads((data_dir / "alpaca_slice_compressed.json").read_text())
    rewritten = {r["output"]: r["instruction"] for r in compressed}
    rows = [
        r
        for r in alpaca_rows
        if r["input"]
        and rewritten.get(r["output"], r["instruction"]) != r["instruction"]
        and 40 < len(r["output"]) < 300
    ][:n]
    variants: dict[str, list[dict]] = {"ori": [], "Q": [], "A": [], "QA": []}
    for i, r in enumerate(rows):
        new_instruction = rewritten[r["output"]]
        short = r["output"].split("\n")[0].split(". ")[0].rstrip(".") + "."
        variants["ori"].append({"instruction": r["instruction"], "input": r["input"], "output": r["output"]})
        variants["Q"].append({"instruction": new_instruction, "input": "", "output": r["output"], "source_index": i})
        variants["A"].append({"instruction": r["instruction"], "input": r["input"], "output": short, "source_index": i})
        variants["QA"].append({"instruction": new_instruction, "input": "", "output": short, "source_index": i})
    folder.mkdir(parents=True, exist_ok=True)
    return {v: write_rows(rs, folder / f"{v.lower()}.jsonl") for v, rs in variants.items()}


def quick_args(output_dir: Path, argv: list[str] = (), **overrides) -> tuple:
    """Parse like the CLI does (YAML-free), with the quick settings."""
    merged = {**QUICK, **overrides}
    flags = []
    for k, v in merged.items():
        flags += [f"--{k}", str(v)]
    return make_parser().parse_args_and_config(["--output_dir", str(output_dir), *flags, *argv])


# --- configuration ------------------------------------------------------------------------------------------


def test_paper_defaults(tmp_path):
    _, args, model, *_ = make_parser().parse_args_and_config(["--output_dir", str(tmp_path)])
    assert (args.learning_rate, args.num_train_epochs, args.max_length) == (2e-5, 3.0, 2048)
    assert (args.warmup_steps, args.weight_decay, str(args.lr_scheduler_type)) == (0.03, 0.0, "SchedulerType.COSINE")
    assert args.completion_only_loss is True and args.global_batch_size == 128
    assert args.bf16 is (torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    # 128 = 8 per device × 16 accumulation × 1 process
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size == 128
    assert args.get_warmup_steps(1000) == 30
    assert model.template == "vicuna" and model.model_name_or_path == "embedded"


def test_13b_defaults_yaml_and_cli_precedence(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("num_train_epochs: 2\nper_device_train_batch_size: 4\n")
    parser = make_parser("sft_13b", defaults={"learning_rate": 1e-5})
    _, args, *_ = parser.parse_args_and_config(["--config", str(cfg), "--output_dir", str(tmp_path)])
    assert args.learning_rate == 1e-5 and args.num_train_epochs == 2 and args.gradient_accumulation_steps == 32
    _, args, *_ = make_parser("sft_13b", defaults={"learning_rate": 1e-5}).parse_args_and_config(
        ["--config", str(cfg), "--output_dir", str(tmp_path), "--learning_rate", "3e-5"]
    )
    assert args.learning_rate == 3e-5


@pytest.mark.parametrize(("world", "per_device", "steps"), [(1, 4, 32), (2, 4, 16), (4, 4, 8), (8, 4, 4), (8, 16, 1)])
def test_global_batch_holds_on_1_to_8_processes(world, per_device, steps):
    assert gradient_accumulation_for(128, per_device, world) == steps


def test_every_batch_that_can_make_128_does():
    """Over every per-device batch and 1 to 8 processes: the derived accumulation makes the global batch exactly,
    and the split is refused exactly where no whole number of steps makes it."""
    for world in range(1, 9):
        for per_device in range(1, 129):
            if 128 % (per_device * world) == 0:
                steps = gradient_accumulation_for(128, per_device, world)
                assert steps >= 1 and per_device * steps * world == 128
            else:
                with pytest.raises(GlobalBatchError):
                    gradient_accumulation_for(128, per_device, world)


def test_global_batch_errors_name_the_numbers(tmp_path):
    with pytest.raises(GlobalBatchError, match=r"per_device_train_batch_size=3 × 1 process\(es\) = 3.*divisor of 128"):
        gradient_accumulation_for(128, 3, 1)
    with pytest.raises(GlobalBatchError, match="number of processes to a divisor of 128"):
        gradient_accumulation_for(128, 1, 3)
    with pytest.raises(GlobalBatchError, match="per_device_train_batch_size=256"):
        SRTSFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=256)
    with pytest.raises(GlobalBatchError, match="gradient_accumulation_steps=4 contradicts"):
        SRTSFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, gradient_accumulation_steps=4)
    as_given = SRTSFTConfig(output_dir=str(tmp_path), global_batch_size=None, gradient_accumulation_steps=3)
    assert as_given.gradient_accumulation_steps == 3
    # the CLI prints the message and exits 2 instead of a traceback
    argv = ["--dataset", "x.jsonl", "--output_dir", str(tmp_path), "--per_device_train_batch_size", "3"]
    assert train_main(argv) == 2


def test_a_selection_that_keeps_nothing_says_why(data_dir, tmp_path, capsys):
    """Real golden scores, an IFD threshold no row meets: the stage stops before loading the student and names the
    step that removed the rows."""
    argv = ["--ori_scores", str(data_dir / "golden_smollm2_vicuna_64.jsonl"), "--policy", "ifd"]
    argv += ["--ifd_threshold", "0.0001", "--output_dir", str(tmp_path / "out"), "--no_plot"]
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    assert "the selection kept none of the 64 source rows (ifd/cut_ifd 64" in err
    assert (tmp_path / "out" / "selection" / "selected.selection.json").is_file()  # the counts are there to read


def test_cli_names_bad_input(alpaca_rows, tmp_path, capsys):
    quick = ["--output_dir", str(tmp_path / "out"), "--global_batch_size", "1", "--per_device_train_batch_size", "1"]
    assert train_main(["--dataset", str(tmp_path / "missing.jsonl"), *quick]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    assert train_main(["--ori_scores", "o.jsonl", "--q_scores", "q.jsonl", *quick]) == 2
    assert "needs --a_scores, --qa_scores" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "Say hi.", "input": "", "output": "Hi."}\n{"instruction": "Name a color."}\n')
    rows = load_training_rows(bad, tmp_path / "rejects.jsonl")
    assert [r["output"] for r in rows] == ["Hi."]  # the good row trains; the bad one is kept with its reason
    (reject,) = read_rows(tmp_path / "rejects.jsonl")
    assert reject["file"].endswith("bad.jsonl") and reject["row"] == 1 and reject["field"] == "output"
    only_bad = tmp_path / "only_bad.jsonl"
    only_bad.write_text('{"instruction": "Name a color."}\n')
    assert train_main(["--dataset", str(only_bad), *quick]) == 2
    assert "only_bad.jsonl: no usable rows" in capsys.readouterr().err


def test_every_variant_file_is_checked_before_the_student_is_loaded(
    alpaca_rows, data_dir, tiny_models, tmp_path, capsys, monkeypatch
):
    """A misspelled variant file, one with a row fewer than ori, or one with a line that does not parse, stops the
    run naming the file, before the student is loaded (hours before the error on a 7B launch, where it came only
    after the files before it were scored)."""
    from srt_trainer.training import student

    files = write_variant_files(alpaca_rows, data_dir, tmp_path / "variants")
    loads = []
    real_load = student.load_model_for_training
    monkeypatch.setattr(student, "load_model_for_training", lambda *a: loads.append(a) or real_load(*a))
    short = write_rows(read_rows(files["Q"])[:-1], tmp_path / "short_q.jsonl")
    lines = files["QA"].read_text().splitlines(keepends=True)
    broken = tmp_path / "broken_qa.jsonl"
    broken.write_text("".join([*lines[:2], lines[2].replace("}", "", 1), *lines[3:]]))  # line 3 cut short
    cases = {
        "missing": ({"q": tmp_path / "q_typo.jsonl"}, "q_typo.jsonl: no such file or folder"),
        "short": ({"q": short}, f"{short} (--q_data): 5 usable rows, but {files['ori']} (--ori_data) has 6"),
        "unparsable": ({"qa": broken}, f"{broken} (--qa_data): 5 usable rows (1 of its 6 rows rejected: "),
    }
    for name, (bad, message) in cases.items():
        given = {"ori": files["ori"], "q": files["Q"], "a": files["A"], "qa": files["QA"], **bad}
        out = tmp_path / name
        argv = [f"--{v}_data={p}" for v, p in given.items()]
        argv += ["--output_dir", str(out), "--model_name_or_path", str(tiny_models["llama"]), "--no_plot"]
        assert train_main(argv) == 2, name
        err = capsys.readouterr().err
        assert message in err, (name, err)
        assert not loads and not (out / "scores").exists(), name  # nothing loaded, nothing scored


def test_rows_with_an_empty_response_are_rejected_with_their_file_row_and_line(tmp_path, capsys):
    rows = [
        {"instruction": "Say hi.", "input": "", "output": "Hi."},
        {"instruction": "Say nothing.", "input": "", "output": ""},
        {"instruction": "Name a color."},  # no output at all: rejected by loading
        {"instruction": "Say bye.", "input": "", "output": "Bye."},
        {"instruction": "Shrug.", "input": "", "output": " \n "},
    ]
    data = tmp_path / "sel.json"  # a JSON list, one row per line after the opening bracket
    data.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")
    kept = load_training_rows(data, tmp_path / "train.rejects.jsonl")
    assert [(r["row_index"], r["output"]) for r in kept] == [(0, "Hi."), (3, "Bye.")]
    rejects = read_rows(tmp_path / "train.rejects.jsonl")
    where = [(r["row"], r["line"], r["field"]) for r in rejects]
    assert where == [(1, 3, "output"), (2, 4, "output"), (4, 6, "output")]
    assert rejects[0]["reason"] == rejects[2]["reason"] == "empty response, nothing to train on"
    assert json.loads(rejects[0]["raw"]) == rows[1]

    # nothing usable: exit 2, the reasons grouped with their counts
    empty = tmp_path / "empty.jsonl"
    empty.write_text("".join(json.dumps({"instruction": f"q{i}", "output": ""}) + "\n" for i in range(3)))
    quick = ["--output_dir", str(tmp_path / "out"), "--global_batch_size", "1", "--per_device_train_batch_size", "1"]
    assert train_main(["--dataset", str(empty), *quick]) == 2
    err = capsys.readouterr().err
    assert "empty.jsonl: no usable rows to train on among its 3" in err and "3x empty response" in err
    assert "row 0 (line 1), field 'output'" in err


def test_exactly_one_kind_of_input(tmp_path):
    assert SRTScriptArguments(dataset="a.jsonl").mode() == "dataset"
    assert SRTScriptArguments(ori_scores="o", q_scores="q", a_scores="a", qa_scores="qa").mode() == "scores"
    assert SRTScriptArguments(ori_data="o").mode(("ori",)) == "data"
    with pytest.raises(ValueError, match="exactly one kind"):
        SRTScriptArguments(dataset="a.jsonl", ori_scores="o").mode()
    with pytest.raises(ValueError, match="needs --a_scores, --qa_scores"):
        SRTScriptArguments(ori_scores="o", q_scores="q").mode()


def test_resume_values(tmp_path):
    assert resolve_resume(None, tmp_path) is None and resolve_resume("auto", tmp_path / "none") is None
    for step in (2, 10, 11):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if step != 11:  # checkpoint-11: the run was killed while saving it (trainer_state.json is written last)
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert resolve_resume("true", tmp_path) == str(tmp_path / "checkpoint-10")
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        resolve_resume(str(tmp_path / "checkpoint-3"), tmp_path)


# --- data ----------------------------------------------------------------------------------------------------


def test_rows_without_response_are_refused_by_name(alpaca_rows):
    rows = [dict(alpaca_rows[0]), {"instruction": "Name a color.", "input": "", "output": " "}]
    with pytest.raises(TrainingDataError, match=r"sel.jsonl: row 1, field 'output': empty response"):
        build_sft_dataset(rows, source="sel.jsonl")
    with pytest.raises(TrainingDataError, match="row 0, field 'instruction'"):
        build_sft_dataset([{"output": "x"}])


def test_loss_mask_covers_exactly_the_response_and_eos(alpaca_rows, embedded_model, embedded_tokenizer, tmp_path):
    """A real batch from the trainer's own dataloader: labels are the response tokens plus EOS, nothing else."""
    rows = alpaca_rows[:6]
    dataset = build_sft_dataset(rows, "vicuna", embedded_tokenizer)
    assert dataset[0]["prompt"].endswith("ASSISTANT:") and dataset[0]["completion"] == " " + rows[0]["output"]
    _, args, *_ = quick_args(tmp_path, max_length=2048, global_batch_size=6, per_device_train_batch_size=3)
    trainer = SRTSFTTrainer(model=embedded_model, args=args, train_dataset=dataset, processing_class=embedded_tokenizer)
    tok = embedded_tokenizer
    seen = 0
    for batch in trainer.get_train_dataloader():
        for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True):
            n = int(mask.sum())
            assert (labels[n:] == -100).all()  # padding never trained on
            text = tok.decode(ids[:n])
            row = next(r for r in rows if text.startswith(dataset[rows.index(r)]["prompt"]))
            prompt_ids = tok(dataset[rows.index(row)]["prompt"])["input_ids"]
            response_ids = tok(" " + row["output"] + tok.eos_token)["input_ids"]
            assert ids[:n].tolist() == prompt_ids + response_ids  # prompt, then " response<|im_end|>"
            assert (labels[: len(prompt_ids)] == -100).all()
            assert labels[len(prompt_ids) : n].tolist() == response_ids
            assert tok.decode(labels[len(prompt_ids) : n]) == " " + row["output"] + tok.eos_token
            seen += 1
    assert seen == 6


def test_padding_free_batches_keep_max_length_and_the_padded_loss(
    alpaca_rows, embedded_model, embedded_tokenizer, tmp_path
):
    """--padding_free without packing: the trainer's own batches are the samples back to back in one row, each cut
    at max_length as padded training cuts it, and the loss of a batch is the padded batch's loss (no sample sees
    another). TRL alone refuses these options while max_length is set."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    rows = alpaca_rows[:8]
    dataset = build_sft_dataset(rows, "vicuna", embedded_tokenizer)
    quick = {"max_length": 96, "global_batch_size": 4, "per_device_train_batch_size": 4, "padding_free": True}
    _, args, *_ = quick_args(tmp_path, **quick)
    trainer = SRTSFTTrainer(model=embedded_model, args=args, train_dataset=dataset, processing_class=embedded_tokenizer)
    assert args.max_length == 96 and trainer.padding_free and not args.packing
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    full = [len(embedded_tokenizer(r["prompt"] + r["completion"])["input_ids"]) + 1 for r in dataset]
    assert max(lengths) == 96 and max(full) > 96 and lengths == [min(n, 96) for n in full]  # cut as padded is
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch
    assert int((batch["position_ids"][0] == 0).sum()) == 4  # four samples in the one row
    features = [trainer.train_dataset[i] for i in range(4)]
    flat = trainer.data_collator(features)
    padded = DataCollatorForLanguageModeling(pad_token_id=embedded_tokenizer.pad_token_id)(features)
    assert int((padded["labels"] != -100).sum()) == int((flat["labels"] != -100).sum())
    keys = ("input_ids", "labels", "position_ids")
    before = embedded_model.config._attn_implementation
    try:
        for attention in ("sdpa", "eager"):
            embedded_model.set_attn_implementation(attention)
            with torch.no_grad():
                loss_flat = embedded_model(**{k: flat[k] for k in keys}).loss
                loss_padded = embedded_model(**{k: padded[k] for k in ("input_ids", "labels", "attention_mask")}).loss
            assert float(loss_flat) == pytest.approx(float(loss_padded), rel=1e-4), attention
    finally:
        embedded_model.set_attn_implementation(before)
    # the CLI takes the same options
    code = train_main(
        [
            "--dataset",
            str(write_rows(rows[:4], tmp_path / "four.jsonl")),
            "--output_dir",
            str(tmp_path / "cli"),
            "--max_steps",
            "1",
            "--padding_free",
            "true",
            "--no_plot",
            *(f"--{k}={v}" for k, v in {**QUICK, **quick}.items()),
        ]
    )
    assert code == 0 and (tmp_path / "cli" / "model.safetensors").exists()


# --- training ------------------------------------------------------------------------------------------------


def test_lora_training_logs_selection_to_tensorboard_and_checkpoints(data_dir, tmp_path):
    """Real precomputed scores (the golden statistics of 64 rows under the embedded student), selected here with
    the IFD policy and a top-k budget, then LoRA steps reporting to TensorBoard. (The paper policy on scores computed
    across two processes is the recipe test's.)"""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    script, args, model_args, *rest = quick_args(
        out,
        ["--use_peft", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj"],
        ori_scores=data_dir / "golden_smollm2_vicuna_64.jsonl",
        policy="ifd",
        top_k=6,
        max_steps=2,
        save_steps=1,
        report_to="tensorboard",
    )
    scoring, selection = rest
    student = Student(model_args, args)
    data = prepare_training_data(script, scoring, selection, student, out)
    assert data == out / "selection" / "selected.jsonl"
    outcome = train(data, script, args, student, selection)
    assert outcome.global_step == 2 and outcome.train_rows == 6

    selection = json.loads((out / "selection" / "selected.selection.json").read_text())
    counts = selection["counts"]
    kept = read_rows(out / "selection" / "selected.jsonl")
    assert counts["rows"] == 64 and counts["kept"] == len(kept) == 6
    assert counts["budget_cut"] == counts["passed_thresholds"] - 6 > 0

    # the counts and plots reached TensorBoard through the trainer's own logger
    (run_dir,) = (out / "runs").iterdir()  # transformers' default: output_dir/runs/<date>_<host>
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    for name in ("rows", "kept", "budget_cut", "passed_thresholds", "ifd/passed"):
        assert events.Scalars(f"train/selection/{name}")[0].value == counts[name]  # Trainer.log adds train/
    assert {"selection/funnel", "selection/hist"} <= set(tags["images"])
    assert events.Images("selection/funnel")[0].width > 100
    assert "train/loss" in tags["scalars"]

    # every checkpoint carries the selection report
    for step in (1, 2):
        saved = {p.name for p in (out / f"checkpoint-{step}" / "selection").iterdir()}
        assert {"selected.selection.json", "selected.funnel.png", "selected.hist.png", "selected.card.md"} <= saved
    assert (out / "adapter_model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    summary = json.loads((out / "srt_train_summary.json").read_text())
    assert summary["selection"]["kept"] == 6 and summary["global_step"] == 2


def test_full_fine_tuning_changes_weights(tiny_models, alpaca_rows, tmp_path):
    from transformers import AutoModelForCausalLM

    data = write_rows(alpaca_rows[:8], tmp_path / "sel.jsonl")
    out = tmp_path / "full"
    script, args, model_args, *_ = quick_args(
        out, dataset=str(data), max_steps=2, learning_rate=1e-3, model_name_or_path=str(tiny_models["llama"])
    )
    train(data, script, args, Student(model_args, args))  # a dataset as given: nothing to prepare
    before = AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out).state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2  # full fine-tuning moved (nearly) every tensor
    assert (out / "selection" / "train.rejects.jsonl").read_text() == ""


def test_qlora_trains_a_4bit_student(embedded_dir, alpaca_rows, tmp_path):
    from peft import PeftModel

    data = write_rows(alpaca_rows[:4], tmp_path / "sel.jsonl")
    out = tmp_path / "qlora"
    script, args, model_args, *_ = quick_args(
        out,
        ["--use_peft", "--load_in_4bit", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj"],
        dataset=str(data),
        max_steps=1,
        max_length=64,
        learning_rate=1e-3,
        global_batch_size=2,
    )
    outcome = train(data, script, args, Student(model_args, args))
    assert outcome.global_step == 1 and outcome.metrics["train_loss"] > 0
    from srt_trainer.models.config import SRTModelConfig
    from srt_trainer.models.loading import load_configured_student

    student = SRTModelConfig(model_name_or_path=str(embedded_dir), load_in_4bit=True, adapter=str(out))
    model = load_configured_student(student, device="cpu")
    assert isinstance(model, PeftModel)
    lora = {k: v for k, v in model.state_dict().items() if "lora_B" in k}
    assert lora and any(v.abs().sum() > 0 for v in lora.values())  # B starts at zero; one step moved it
