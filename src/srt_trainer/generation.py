"""Batched generation with a student, in a prompt template's format (greedy unless sampling is asked for)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm


@torch.no_grad()
def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 128,
    batch_size: int = 8,
    desc: str = "Generating",
    generation_kwargs: Mapping[str, Any] | None = None,
    sort_by_length: bool = False,
    progress: bool = True,
) -> list[str]:
    """Answers to already-rendered prompts, in the prompts' order (left padding, so every row's answer starts at
    the same column).

    ``generation_kwargs`` go to ``model.generate`` (e.g. ``do_sample``, ``temperature``, ``top_p``); the default
    is greedy. ``sort_by_length`` batches prompts of similar length together (less padding, fewer wasted steps).
    """
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    # use_cache: a student loaded for training with gradient checkpointing has it off in its config
    kwargs = {"do_sample": False, "use_cache": True, **(generation_kwargs or {})}
    order = list(range(len(prompts)))
    if sort_by_length and prompts:
        lengths = [len(ids) for ids in tokenizer(list(prompts))["input_ids"]]
        order.sort(key=lambda i: (-lengths[i], i))
    answers: list[str] = [""] * len(prompts)
    try:
        for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch", disable=not progress):
            idx = order[start : start + batch_size]
            batch = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True)
            batch = batch.to(model.device)
            out = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **kwargs)
            new_tokens = out[:, batch["input_ids"].shape[1] :]
            for i, text in zip(idx, tokenizer.batch_decode(new_tokens, skip_special_tokens=True), strict=True):
                answers[i] = text.strip()
    finally:
        tokenizer.padding_side = side
    return answers
