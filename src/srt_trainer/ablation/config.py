"""Options of ``srt ablate``: the arms and how they are evaluated (``AblateArguments``). The rest is shared with
the other stages and parsed beside it: the inputs (``SRTScriptArguments``: the four ``*_scores`` files, or the
``*_data`` files scored here), the thresholds and ``size`` (``SelectionArguments``; its ``policy`` is set per arm),
the student and its training (``SRTModelConfig``, ``SRTSFTConfig``, ``ScoringArguments``) and the judge
(``TeacherArguments``: ``--teacher openai --base_url URL --teacher_model NAME``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from srt_trainer.errors import SRTUserError, invalid_choice
from srt_trainer.selection.config import ABLATIONS, BASELINES

# every arm, the reference first: the others are judged against it
ARMS = (*ABLATIONS, "paper", *BASELINES)
REFERENCE = "ori"


class AblationConfigError(SRTUserError, ValueError):
    """Options of ``srt ablate`` that cannot work together."""


@dataclass
class AblateArguments:
    """What ``srt ablate`` compares and how (YAML via ``--config``; every field also a flag)."""

    test_sets: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Test sets every arm answers (files or folders, as `srt eval generate --test_sets`), judged "
            "pairwise against the ori arm in both orders. May be left out when --held_out, --mtbench_questions or "
            "--harness_tasks gives the table a metric (--held_out alone needs no judge)."
        },
    )
    arms: list[str] = field(
        default_factory=lambda: list(ARMS),
        metadata={
            "help": "The arms, each a selection policy (docs/selection.md): ori, instruction_only, response_only, "
            "reflection_all, paper, random, ifd_top, longest (all by default). ori is always run: it is the "
            "reference the others are judged against."
        },
    )
    reflect_teacher_config: str | None = field(
        default=None,
        metadata={
            "help": "With --ori_data and no Q/A/QA files, the reflections are made first, as `srt run` makes them "
            "(output_dir/reflect/, resumable through the teacher's cache), by the teacher this YAML file describes "
            "(the teacher options of `srt reflect`: teacher, base_url, teacher_model, ...; its key from "
            "OPENAI_API_KEY). Without it the student teaches itself. The command-line teacher options are the judge's."
        },
    )
    held_out: str | None = field(
        default=None,
        metadata={
            "help": "Held-out pairs with reference answers (Alpaca JSON/JSONL/Parquet), rows no arm trains on "
            "(checked by instruction, input and output): each arm's mean token NLL of the reference response given "
            "the prompt, s(y|x) as the student's IFD computes it, with the tuned model (lower is better); a "
            "judge-free metric, paired with ori over the same items."
        },
    )
    eval_limit: int | None = field(
        default=None, metadata={"help": "Answer only the first N items of each test set (all by default)."}
    )
    eval_max_new_tokens: int | None = field(
        default=None,
        metadata={"help": "Length limit of an answer, in tokens (default: prompt + answer within eval_max_length)."},
    )
    eval_max_length: int = field(
        default=1024, metadata={"help": "Length limit of prompt + answer, in tokens (the release's 1024)."}
    )
    eval_batch_size: int = field(default=8, metadata={"help": "Prompts per generate call when answering."})
    eval_engine: str = field(
        default="transformers",
        metadata={
            "help": "transformers (the arm's model in this process; LoRA arms on the one loaded student) or vllm "
            "(each arm's model, or the student with the arm's adapter, in vLLM: much faster on GPUs).",
            "choices": ["transformers", "vllm"],
        },
    )
    judge_input: bool = field(
        default=False, metadata={"help": "Show the judge an item's input too (as `srt eval judge --judge_input`)."}
    )
    mtbench_questions: str | None = field(
        default=None,
        metadata={
            "help": "MT-Bench's question.jsonl: every arm answers both turns and the judge grades each turn 1-10 "
            "(with mtbench_judge_prompts; mtbench_reference_answers for math, reasoning and coding)."
        },
    )
    mtbench_judge_prompts: str | None = field(default=None, metadata={"help": "MT-Bench's judge_prompts.jsonl."})
    mtbench_reference_answers: str | None = field(
        default=None, metadata={"help": "MT-Bench's reference answers (reference_answer/gpt-4.jsonl)."}
    )
    mtbench_limit: int | None = field(default=None, metadata={"help": "Only the first N MT-Bench questions."})
    mtbench_max_new_tokens: int = field(default=1024, metadata={"help": "Longest answer to an MT-Bench turn."})
    harness_tasks: list[str] = field(
        default_factory=list,
        metadata={
            "help": "lm-evaluation-harness tasks every arm runs (as `srt eval harness --tasks`); none by default."
        },
    )
    harness_include_path: str | None = field(
        default=None, metadata={"help": "A folder of task YAML files of your own (lm_eval --include_path)."}
    )
    harness_num_fewshot: int | None = field(default=None, metadata={"help": "Shots of every harness task."})
    harness_limit: int | None = field(default=None, metadata={"help": "Only the first N documents of each task."})
    confidence_level: float = field(
        default=0.95, metadata={"help": "Confidence level of every interval in the table (0.95: 95%%)."}
    )
    bootstrap_resamples: int = field(default=10_000, metadata={"help": "Bootstrap resamples of each interval."})
    bootstrap_seed: int = field(default=0, metadata={"help": "Seed of the bootstrap resampling."})

    def __post_init__(self) -> None:
        arms = [a.strip() for item in self.arms for a in str(item).split(",") if a.strip()]
        for arm in arms:
            if arm not in ARMS:
                raise AblationConfigError(f"--arms: {invalid_choice('arm', arm, ARMS)}")
        # the reference first, then the others in the table's order, each once
        self.arms = [a for a in ARMS if a in {REFERENCE, *arms}]
        self.harness_tasks = [t.strip() for item in self.harness_tasks for t in str(item).split(",") if t.strip()]
        if not 0 < self.confidence_level < 1:
            raise AblationConfigError(f"--confidence_level is in (0, 1), not {self.confidence_level}")
        if self.bootstrap_resamples < 100:
            raise AblationConfigError(f"--bootstrap_resamples must be 100 or more, not {self.bootstrap_resamples}")
        for name in ("eval_limit", "mtbench_limit", "harness_limit", "eval_max_new_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise AblationConfigError(f"--{name} must be positive, not {value}")
        self.test_sets = [p for p in self.test_sets if p]
        if not (self.test_sets or self.held_out or self.mtbench_questions or self.harness_tasks):
            raise AblationConfigError(
                "nothing to measure the arms by: give --test_sets (judged pairwise), --held_out (a judge-free "
                "loss), --mtbench_questions or --harness_tasks"
            )
        if self.mtbench_questions and not self.mtbench_judge_prompts:
            raise AblationConfigError("--mtbench_questions needs --mtbench_judge_prompts (MT-Bench's judge_prompts)")
