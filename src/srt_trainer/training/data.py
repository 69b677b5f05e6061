"""Selected rows → TRL prompt / completion examples, so SFTTrainer puts the loss on the response only.

Format decision (documented for users): the prompt is the template's prompt, exactly what scoring and
generation use; the completion is the template's response separator, the response, and the EOS that SFTTrainer
appends. For vicuna the separator is a space, as FastChat trains it (``... ASSISTANT: {response}</s>``): the
prompt then ends on ``ASSISTANT:`` at a token boundary, so the completion mask starts exactly at the response,
and a model prompted with ``... ASSISTANT:`` at inference generates `` {response}`` (answers are stripped).
Multi-turn rows put the earlier turns in the prompt and train on the last assistant turn.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import datasets

from srt_trainer.data import load_instruction_data, summarize_rejects
from srt_trainer.data.loading import rejects_reasons
from srt_trainer.data.rejects import RowError
from srt_trainer.errors import SRTUserError
from srt_trainer.io import check_distinct_paths
from srt_trainer.templates import PromptTemplate, get_template

logger = logging.getLogger(__name__)

# Text between the prompt and the response in each template's original training code.
RESPONSE_SEPARATORS = {"vicuna": " ", "alpaca": "", "wizardlm": "", "chat": ""}


class TrainingDataError(SRTUserError, ValueError):
    """The rows to train on are unusable (none left, a row without a response)."""


def response_separator(template_name: str, override: str | None = None) -> str:
    """The separator given by the user, else the template's own."""
    if override is not None:
        return override
    return RESPONSE_SEPARATORS.get(template_name, "")


def to_prompt_completion(
    row: Mapping[str, Any], template: PromptTemplate, separator: str, eos_token: str = "</s>"
) -> dict[str, str]:
    """One normalized row (``instruction``, ``input``, ``output``, optional ``system`` / ``messages``) as a
    prompt / completion pair."""
    messages = row.get("messages") or []
    system = row.get("system") or None
    if row.get("num_turns", 1) > 1 and messages:
        prompt = template.conversation_prompt(messages[:-1], system=system, eos_token=eos_token)
        response = messages[-1]["content"]
    elif system:
        prompt, response = template.prompt(row["instruction"], row.get("input") or "", system=system), row["output"]
    else:
        example = template.training_example(row["instruction"], row.get("input") or "", row["output"])
        prompt, response = example["prompt"], example["completion"]
    return {"prompt": prompt, "completion": separator + response}


def build_sft_dataset(
    rows: Iterable[Mapping[str, Any]],
    template_name: str = "vicuna",
    tokenizer: Any = None,
    separator: str | None = None,
    source: str = "the selected rows",
) -> datasets.Dataset:
    """A ``prompt`` / ``completion`` dataset for ``SFTTrainer`` (which appends the EOS and masks the prompt)."""
    template = get_template(template_name, tokenizer)
    sep = response_separator(template_name, separator)
    eos = getattr(tokenizer, "eos_token", None) or "</s>"
    prompts: list[str] = []
    completions: list[str] = []
    for i, row in enumerate(rows):
        where = f"{source}: row {row.get('row_index', i)}"  # the row's own index in its file, where it has one
        for name in ("instruction", "output"):
            if not isinstance(row.get(name), str):
                raise TrainingDataError(f"{where}, field '{name}': expected text, got {row.get(name)!r}")
        try:
            check_training_row(row)
        except RowError as e:
            raise TrainingDataError(f"{where}, field '{e.field}': {e.reason}") from None
        example = to_prompt_completion(row, template, sep, eos)
        prompts.append(example["prompt"])
        completions.append(example["completion"])
    if not prompts:
        raise TrainingDataError(f"{source}: no rows to train on")
    # columns, not a list of dicts: Arrow takes each as one array
    return datasets.Dataset.from_dict({"prompt": prompts, "completion": completions})


EMPTY_RESPONSE = "empty response, nothing to train on"


def check_training_row(row: Mapping[str, Any]) -> None:
    """Raise ``RowError`` for a normalized row that has nothing to train on: the response it would train on (the
    last assistant turn of a conversation) is empty or blank."""
    messages = row.get("messages") or []
    if row.get("num_turns", 1) > 1 and messages:
        if not str(messages[-1].get("content") or "").strip():
            raise RowError("messages", f"the last response is empty: {EMPTY_RESPONSE}")
    elif not (row.get("output") or "").strip():
        raise RowError("output", EMPTY_RESPONSE)


def load_training_rows(
    path: str | Path, rejects_path: str | Path | None, data_format: str = "auto"
) -> list[dict[str, Any]]:
    """Rows of a training file, normalized; unusable rows (an empty response among them) go to ``rejects_path``
    with file, row, line, field and reason (``None``: not written, e.g. on the processes other than the main one),
    and training goes on with the others. A file without a usable row raises ``TrainingDataError`` with the
    reasons, grouped."""
    check_distinct_paths({"--dataset": path}, {"the rejects file": rejects_path})
    loaded = load_instruction_data(path, format=data_format, rejects_path=rejects_path, row_check=check_training_row)
    if loaded.rejects and rejects_path is not None:
        logger.warning("%s: %s (see %s)", loaded.source, summarize_rejects(loaded.rejects), rejects_path)
    rows = loaded.rows
    if not rows:
        raise TrainingDataError(
            f"{path}: no usable rows to train on among its {loaded.num_rows_read}: "
            f"{rejects_reasons(loaded, rejects_path)}"
        )
    return rows
