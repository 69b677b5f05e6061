"""The ablation's judge-free metric: each arm's loss on held-out pairs with reference answers.

For every held-out pair (x, y) the tuned model's mean token NLL of the response given the prompt, s(y|x): exactly
the ``loss_out_cond`` view of the student's IFD (``IFDScorer``: the same template, tokenization, truncation at
``score_max_length`` and masking), computed with the arm's model instead of the untuned student. Lower is better:
the arm's training made its student more likely to write the reference answers of instructions it never saw.

The held-out rows must not be in any arm's training data (compared by instruction, input and output): a held-out
row an arm trained on would measure memorization, not what the selection taught.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from srt_trainer.data.loading import LoadedData, load_instruction_data, require_rows
from srt_trainer.data.rejects import RowError
from srt_trainer.errors import SRTUserError
from srt_trainer.io import read_rows, write_rows

HELD_OUT = "held_out.jsonl"  # per arm: one record per held-out item (row_index, loss, targets)


class HeldOutOverlapError(SRTUserError, ValueError):
    """A held-out row is in an arm's training data."""


def _key(row: Mapping[str, Any]) -> tuple[str, str, str]:
    return (row.get("instruction") or "", row.get("input") or "", row.get("output") or "")


def _with_response(row: dict[str, Any]) -> None:
    if not row["output"]:
        raise RowError("output", "empty response: a held-out pair needs a reference answer")


def load_held_out(path: str | Path, rejects_path: str | Path) -> LoadedData:
    """The held-out pairs (Alpaca form, every row with a reference answer); rows that cannot be used go to
    ``rejects_path`` with their reason, and a file with none usable stops the run."""
    loaded = load_instruction_data(path, "alpaca", rejects_path=rejects_path, row_check=_with_response)
    require_rows(loaded, rejects_path, "a usable held-out pair")
    return loaded


def check_no_overlap(held_out: LoadedData, training: Mapping[str, str | Path]) -> None:
    """Refuse held-out rows that an arm trains on (``training``: arm → its selected rows), naming the first."""
    keys = {_key(r): r["row_index"] for r in held_out.rows}
    for arm, path in training.items():
        for row in read_rows(path):
            index = keys.get(_key(row))
            if index is not None:
                raise HeldOutOverlapError(
                    f"{held_out.source}: row {index} (instruction {row.get('instruction', '')[:60]!r}) is in the "
                    f"{arm} arm's training data ({path}): held-out rows must be rows no arm trains on; remove it, "
                    "or hold out other rows"
                )


def response_losses(
    model: Any, tokenizer: Any, template: Any, rows: Sequence[Mapping[str, Any]], scorer_options: Mapping[str, Any]
) -> list[tuple[float | None, int]]:
    """s(y|x) of each row under ``model`` (the mean token NLL of the response given the prompt, as the IFD scorer
    computes ``loss_out_cond``) and its number of target tokens; (None, 0) for a row whose prompt alone fills the
    scorer's ``max_length`` (no response token left to score)."""
    from srt_trainer.scoring.scorer import IFDScorer

    scorer = IFDScorer(model, tokenizer, template, **scorer_options)
    try:
        views = [v for sv in scorer.collator.views(rows) for v in sv.views if v.kind == "out_cond"]
        losses = scorer.view_losses(views)
    finally:
        scorer.close()
    out: list[tuple[float | None, int]] = [(None, 0)] * len(rows)
    for v, loss in zip(views, losses, strict=True):
        out[v.sample] = (float(loss), v.num_targets)
    return out


@dataclass
class HeldOutItems:
    """One model's held-out losses, by the held-out row's index in its file (in that order)."""

    losses: dict[int, float]
    unscored: int  # items without a response token to score

    @classmethod
    def read(cls, path: str | Path) -> HeldOutItems:
        records = read_rows(path)
        scored = sorted((int(r["row_index"]), float(r["loss"])) for r in records if r["loss"] is not None)
        losses = dict(scored)
        return cls(losses, len(records) - len(losses))


def write_held_out(
    rows: Sequence[Mapping[str, Any]], losses: Sequence[tuple[float | None, int]], path: str | Path
) -> Path:
    """One record per held-out item: its ``row_index`` in the held-out file, ``loss`` (s(y|x), None when nothing
    was left to score) and ``targets`` (the response tokens it averages over)."""
    records = [
        {"row_index": r["row_index"], "loss": loss, "targets": n} for r, (loss, n) in zip(rows, losses, strict=True)
    ]
    return write_rows(records, path)
