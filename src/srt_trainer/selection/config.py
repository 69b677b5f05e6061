"""Options of selection: the rule (``SelectionArguments``, shared by ``srt select``, ``srt train`` and ``srt run``)
and what ``srt select`` reads and writes (``SelectArguments``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from srt_trainer.errors import SRTUserError

POLICIES = ("paper", "ifd")
VARIANTS = ("ori", "Q", "A", "QA")


class SelectionInputError(SRTUserError, ValueError):
    """The scored inputs cannot be judged together (misaligned rows, not a score output)."""


@dataclass
class SelectionArguments:
    """How pairs are selected (Section 3 of the paper; shared by ``srt select``, ``srt train`` and ``srt run``)."""

    policy: str = field(
        default="paper",
        metadata={
            "help": "'paper': the released Selective Reflection-Tuning rule (keeps QA or A). 'ifd': Cherry_LLM's "
            "selection on the original pairs only (Q/A/QA not needed), as its select_from_ifd_json.py does it: "
            "IFD is the loss ratio s(y|x)/s(y) (the score column ifd_loss, not the perplexity ratio ifd), pairs "
            "with IFD <= ifd_threshold pass, the highest IFD first (ties in source order), and top_p is a fraction "
            "of all rows. Cherry_LLM's own scorer differs from ours, which follows the Reflection-Tuning release: it "
            "scores the response 'alone' after the template's answer tag ('### Response:' or 'ASSISTANT:'), cuts "
            "it at other lengths and defaults to max_length 512 with the alpaca prompt; its data_by_IFD.py also "
            "drops pairs whose prompt nearly fills max_length and takes the rate over the pairs left. Given the "
            "same losses, the selections are the same.",
            "choices": list(POLICIES),
        },
    )
    keep_unaccepted_winners: bool = field(
        default=False,
        metadata={
            "help": "Also keep the winner of the branches the release drops: Q in branch 2 (new instruction "
            "accepted, new response not) and ori in branch 4 (neither accepted), under the same thresholds."
        },
    )
    ifd_threshold: float = field(default=1.0, metadata={"help": "Keep a pair only if its IFD is below this."})
    rifd_threshold: float = field(
        default=1.0, metadata={"help": "Keep a pair only if its r-IFD is below this (not used by the 'ifd' policy)."}
    )
    top_k: int | None = field(
        default=None,
        metadata={
            "help": "Budget: keep at most this many pairs, those with the highest IFD among the pairs that "
            "passed the thresholds."
        },
    )
    top_p: float | None = field(
        default=None,
        metadata={
            "help": "Budget: keep this fraction (0.05 = 5%%, rounded down) of the pairs that passed the "
            "thresholds, highest IFD first. With top_k too, the smaller budget holds."
        },
    )

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise SelectionInputError(f"policy must be one of {', '.join(POLICIES)}, not {self.policy!r}")
        if self.top_k is not None and self.top_k < 0:
            raise SelectionInputError(f"top_k must be 0 or more, not {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise SelectionInputError(f"top_p is a fraction in (0, 1] (0.05 keeps 5%), not {self.top_p}")
        for name in ("ifd_threshold", "rifd_threshold"):
            if not getattr(self, name) > 0:
                raise SelectionInputError(f"{name} must be positive, not {getattr(self, name)}")

    def needed_views(self) -> tuple[str, ...]:
        """The score files this policy reads."""
        return ("ori",) if self.policy == "ifd" else VARIANTS


@dataclass
class SelectArguments:
    """What ``srt select`` reads and writes (YAML via ``--config``; every field also a flag); parsed with
    ``SelectionArguments``."""

    ori: str = field(metadata={"help": "`srt score` output of the original pairs (JSONL, JSON or Parquet)."})
    output: str = field(metadata={"help": "Selected rows, .jsonl or .parquet; the report files go beside it."})
    q: str | None = field(
        default=None,
        metadata={
            "help": "`srt score` output of the instruction-reflected pairs Q (x_ins, y_ins), same rows in the same "
            "order."
        },
    )
    a: str | None = field(
        default=None, metadata={"help": "`srt score` output of the response-reflected original pairs A (x0, y_res)."}
    )
    qa: str | None = field(
        default=None, metadata={"help": "`srt score` output of the response-reflected Q pairs QA (x_ins, y_res')."}
    )
    plot: bool = field(default=True, metadata={"help": "Write the funnel and IFD / r-IFD histogram PNGs."})
    data_card: bool = field(default=True, metadata={"help": "Write a markdown data card beside the output."})
    agreement: str | None = field(
        default=None,
        metadata={
            "help": "The `srt agree` report (JSON) of the student that scored these files against the one it stands "
            "in for: the data card states that a proxy selected the rows, and the agreement measured."
        },
    )

    def files(self) -> dict[str, str | None]:
        """The input file of each view."""
        return {"ori": self.ori, "Q": self.q, "A": self.a, "QA": self.qa}
