"""Configs of the SFT stage: TRL's ``SFTConfig`` with the paper's defaults, and the data to train on.

Parsed together, TRL style, with the student (``SRTModelConfig``) and, for data that is scored and selected here,
``ScoringArguments`` and ``SelectionArguments``: ``TrlParser`` reads a YAML file given with ``--config`` and lets
every field be overridden on the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from transformers import TrainingArguments
from trl import SFTConfig

from srt_trainer.errors import SRTUserError
from srt_trainer.training.batch import GlobalBatchError, gradient_accumulation_for, world_size_from_env

VARIANT_FIELDS = {"ori": "ori", "Q": "q", "A": "a", "QA": "qa"}  # variant name → field-name stem
# transformers ≥ 5.24 calls it activation checkpointing (and warns on the old gradient_checkpointing names); older
# releases, such as the GPU machines' 5.17, know only the old names
TRANSFORMERS_SAYS_ACTIVATION = "activation_checkpointing" in {f.name for f in fields(TrainingArguments)}


class TrainingInputError(SRTUserError, ValueError):
    """The options do not say what to train on (none, or several kinds of input, or a variant missing)."""


def _bf16_supported() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _has_accelerator() -> bool:
    import torch

    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return bool(accelerator.is_available())
    return torch.cuda.is_available()


@dataclass
class SRTSFTConfig(SFTConfig):
    """TRL's ``SFTConfig`` with the defaults of Selective Reflection-Tuning (the paper's fine-tuning settings).

    Differences from TRL: 3 epochs, max length 2048, warmup ratio 0.03 (transformers 5 spells it
    ``warmup_steps`` < 1), cosine schedule, weight decay 0, loss on the completion only, bf16 only where the
    hardware has it, and ``global_batch_size`` from which the gradient accumulation is derived.

    Activation checkpointing (on by default, as in TRL) is ``activation_checkpointing``, the name of transformers
    ≥ 5.24, on every transformers release; the older ``gradient_checkpointing`` names are accepted too. Either
    reaches transformers under the name that release knows, so no run warns about a deprecated argument.
    """

    output_dir: str | None = field(default="outputs/sft", metadata={"help": "Where checkpoints and the model go."})
    learning_rate: float = field(
        default=2e-5,
        metadata={"help": "Peak learning rate of AdamW (paper: 2e-5 for 7B, 1e-5 for 13B)."},
    )
    num_train_epochs: float = field(default=3.0, metadata={"help": "Passes over the selected data (paper: 3)."})
    max_length: int | None = field(
        default=2048,
        metadata={"help": "Tokens per training sequence; longer ones are truncated at the end (paper: 2048)."},
    )
    warmup_steps: float = field(
        default=0.03,
        metadata={
            "help": "Linear warmup: a float in [0, 1) is a ratio of the total steps (paper: 0.03), an integer a "
            "number of steps."
        },
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (paper: 0)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule (paper: cosine)."})
    completion_only_loss: bool | None = field(
        default=True,
        metadata={"help": "Loss on the response tokens (and the EOS that ends them) only, as the paper trains."},
    )
    bf16: bool | None = field(
        default=None,
        metadata={"help": "bf16 mixed precision. Unset: on where the GPU supports it, off elsewhere (fp32 on CPU)."},
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "Continue a stopped run: a checkpoint folder, or 'auto' (also 'last', 'true') for the newest "
            "complete checkpoint-N in output_dir, starting fresh when there is none, so the same command restarts "
            "a killed run."
        },
    )
    activation_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Recompute activations in the backward pass instead of keeping them: less memory, slower steps. "
            "Unset: on (TRL's default), unless gradient_checkpointing says otherwise."
        },
    )
    activation_checkpointing_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments of activation checkpointing, e.g. {'use_reentrant': false}."},
    )
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "The older name of activation_checkpointing (still accepted)."}
    )
    gradient_checkpointing_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "The older name of activation_checkpointing_kwargs (still accepted)."}
    )
    global_batch_size: int | None = field(
        default=128,
        metadata={
            "help": "Samples per optimizer step over all processes (paper: 128). The gradient accumulation is derived "
            "as global_batch_size / (per_device_train_batch_size × number of processes); start-up fails with the "
            "numbers to change when that is not a whole number. Set to null to use gradient_accumulation_steps "
            "as given."
        },
    )

    def __post_init__(self) -> None:
        self._name_activation_checkpointing()
        if self.bf16 is None:
            self.bf16 = not self.fp16 and _bf16_supported()
        if not self.use_cpu and not _has_accelerator():
            # CPU-only machine: accelerate forms a gloo process group only when asked for CPU
            self.use_cpu = True
        if self.use_cpu and world_size_from_env() > 1:
            # transformers forms a CPU process group without ddp_timeout; formed here first, the group keeps it
            from datetime import timedelta

            from accelerate import PartialState

            PartialState(cpu=True, backend=self.ddp_backend, timeout=timedelta(seconds=self.ddp_timeout))
        if self.global_batch_size is not None:
            # before the base class runs: a DeepSpeed config's "auto" batch values are filled from these
            self.gradient_accumulation_steps = self._derived_accumulation(world_size_from_env())
        super().__post_init__()
        if not TRANSFORMERS_SAYS_ACTIVATION:  # the kwargs as transformers parsed them (JSON text → dict)
            self.activation_checkpointing_kwargs = self.gradient_checkpointing_kwargs
        if self.global_batch_size is not None and self.world_size != world_size_from_env():
            self.gradient_accumulation_steps = self._derived_accumulation(self.world_size)

    def _name_activation_checkpointing(self) -> None:
        """Resolve the two spellings into ``activation_checkpointing*`` (the new one wins where both are given),
        then hand the setting to transformers under the name it reads: the new one (it mirrors the old names from
        it) or, on releases before 5.24, the old one."""
        if self.activation_checkpointing is None:
            old = self.gradient_checkpointing
            self.activation_checkpointing = True if old is None else old
        if self.activation_checkpointing_kwargs is None:
            self.activation_checkpointing_kwargs = self.gradient_checkpointing_kwargs
        if TRANSFORMERS_SAYS_ACTIVATION:
            self.gradient_checkpointing = self.gradient_checkpointing_kwargs = None
        else:
            self.gradient_checkpointing = self.activation_checkpointing
            self.gradient_checkpointing_kwargs = self.activation_checkpointing_kwargs

    def _derived_accumulation(self, world_size: int) -> int:
        given = self.gradient_accumulation_steps
        steps = gradient_accumulation_for(self.global_batch_size, self.per_device_train_batch_size, world_size)
        if given not in (1, steps):
            raise GlobalBatchError(
                f"gradient_accumulation_steps={given} contradicts global_batch_size={self.global_batch_size} with "
                f"per_device_train_batch_size={self.per_device_train_batch_size} on {world_size} process(es), which "
                f"needs {steps}; leave gradient_accumulation_steps unset, or set global_batch_size to null"
            )
        return steps


@dataclass
class SRTScriptArguments:
    """What to train on. Give exactly one of: an already selected file (``dataset``); the four ``srt score``
    outputs (``ori_scores`` ... ``qa_scores``), selected here; or the four variant files (``ori_data`` ...
    ``qa_data``), scored with the student here (across all processes) and then selected.
    """

    dataset: str | None = field(
        default=None,
        metadata={
            "help": "Rows to train on as they are (JSON, JSONL or Parquet; Alpaca, ShareGPT or messages form), e.g. "
            "an `srt select` output; 'demo' for the set the package carries."
        },
    )
    ori_scores: str | None = field(default=None, metadata={"help": "`srt score` output of the original pairs."})
    q_scores: str | None = field(
        default=None,
        metadata={"help": "`srt score` output of the Q pairs (new instruction, its answer)."},
    )
    a_scores: str | None = field(
        default=None,
        metadata={"help": "`srt score` output of the A pairs (original instruction, better answer)."},
    )
    qa_scores: str | None = field(
        default=None,
        metadata={"help": "`srt score` output of the QA pairs (new instruction, better answer)."},
    )
    ori_data: str | None = field(
        default=None,
        metadata={"help": "Original pairs to score with the student ('demo': the set the package carries)."},
    )
    q_data: str | None = field(
        default=None,
        metadata={"help": "Q pairs (`srt reflect --mode instruction` output) to score."},
    )
    a_data: str | None = field(
        default=None,
        metadata={"help": "A pairs (`srt reflect --mode response` on the originals) to score."},
    )
    qa_data: str | None = field(
        default=None,
        metadata={"help": "QA pairs (`srt reflect --mode response` on Q) to score."},
    )
    data_format: str = field(
        default="auto",
        metadata={"help": "Format of the input files: auto, alpaca, sharegpt or messages."},
    )
    response_separator: str | None = field(
        default=None,
        metadata={
            "help": "Text between the prompt and the response in training. Unset: the template's own (a space "
            "after vicuna's 'ASSISTANT:', as FastChat trains; nothing for alpaca, wizardlm and chat)."
        },
    )
    plot: bool = field(default=True, metadata={"help": "Write the scoring histograms and selection plots."})

    def __post_init__(self) -> None:
        # `--ori_data null` on the command line clears a value that a YAML config set
        for stem in ("dataset", *(f"{v}_{k}" for v in VARIANT_FIELDS.values() for k in ("scores", "data"))):
            if str(getattr(self, stem)).lower() in ("null", "none", ""):
                setattr(self, stem, None)

    def mode(self, needed_views: tuple[str, ...] = tuple(VARIANT_FIELDS)) -> str:
        """``dataset``, ``scores`` or ``data``; raises ``TrainingInputError`` unless exactly one kind of input is
        given, with the files of every view the selection policy needs (``SelectionArguments.needed_views()``)."""
        needed = [VARIANT_FIELDS[v] for v in needed_views]
        kinds = {
            "dataset": [self.dataset] if self.dataset else [],
            "scores": [getattr(self, f"{v}_scores") for v in VARIANT_FIELDS.values() if getattr(self, f"{v}_scores")],
            "data": [getattr(self, f"{v}_data") for v in VARIANT_FIELDS.values() if getattr(self, f"{v}_data")],
        }
        given = [k for k, v in kinds.items() if v]
        if len(given) != 1:
            raise TrainingInputError(
                "give exactly one kind of training input: --dataset (selected rows), the four --*_scores files, "
                f"or the four --*_data files to score; got {', '.join(given) or 'none'}"
            )
        kind = given[0]
        if kind != "dataset":
            missing = [f"--{v}_{kind}" for v in needed if not getattr(self, f"{v}_{kind}")]
            if missing:
                raise TrainingInputError(f"the selection policy needs {', '.join(missing)} as well")
        return kind

    def variant_files(self, kind: str) -> dict[str, str | None]:
        """The four variant inputs of ``kind`` (``scores`` or ``data``), by variant name."""
        return {name: getattr(self, f"{stem}_{kind}") for name, stem in VARIANT_FIELDS.items()}
