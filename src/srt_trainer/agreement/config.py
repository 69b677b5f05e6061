"""What ``srt agree`` compares and writes."""

from __future__ import annotations

from dataclasses import dataclass, field

from srt_trainer.selection.config import VARIANTS


@dataclass
class AgreeArguments:
    """Two students' score outputs of the same rows (``srt score``), and how to compare them (YAML via
    ``--config``; every field also a flag). The ``--a_*`` / ``--b_*`` rewrite files add the agreement of the
    selection rule's decisions (Section 3 of the paper) to that of the statistics."""

    a: str = field(metadata={"help": "Score output of student A (the real student, or the reference precision)."})
    b: str = field(metadata={"help": "Score output of student B (the proxy) on the same rows, in the same order."})
    output: str = field(
        default="agreement.json",
        metadata={"help": "The report (JSON); the scatter plot goes beside it (<name>.scatter.png)."},
    )
    a_q: str | None = field(default=None, metadata={"help": "Student A's scores of the Q rewrites."})
    a_a: str | None = field(default=None, metadata={"help": "Student A's scores of the A rewrites."})
    a_qa: str | None = field(default=None, metadata={"help": "Student A's scores of the QA rewrites."})
    b_q: str | None = field(default=None, metadata={"help": "Student B's scores of the Q rewrites."})
    b_a: str | None = field(default=None, metadata={"help": "Student B's scores of the A rewrites."})
    b_qa: str | None = field(default=None, metadata={"help": "Student B's scores of the QA rewrites."})
    top_p: float = field(
        default=0.1,
        metadata={
            "help": "Fraction of the rows in the top sets whose overlap is reported: the highest IFD (the budget's "
            "order) and the lowest r-IFD."
        },
    )
    min_spearman: float | None = field(
        default=None,
        metadata={
            "help": "Pass only if the Spearman correlation of IFD and of r-IFD both reach this (and the decisions "
            "agree on at least this share of rows, when the rewrite files are given); exit 2 otherwise, so a script "
            "falls back to the real student."
        },
    )
    plot: bool = field(default=True, metadata={"help": "Draw the scatter plot (PNG)."})

    def __post_init__(self) -> None:
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top_p must be in (0, 1], not {self.top_p}")
        given = {side: [getattr(self, f"{side}_{v.lower()}") is not None for v in VARIANTS[1:]] for side in "ab"}
        if any(given["a"] + given["b"]) and not all(given["a"] + given["b"]):
            raise ValueError("the decisions need all six rewrite files: --a_q --a_a --a_qa --b_q --b_a --b_qa")

    def views(self, side: str) -> dict[str, str] | None:
        """Student ``side``'s (``a`` or ``b``) score files by view, or None without the rewrite files."""
        files = {v: getattr(self, f"{side}_{v.lower()}") for v in VARIANTS[1:]}
        return None if any(f is None for f in files.values()) else {"ori": getattr(self, side), **files}
