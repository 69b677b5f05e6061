"""One dataclass per concern: each option is declared once, each stage parses the concerns it needs with
``TrlParser``, and the names outside tools call still parse."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
from trl import ModelConfig, TrlParser

from srt_trainer.cli import main
from srt_trainer.evaluation.config import JudgeArguments
from srt_trainer.models.config import LoadingArguments, SRTModelConfig
from srt_trainer.reflection.config import ReflectionArguments
from srt_trainer.scoring.config import ScoreArguments, ScoringArguments
from srt_trainer.selection.config import SelectionArguments
from srt_trainer.teachers import TeacherArguments, TeacherConfigError
from srt_trainer.training.cli import make_parser

CONCERNS = (
    TeacherArguments,
    ReflectionArguments,
    ScoringArguments,
    SelectionArguments,
    LoadingArguments,
    SRTModelConfig,
)


def _own_fields(cls: type) -> set[str]:
    base = {f.name for f in dataclasses.fields(ModelConfig)} if issubclass(cls, ModelConfig) else set()
    return {f.name for f in dataclasses.fields(cls)} - base


def test_no_option_is_declared_by_two_concerns():
    counts = Counter(name for cls in CONCERNS for name in _own_fields(cls))
    assert [name for name, n in counts.items() if n > 1] == []
    # and none of ours shadows a field of TRL's ModelConfig or SFTConfig they are parsed with
    from trl import SFTConfig

    trl_fields = {f.name for f in dataclasses.fields(SFTConfig)} | {f.name for f in dataclasses.fields(ModelConfig)}
    shadowing = {name for cls in CONCERNS if cls is not LoadingArguments for name in _own_fields(cls)} & trl_fields
    assert shadowing == set()


def test_score_keeps_the_names_outside_tools_call():
    parser = TrlParser((ScoreArguments, ScoringArguments, SRTModelConfig, LoadingArguments))
    parser.add_argument("--max-length", dest="score_max_length", type=int)  # as `srt score` adds it
    args, scoring, student, _ = parser.parse_args_and_config(
        ["--data", "x.json", "--output", "y.jsonl", "--model", "some/model", "--dtype", "bfloat16", "--max-length", "7"]
    )
    assert (args.data, student.model_name_or_path, student.dtype, scoring.score_max_length) == (
        "x.json",
        "some/model",
        "bfloat16",
        7,
    )
    assert student.template == "vicuna" and student.quantization_config() is None


def test_required_options_are_required_fields(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["score", "--output", "y.jsonl"])
    assert exit_.value.code == 2 and "--data" in capsys.readouterr().err


def test_one_teacher_config_for_reflection_and_judging():
    judge, teacher = TrlParser((JudgeArguments, TeacherArguments)).parse_args_and_config(
        ["--answers_a", "a", "--answers_b", "b", "--output", "r", "--judge", "openai", "--judge_model", "gpt-4"]
    )
    assert (teacher.teacher, teacher.teacher_model) == ("openai", "gpt-4") and judge.answers_a == "a"
    with pytest.raises(TeacherConfigError, match="--teacher_model is required"):
        TeacherArguments(teacher="openai")
    with pytest.raises(TeacherConfigError, match="--base_url is for the openai teacher"):
        TeacherArguments(base_url="http://127.0.0.1:1/v1")
    # the main job and srt train share scoring and selection: one flag each
    parsed = make_parser().parse_args_and_config(["--output_dir", "o", "--token_budget", "512", "--top_k", "3"])
    assert parsed[3].token_budget == 512 and parsed[4].top_k == 3


def test_quantization_goes_through_trl():
    from transformers import BitsAndBytesConfig

    q = SRTModelConfig(load_in_4bit=True, dtype="bfloat16", bnb_4bit_quant_type="nf4").quantization_config()
    assert isinstance(q, BitsAndBytesConfig) and q.load_in_4bit and q.bnb_4bit_quant_type == "nf4"


def test_score_and_generate_resume_on_the_same_student_options():
    """A resumed score or generate run must match every student option that changes its numbers: the same list for
    both (attention and quantization included)."""
    from srt_trainer.evaluation.config import GenerateArguments
    from srt_trainer.scoring.config import fingerprint_settings

    student = SRTModelConfig(load_in_4bit=True, attn_implementation="eager")
    score = fingerprint_settings(ScoringArguments(), student)
    generate = GenerateArguments(test_sets=["t"], output="o").fingerprint_settings(student)
    shared = {k for k in score if hasattr(student, k)}
    assert shared == {k for k in generate if hasattr(student, k)}
    assert score["load_in_4bit"] is generate["load_in_4bit"] is True and generate["attn_implementation"] == "eager"
