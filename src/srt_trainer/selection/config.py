"""Options of selection: the rule (``SelectionArguments``, shared by ``srt select``, ``srt train`` and ``srt run``)
and what ``srt select`` reads and writes (``SelectArguments``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from srt_trainer.errors import SRTUserError

VARIANTS = ("ori", "Q", "A", "QA")
# the paper's ablation (§5): the original pairs, either reflection alone, reflection without selection
ABLATIONS = ("ori", "instruction_only", "response_only", "reflection_all")
# the field's baselines, as many rows as the paper policy keeps unless ``size`` says
BASELINES = ("random", "ifd_top", "longest")
POLICIES = ("paper", "ifd", *ABLATIONS, *BASELINES)
# the views each policy reads (a baseline without ``size`` reads all four: the paper policy's count sizes it)
POLICY_VIEWS = {
    "paper": VARIANTS,
    "ifd": ("ori",),
    "ori": ("ori",),
    "instruction_only": ("ori", "Q"),
    "response_only": ("ori", "A"),
    "reflection_all": ("ori", "QA"),
    **dict.fromkeys(BASELINES, ("ori",)),
}


class SelectionInputError(SRTUserError, ValueError):
    """The scored inputs cannot be judged together (misaligned rows, not a score output)."""


@dataclass
class SelectionArguments:
    """How pairs are selected (Section 3 of the paper; shared by ``srt select``, ``srt train`` and ``srt run``)."""

    policy: str = field(
        default="paper",
        metadata={
            "help": "'paper': the released Selective Reflection-Tuning rule (keeps QA or A). The paper's ablation "
            "(§5), one pair per source row: 'ori' (the original pairs), 'instruction_only' (Q where the student "
            "accepts the new instruction, IFD(Q) > IFD(ori), and Q passes the thresholds, else ori), "
            "'response_only' (A where it accepts the new response, rIFD(A) < rIFD(ori), and A passes the "
            "thresholds, else ori), 'reflection_all' (QA for every row, no selection). Baselines on the original "
            "pairs, as many as the paper policy keeps on the same four files unless --size says: 'random' (its own "
            "stream of --seed, independent of the order --size cuts the orderless arms by), 'ifd_top' (the "
            "highest IFD among IFD < ifd_threshold), 'longest' (the longest "
            "responses). See docs/selection.md. 'ifd': Cherry_LLM's "
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

    size: int | None = field(
        default=None,
        metadata={
            "help": "Cut the selection to this many rows by the policy's own order: the highest IFD first for "
            "'paper', 'ifd' and 'ifd_top', the longest response for 'longest', a random order seeded by --seed for "
            "the others, so that arms differ in which data, never in how much. The baselines' default is the "
            "paper policy's kept count on the same four files (computed in the same pass)."
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
        if self.size is not None and self.size < 1:
            raise SelectionInputError(f"size must be 1 or more, not {self.size}")
        budget = "top_k" if self.top_k is not None else "top_p" if self.top_p is not None else None
        if budget and self.policy in ABLATIONS:
            raise SelectionInputError(
                f"{budget} keeps the pairs with the highest IFD; the {self.policy!r} policy keeps one pair per "
                "source row in no such order: cut it with size"
            )
        if budget and self.policy in BASELINES and self.size is not None:
            raise SelectionInputError(
                f"{budget} shapes the paper policy's kept count, which sizes the {self.policy!r} policy only when "
                "size is not given; give one or the other"
            )

    def needed_views(self) -> tuple[str, ...]:
        """The score files this policy reads: a baseline without ``size`` reads all four, since its size is the
        paper policy's kept count on them."""
        if self.sized_by_paper():
            return VARIANTS
        return POLICY_VIEWS[self.policy]

    def order(self) -> str:
        """The order in which the budgets and ``size`` cut this policy's pairs: 'IFD' (highest first), 'length'
        (longest response first), or 'random' (seeded) for a policy with no order of its own."""
        return (
            "IFD" if self.policy in ("paper", "ifd", "ifd_top") else "length" if self.policy == "longest" else "random"
        )

    def uses_seed(self) -> bool:
        """Whether the seed decides what this policy keeps: a random order that something cuts."""
        return self.order() == "random" and (self.policy == "random" or self.size is not None)

    def sized_by_paper(self) -> bool:
        """Whether this policy keeps as many rows as the paper policy does (a baseline without ``size``)."""
        return self.policy in BASELINES and self.size is None


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
    seed: int = field(
        default=42,
        metadata={
            "help": "Seed of the random order: --size on a policy with no order of its own (numpy's "
            "default_rng(seed).permutation of the source rows) and the 'random' policy (its own stream of the same "
            "seed, default_rng([seed, 1]).permutation: independent of the other, so ori and random at one size are "
            "two independent draws)."
        },
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
