"""A slow, one-sample-at-a-time reference of the released scorer, written independently of the package's
collator: four ``model(input_ids, labels=...)`` calls per turn, exactly as SPEC'd."""

from __future__ import annotations

import math

import torch


def _loss(model, ids: list[int], start: int) -> float:
    x = torch.tensor([ids], device=model.device)
    labels = x.clone()
    labels[0, :start] = -100
    with torch.no_grad():
        return model(x, labels=labels).loss.item()


def reference_turn(model, tok, context: str, response: str, instruction: str, reverse: str, max_length: int):
    enc = lambda text, **kw: tok(text, **kw)["input_ids"]  # noqa: E731
    n_ctx, n_rev = len(enc(context)), len(enc(reverse))
    losses = {
        "loss_out_alone": _loss(model, enc(response, truncation=True, max_length=max_length - n_ctx + 1), 0),
        "loss_out_cond": _loss(model, enc(context + response, truncation=True, max_length=max_length), n_ctx),
        "loss_ins_alone": _loss(model, enc(instruction, truncation=True, max_length=max_length - n_rev + 1), 0),
        "loss_ins_cond": _loss(model, enc(reverse + instruction, truncation=True, max_length=max_length), n_rev),
    }
    losses["ifd"] = math.exp(losses["loss_out_cond"] - losses["loss_out_alone"])
    losses["rifd"] = math.exp(losses["loss_ins_cond"] - losses["loss_ins_alone"])
    return losses


def reference_sample(model, tok, template, sample: dict, max_length: int = 2048) -> dict:
    """Per-turn statistics averaged over turns (one turn for Alpaca rows)."""
    messages = sample.get("messages") or []
    if len(messages) > 2:
        turns = [
            (
                template.conversation_prompt(messages[:k], eos_token=tok.eos_token),
                messages[k]["content"],
                messages[k - 1]["content"],
            )
            for k in range(1, len(messages), 2)
        ]
    else:
        turns = [
            (
                template.prompt(sample["instruction"], sample["input"]),
                sample["output"],
                sample["instruction"] + sample["input"],
            )
        ]
    per_turn = [reference_turn(model, tok, c, y, x, template.reverse_prompt(y), max_length) for c, y, x in turns]
    return {k: sum(t[k] for t in per_turn) / len(per_turn) for k in per_turn[0]}
