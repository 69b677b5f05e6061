"""The four IFD / r-IFD views of a sample, tokenized and masked exactly as the released scorer does.

For a sample (instruction + input ``x``, response ``y``) the student's statistics are four mean token NLLs:

============== ================== ========================= =======================================
view           text               targets                   truncation
============== ================== ========================= =======================================
``out_alone``  ``y``              every token after the 1st ``max_length - len(prompt ids) + 1``
``out_cond``   ``prompt(x) + y``  from ``len(prompt ids)``  ``max_length``
``ins_alone``  ``x``              every token after the 1st ``max_length - len(reverse ids) + 1``
``ins_cond``   ``reverse(y) + x`` from ``len(reverse ids)`` ``max_length``
============== ================== ========================= =======================================

``x`` is ``instruction + input`` (plain concatenation); every text is tokenized with the tokenizer's default
special tokens. With ``rifd_target_start="release"`` the targets of ``ins_cond`` start where the released scorer
finds them: at the last occurrence of the instruction text in ``reverse(y) + x`` (the same place unless the
instruction is empty or repeats inside its input). A multi-turn conversation gives these views for each assistant
turn: its response conditioned on the dialogue before it, and its user turn predicted from the response.

``DataCollatorForIFD`` does one thing: samples in, padded tensors of their views out (with ``labels`` masked to
``-100`` outside the targets), usable with a plain ``DataLoader``. The batched scorer uses its ``views`` method
and lays the views out itself, with ``pad`` (right-padded rows) or ``pack`` (several views back to back per row).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from srt_trainer.templates import PromptTemplate

VIEW_KINDS = ("out_alone", "out_cond", "ins_alone", "ins_cond")
CONDITIONED = frozenset({"out_cond", "ins_cond"})
# the two views each statistic needs: IFD = exp(s(y|x) - s(y)), r-IFD = exp(s(x|y) - s(x))
STAT_VIEWS = {"ifd": ("out_cond", "out_alone"), "rifd": ("ins_cond", "ins_alone")}
IGNORE_INDEX = -100
RIFD_TARGET_STARTS = ("reverse_prompt", "release")


@dataclass
class View:
    """One tokenized text whose targets are ``input_ids[target_start:]``."""

    sample: int  # position of the sample in the list given to ``views``
    turn: int  # 0-based assistant turn
    kind: str  # one of VIEW_KINDS
    input_ids: list[int]
    target_start: int

    @property
    def num_targets(self) -> int:
        return len(self.input_ids) - self.target_start

    @property
    def conditioned(self) -> bool:
        return self.kind in CONDITIONED


@dataclass
class SampleViews:
    """The views of one sample that have targets; why a statistic (``ifd``, ``rifd``) is missing; and, when both
    are, why the sample has no statistics at all."""

    views: list[View] = field(default_factory=list)
    num_turns: int = 0
    error: str | None = None
    stat_errors: dict[str, str] = field(default_factory=dict)


@dataclass
class _Turn:
    sample: int
    turn: int
    context: str  # prompt before the response
    response: str
    instruction: str  # the r-IFD target: instruction + input
    reverse: str  # reverse prompt built from the response
    instruction_only: str  # the text the release searches for to start the r-IFD target


def _turns(sample: Mapping[str, Any], template: PromptTemplate, eos_token: str) -> list[tuple[str, str, str, str]]:
    """(context, response, instruction text, instruction alone) per assistant turn of a normalized or Alpaca-style
    sample."""
    system = sample.get("system") or None
    messages = sample.get("messages")
    if messages and len(messages) > 2:
        out = []
        for k in range(1, len(messages), 2):
            context = template.conversation_prompt(messages[:k], system=system, eos_token=eos_token)
            user = messages[k - 1]["content"]
            out.append((context, messages[k]["content"], user, user))
        return out
    instruction, input_ = sample.get("instruction") or "", sample.get("input") or ""
    prompt = template.prompt(instruction, input_, system=system)
    return [(prompt, sample.get("output") or "", instruction + input_, instruction)]


@dataclass
class DataCollatorForIFD:
    """Turn samples into their IFD / r-IFD views and pad them into a batch.

    Args:
        tokenizer: the student's tokenizer (needs a pad token for ``__call__``).
        template: the prompt template the statistics are computed under.
        max_length: the release's ``max_length`` (2048).
        rifd_target_start: where the targets of ``ins_cond`` start: ``"reverse_prompt"`` (after the reverse
            prompt: all of instruction + input) or ``"release"`` (at the last occurrence of the instruction text,
            located by text as the released scorer does).
    """

    tokenizer: Any
    template: PromptTemplate
    max_length: int = 2048
    rifd_target_start: str = "reverse_prompt"

    def __post_init__(self) -> None:
        if self.rifd_target_start not in RIFD_TARGET_STARTS:
            raise ValueError(f"rifd_target_start must be one of {', '.join(RIFD_TARGET_STARTS)}")

    def _ids(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return self.tokenizer(texts, add_special_tokens=True)["input_ids"]

    def _truncate(self, texts: list[str], ids: list[list[int]], limits: list[int]) -> list[list[int]]:
        # Re-tokenize with the tokenizer's own truncation only where needed: it keeps special tokens right. A limit of
        # 0 or less (the context alone fills max_length) cuts nothing, as in the release, whose slow tokenizer refuses
        # to truncate below zero; the statistic needs the conditioned view, which is empty. The texts to cut are
        # re-tokenized in one call per limit, not one call each: with a short max_length that is most of them.
        out = list(ids)
        by_limit: dict[int, list[int]] = {}
        for i, (t, limit) in enumerate(zip(ids, limits, strict=True)):
            if len(t) > limit > 0:
                by_limit.setdefault(limit, []).append(i)
        for limit, positions in by_limit.items():
            cut = self.tokenizer([texts[i] for i in positions], truncation=True, max_length=limit)["input_ids"]
            for i, t in zip(positions, cut, strict=True):
                out[i] = t
        return out

    def views(self, samples: Sequence[Mapping[str, Any]]) -> list[SampleViews]:
        """The views of each sample (tokenized in bulk) that have targets, and why a statistic has none.

        Each statistic stands alone, as in the released scorer: IFD needs ``out_alone`` and ``out_cond``, r-IFD
        ``ins_alone`` and ``ins_cond``. A view without targets is dropped and its statistic gets a reason in
        ``stat_errors``; the other statistic is still computed. Only an empty response (the empty string: the
        release tests ``output == ''``, so whitespace is scored) leaves a sample without any view.
        """
        eos = self.tokenizer.eos_token or ""
        result = [SampleViews() for _ in samples]
        turns: list[_Turn] = []
        for i, sample in enumerate(samples):
            sample_turns = _turns(sample, self.template, eos)
            result[i].num_turns = len(sample_turns)
            for k, (context, response, instruction, alone) in enumerate(sample_turns):
                if response == "":
                    result[i].error = "empty response" + (f" (turn {k + 1})" if len(sample_turns) > 1 else "")
                    result[i].stat_errors = dict.fromkeys(STAT_VIEWS, result[i].error)
                    break
                reverse = self.template.reverse_prompt(response)
                turns.append(_Turn(i, k, context, response, instruction, reverse, alone))
        turns = [t for t in turns if result[t.sample].error is None]

        context_ids = self._ids([t.context for t in turns])
        reverse_ids = self._ids([t.reverse for t in turns])
        whole = [t.context + t.response for t in turns]
        whole_rev = [t.reverse + t.instruction for t in turns]
        out_cond = self._truncate(whole, self._ids(whole), [self.max_length] * len(turns))
        ins_cond = self._truncate(whole_rev, self._ids(whole_rev), [self.max_length] * len(turns))
        ins_start = [len(r) for r in reverse_ids]
        if self.rifd_target_start == "release":
            # rfind: an empty instruction is "found" at the very end (no target); one repeated in the input there
            before = [w[: w.rfind(t.instruction_only)] for w, t in zip(whole_rev, turns, strict=True)]
            ins_start = [len(ids) for ids in self._ids(before)]
        responses = [t.response for t in turns]
        instructions = [t.instruction for t in turns]
        out_alone = self._truncate(responses, self._ids(responses), [self.max_length - len(c) + 1 for c in context_ids])
        ins_alone = self._truncate(
            instructions, self._ids(instructions), [self.max_length - len(r) + 1 for r in reverse_ids]
        )
        for j, t in enumerate(turns):
            entry = result[t.sample]
            views = {
                "out_alone": View(t.sample, t.turn, "out_alone", out_alone[j], 1),
                "out_cond": View(t.sample, t.turn, "out_cond", out_cond[j], len(context_ids[j])),
                "ins_alone": View(t.sample, t.turn, "ins_alone", ins_alone[j], 1),
                "ins_cond": View(t.sample, t.turn, "ins_cond", ins_cond[j], ins_start[j]),
            }
            entry.views += [v for v in views.values() if v.num_targets > 0]
            for stat, kinds in STAT_VIEWS.items():
                empty = [kind for kind in kinds if views[kind].num_targets <= 0]
                if empty and stat not in entry.stat_errors:  # the first turn without it names the reason
                    reason = _no_target_reason(
                        empty[0], t, len(context_ids[j]), len(reverse_ids[j]), self.max_length, self.rifd_target_start
                    )
                    entry.stat_errors[stat] = reason + (f" (turn {t.turn + 1})" if entry.num_turns > 1 else "")
        for entry in result:
            if entry.error is None and len(entry.stat_errors) == len(STAT_VIEWS):
                entry.error = "; ".join(dict.fromkeys(entry.stat_errors[s] for s in STAT_VIEWS))
        return result

    def pad(self, views: Sequence[View], prefix_len: int = 0) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids`` / ``attention_mask`` / ``labels`` of ``views``, skipping the first
        ``prefix_len`` tokens of each (a shared prefix whose keys and values are computed once)."""
        length = max(len(v.input_ids) - prefix_len for v in views)
        pad_id = self.tokenizer.pad_token_id
        input_ids = torch.full((len(views), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(views), length), dtype=torch.long)
        labels = torch.full((len(views), length), IGNORE_INDEX, dtype=torch.long)
        for i, v in enumerate(views):
            ids = torch.tensor(v.input_ids[prefix_len:], dtype=torch.long)
            input_ids[i, : len(ids)] = ids
            attention_mask[i, : len(ids)] = 1
            start = max(v.target_start - prefix_len, 0)
            labels[i, start : len(ids)] = ids[start:]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def pack(self, rows: Sequence[Sequence[View]], prefix_len: int = 0) -> dict[str, torch.Tensor]:
        """Views laid back to back (``rows[r]``: the views of row ``r``), each without its first ``prefix_len``
        tokens: ``input_ids`` and ``labels`` as in ``pad``, ``position_ids`` that start at ``prefix_len`` again
        with every view, and ``view_index``, the view (numbered over the rows in order) of each token, ``-1`` on a
        row's unused tail. A view's first token is never a label: the state before it belongs to another view."""
        width = max(sum(len(v.input_ids) - prefix_len for v in row) for row in rows)
        pad_id = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        view_index = torch.full((len(rows), width), -1, dtype=torch.long)
        position_ids = torch.empty((len(rows), width), dtype=torch.long)
        k = 0
        for r, row in enumerate(rows):
            col = 0
            for v in row:
                ids = torch.tensor(v.input_ids[prefix_len:], dtype=torch.long)
                end = col + len(ids)
                input_ids[r, col:end] = ids
                position_ids[r, col:end] = torch.arange(prefix_len, prefix_len + len(ids))
                start = max(v.target_start - prefix_len, 1)
                labels[r, col + start : end] = ids[start:]
                view_index[r, col:end] = k
                k, col = k + 1, end
            position_ids[r, col:] = torch.arange(prefix_len, prefix_len + width - col)
        return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels, "view_index": view_index}

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Samples to a padded batch of all their views, with ``view_sample`` / ``view_turn`` / ``view_kind``
        (index into ``VIEW_KINDS``) telling which statistic each row of the batch is. Samples without
        statistics contribute no rows; a sample with one statistic contributes the views it has."""
        views = [v for sv in self.views(features) for v in sv.views]
        if not views:
            raise ValueError("none of the samples in this batch has statistics")
        batch = self.pad(views)
        batch["view_sample"] = torch.tensor([v.sample for v in views])
        batch["view_turn"] = torch.tensor([v.turn for v in views])
        batch["view_kind"] = torch.tensor([VIEW_KINDS.index(v.kind) for v in views])
        return batch


def _no_target_reason(
    kind: str, turn: _Turn, prompt_len: int, reverse_len: int, max_length: int, rifd_target_start: str
) -> str:
    """Why a view of ``kind`` has no target token."""
    if kind == "out_cond" or (kind == "out_alone" and prompt_len >= max_length):
        if prompt_len >= max_length:
            return f"prompt is {prompt_len} tokens: no room for the response within max_length {max_length}"
        return "the response adds no token to the prompt"  # tokenization merged it into the prompt's last token
    if kind in ("ins_cond", "ins_alone") and turn.instruction == "":
        return "empty instruction and input: nothing to predict"
    if kind == "ins_cond" and rifd_target_start == "release" and reverse_len < max_length:
        if turn.instruction_only == "":
            return "empty instruction: the release's text search puts the r-IFD target at the end (no target)"
        return "the instruction's last occurrence leaves no target within max_length (release target search)"
    if kind == "ins_cond" or (kind == "ins_alone" and reverse_len >= max_length):
        if reverse_len >= max_length:
            return f"reverse prompt is {reverse_len} tokens: no room for the instruction within max_length {max_length}"
        return "the instruction adds no token to the reverse prompt"
    what = "response" if kind == "out_alone" else "instruction"
    return f"{what} is a single token: its unconditioned loss has no target (every token after the first)"
