"""Option mistakes, through the real ``srt`` commands in process: one line naming the flag or key (with the closest
known one), exit 2, before any model is loaded; and YAML keys spelled like any of their flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from srt_trainer.cli import main
from srt_trainer.models.config import LoadingArguments, SRTModelConfig
from srt_trainer.options import StageParser
from srt_trainer.scoring.config import ScoreArguments, ScoringArguments
from tests.conftest import every_command

VLLM_REFLECT = ["reflect", "--mode", "response", "--data", "d", "--output", "o.jsonl", "--teacher", "vllm"]


def _one_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        # misspelled: reported instead of "required: --output" after the usage
        (
            ["score", "--data", "D", "--ouptut", "x.jsonl"],
            "srt score: unknown option --ouptut (did you mean --output?)",
        ),
        (
            ["score", "--data", "D", "--output", "x", "--limt", "3"],
            "srt score: unknown option --limt (did you mean --limit?)",
        ),
        (
            ["score", "--data", "D", "--output=x", "--limt=3"],
            "srt score: unknown option --limt (did you mean --limit?)",
        ),
        (["select", "--ori", "a", "--outptu", "b"], "srt select: unknown option --outptu (did you mean --output?)"),
        (["train", "--lerning_rate", "1"], "srt train: unknown option --lerning_rate (did you mean --learning_rate?)"),
        (["run", "c.yaml", "--no_plott"], "srt run: unknown option --no_plott"),
        (
            ["eval", "judge", "--judge_modle", "m"],
            "srt eval judge: unknown option --judge_modle (did you mean --judge_model",
        ),
        (["reflect", "--mode", "response", "--dta", "x"], "srt reflect: unknown option --dta (did you mean --data?)"),
        (["select", "--ori", "a", "--output", "b", "stray"], "srt select: unexpected argument stray"),
        (["score", "--config"], "srt score: --config needs a FILE"),
        (["eval", "generat", "--output", "x"], "srt eval: invalid command 'generat' (did you mean generate?)"),
        (["eval", "--output", "x"], "srt eval: missing command before --output"),
        (["scor", "--data", "x"], "srt: invalid stage 'scor' (did you mean score?)"),
        # vllm.LLM's own arguments: JSON, never a second way to set what has a flag, only where vLLM runs
        (
            [*VLLM_REFLECT, "--teacher_vllm_options", "{enforce_eager: true}"],
            "srt reflect: --teacher_vllm_options: not JSON (Expecting property name enclosed in double quotes",
        ),
        (
            [*VLLM_REFLECT, "--teacher_vllm_options", '{"dtype": "bfloat16"}'],
            "srt reflect: --teacher_vllm_options: dtype cannot be set here",
        ),
        (
            ["eval", "generate", "--test_sets", "t", "--output", "o.jsonl", "--vllm_options", '{"max_model_len": 8}'],
            "srt eval generate: --vllm_options is for --engine vllm, not 'transformers'",
        ),
    ],
)
def test_an_option_mistake_is_one_line(argv, expected, capsys):
    assert expected in _one_line(capsys, argv)


def test_yaml_mistakes_name_the_key_and_the_file(tmp_path: Path, capsys):
    cases = {
        "train.yaml": (
            "learning_rat: 1.0e-5\n",
            "srt train: unknown key learning_rat (did you mean learning_rate?) in",
        ),
        "negated.yaml": ("no_plot: true\n", "key no_plot in"),
        "twice.yaml": ("model: a\nmodel_name_or_path: b\n", "model and model_name_or_path in"),
    }
    for name, (text, expected) in cases.items():
        stage = "train" if name == "train.yaml" else "score"
        (tmp_path / name).write_text(text if stage == "train" else f"data: d.jsonl\noutput: o.jsonl\n{text}")
        err = _one_line(capsys, [stage, "--config", str(tmp_path / name)])
        assert expected in err and name in err and "dataclass" not in err and "HfArgumentParser" not in err
    assert "write plot: false instead" in _one_line(capsys, ["score", "--config", str(tmp_path / "negated.yaml")])


def _score_parser() -> StageParser:
    parser = StageParser((ScoreArguments, ScoringArguments, SRTModelConfig, LoadingArguments), "srt score")
    parser.add_argument("--max_length", "--max-length", dest="score_max_length", type=int)  # as `srt score` adds it
    return parser


def test_yaml_keys_may_be_any_spelling_of_their_flag(tmp_path: Path):
    config = tmp_path / "score.yaml"
    config.write_text("data: d.jsonl\noutput: o.jsonl\nmodel: some/model\nmax-length: 7\nplot: false\n")
    args, scoring, student, _ = _score_parser().parse_args_and_config(["--config", str(config)])
    assert (args.data, student.model_name_or_path, scoring.score_max_length, args.plot) == (
        "d.jsonl",
        "some/model",
        7,
        False,
    )
    # the command line still overrides the file, under any spelling (TRL's aliases and --no_X kept)
    args, scoring, student, _ = _score_parser().parse_args_and_config(
        [f"--config={config}", "--plot", "--max_length", "9", "--model_name_or_path", "other"]
    )
    assert (args.plot, scoring.score_max_length, student.model_name_or_path) == (True, 9, "other")
    args, *_ = _score_parser().parse_args_and_config(["--data", "d", "--output", "o", "--no-plot"])
    assert args.plot is False
    args, *_ = _score_parser().parse_args_and_config(["--data", "d", "--output", "o", "--outp", "p"])  # a prefix
    assert args.output == "p"


@pytest.mark.parametrize("stage", every_command())
def test_help_names_the_config_file_and_negations_say_what_they_turn_off(stage, capsys):
    """Every stage's parser builds (it fails on two dataclasses declaring one flag), and its --help names the
    config file."""
    with pytest.raises(SystemExit) as exit_:
        main([*stage.split(), "--ouptut", "--help"])  # --help wins over a mistake
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "--config FILE" in out
    if stage == "run":
        assert out.startswith("usage: srt run CONFIG") and "`srt run CONFIG` is short for" in out
    if stage == "score":
        assert "--no_plot, --no-plot  Turn off --plot." in out
