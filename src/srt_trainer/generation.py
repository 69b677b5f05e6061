"""Batched generation with a local transformers model: the one helper behind the evaluation's answers, the main job's
held-out answers and the local teacher.

Prompts are tokenized once, optionally sorted by length (longest first, so a batch pads little), left-padded so
every answer starts at the same column, and generated greedily unless sampling is asked for. Each answer is cut at
the first stop token (the tokenizer's EOS and the model's generation-config EOS) and decoded without special
tokens; ``generate_batched`` yields them batch by batch, so a caller can store each one as soon as it exists.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm


@dataclass
class Completion:
    """One prompt's answer: its position in the prompts given, the text, the tokens in and out, and whether it was
    cut at the token limit (no stop token within its room)."""

    index: int
    text: str
    prompt_tokens: int
    completion_tokens: int
    cut: bool = False


def stop_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """The tokens that end an answer: the tokenizer's EOS and those of the model's generation config."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = {tokenizer.eos_token_id, *([configured] if isinstance(configured, int) else (configured or []))}
    ids.discard(None)
    return ids


@torch.no_grad()
def generate_batched(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int | None = None,
    batch_size: int = 8,
    generation_kwargs: Mapping[str, Any] | None = None,
    sort_by_length: bool = False,
    add_special_tokens: bool = True,
    seed: int | None = None,
    progress: bool = False,
    desc: str = "Generating",
    max_length: int | None = None,
) -> Iterator[Completion]:
    """Answers to already-rendered prompts, yielded batch by batch (in batch order, each with its prompt's index).

    The answer's length limit is ``max_new_tokens`` tokens, or (when that is None) ``max_length`` tokens of prompt
    and answer together: a batch generates for its shortest prompt's room and each answer is cut to its own, so an
    answer is what generating its prompt alone would give; a prompt that fills ``max_length`` gets an empty answer.

    ``generation_kwargs`` go to ``model.generate`` (e.g. ``do_sample``, ``temperature``, ``top_p``); the default is
    greedy. ``add_special_tokens``: False for texts that already hold them (a rendered chat template). ``seed``: the
    batch that starts at prompt ``s`` (in batch order) samples with ``torch.manual_seed(seed + s)``.
    """
    # use_cache: a student loaded for training with activation checkpointing has it off in its config
    kwargs = {"do_sample": False, "use_cache": True, **(generation_kwargs or {})}
    ids = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"] if prompts else []
    order = list(range(len(ids)))
    if sort_by_length:
        order.sort(key=lambda i: (-len(ids[i]), i))
    if max_new_tokens is None and max_length is None:
        raise ValueError("generate_batched needs max_new_tokens or max_length")
    pad = tokenizer.pad_token_id
    stop = stop_token_ids(model, tokenizer)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not progress):
        batch = order[start : start + batch_size]
        rooms = [max_new_tokens if max_new_tokens is not None else max(max_length - len(ids[i]), 0) for i in batch]
        if max(rooms) == 0:  # every prompt already fills max_length
            yield from (Completion(i, "", len(ids[i]), 0, cut=True) for i in batch)
            continue
        width = max(len(ids[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):  # left padding
            input_ids[row, width - len(ids[i]) :] = torch.tensor(ids[i])
            mask[row, width - len(ids[i]) :] = 1
        if seed is not None:
            torch.manual_seed(seed + start)
        out = model.generate(
            input_ids=input_ids.to(model.device),
            attention_mask=mask.to(model.device),
            max_new_tokens=max(rooms),
            pad_token_id=pad,
            **kwargs,
        )
        for row, i in enumerate(batch):
            new = out[row, width : width + rooms[row]].tolist()
            n = next((k for k, t in enumerate(new) if t in stop), len(new))
            text = tokenizer.decode(new[:n], skip_special_tokens=True)
            yield Completion(i, text, len(ids[i]), n, cut=n == rooms[row])


def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int | None = 128,
    batch_size: int = 8,
    desc: str = "Generating",
    generation_kwargs: Mapping[str, Any] | None = None,
    sort_by_length: bool = False,
    progress: bool = True,
    max_length: int | None = None,
) -> list[str]:
    """The answers to ``prompts`` in their order, stripped (see ``generate_batched``)."""
    answers = [""] * len(prompts)
    for c in generate_batched(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        generation_kwargs=generation_kwargs,
        sort_by_length=sort_by_length,
        progress=progress,
        desc=desc,
        max_length=max_length,
    ):
        answers[c.index] = c.text.strip()
    return answers
