"""``complete_all``: answers to many conversations through any teacher, cached durably, re-asked when unusable."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from srt_trainer.teachers.base import Answer, ChatResult, Conversation, RunCounts, SamplingConfig, Teacher
from srt_trainer.teachers.cache import ResponseCache, cache_keys

if TYPE_CHECKING:
    from srt_trainer.teachers.config import TeacherArguments

logger = logging.getLogger(__name__)


def reask_sampling(sampling: SamplingConfig, ask: int, reask_temperature: float | None) -> SamplingConfig:
    """Settings of the ``ask``-th re-ask. A greedy teacher would repeat itself, so a re-ask of a greedy request
    samples at ``reask_temperature`` with a seed of its own (None: ask with the same settings again)."""
    if ask == 0 or sampling.temperature > 0 or reask_temperature is None:
        return sampling
    return dataclasses.replace(sampling, temperature=reask_temperature, seed=(sampling.seed or 0) + ask)


def complete_all(
    teacher: Teacher,
    conversations: Sequence[Conversation],
    sampling: SamplingConfig,
    cache_path: str | Path | None,
    validate: Callable[[str], bool] | None = None,
    max_reasks: int = 1,
    progress: bool = True,
    desc: str = "",
    reask_temperature: float | None = 0.7,
) -> tuple[list[ChatResult], RunCounts]:
    """Answer every conversation, in input order.

    Answers already in the cache at ``cache_path`` are not sent; each new answer is appended there (flushed and
    fsync'd) the moment it arrives, so a killed run resumes without asking again and a rerun with the same settings
    sends nothing. An answer that fails ``validate`` is asked again up to ``max_reasks`` times; each re-ask is a
    request of its own in the cache (keyed with its ask number), so a resumed run replays exactly. A conversation
    whose requests all failed has ``text`` None and the last error. A prompt that occurs more than once is sent once.
    """
    start = time.perf_counter()
    n = len(conversations)
    counts = RunCounts(conversations=n)
    results = [ChatResult(text=None, error=None) for _ in range(n)]
    identity = teacher.identity()
    cache = ResponseCache(cache_path)
    bar = tqdm(total=n, desc=desc or f"{teacher.kind} teacher", unit="row", disable=not progress, dynamic_ncols=True)
    pending = list(range(n))
    try:
        for ask in range(max_reasks + 1):
            samp = reask_sampling(sampling, ask, reask_temperature)
            keys = dict(zip(pending, cache_keys(identity, (conversations[i] for i in pending), samp, ask), strict=True))
            waiting: dict[str, list[int]] = {}  # key -> positions; a prompt asked twice in one run is sent once
            for i in pending:
                hit = cache.get(keys[i])
                if hit is None:
                    waiting.setdefault(keys[i], []).append(i)
                    continue
                counts.cached += 1
                _record(
                    results[i],
                    Answer(
                        hit["text"],
                        None,
                        hit.get("prompt_tokens", 0),
                        hit.get("completion_tokens", 0),
                        0,
                        cut=bool(hit.get("cut", False)),
                    ),
                    cached=True,
                )
                bar.update(1)
            if waiting:
                to_send = [positions[0] for positions in waiting.values()]
                counts.asked += len(to_send)

                def on_answer(
                    j: int, answer: Answer, to_send: list[int] = to_send, keys: dict = keys, waiting: dict = waiting
                ) -> None:
                    i = to_send[j]
                    if answer.text is not None:  # durable first, then used
                        cache.put(keys[i], answer, teacher=identity.get("teacher"), model=identity.get("model"))
                    counts.requests += answer.attempts
                    counts.retried += max(0, answer.attempts - 1)
                    counts.timed_out += answer.timeouts
                    counts.prompt_tokens += answer.prompt_tokens
                    counts.completion_tokens += answer.completion_tokens
                    _record(results[i], answer, cached=False)
                    for twin in waiting[keys[i]][1:]:  # the same prompt elsewhere in the input: answered, not sent
                        counts.shared += answer.text is not None
                        _record(results[twin], dataclasses.replace(answer, attempts=0), cached=answer.text is not None)
                    bar.update(len(waiting[keys[i]]))
                    bar.set_postfix_str(f"{counts.completion_tokens} tok out, {counts.retried} retried", refresh=False)

                teacher.generate([conversations[i] for i in to_send], samp, on_answer)
            pending = _needs_reask(results, pending, validate, last=ask == max_reasks)
            counts.reasked += len(pending)
            if not pending:
                break
            bar.total += len(pending)  # re-asks are answers to wait for too
            bar.refresh()
    finally:
        bar.close()
        cache.close()
    counts.failed = sum(r.text is None for r in results)
    counts.invalid = sum(r.valid is False for r in results)
    counts.cut = sum(r.cut for r in results if r.text is not None)
    counts.seconds = time.perf_counter() - start
    return results, counts


def _record(result: ChatResult, answer: Answer, cached: bool) -> None:
    first = not result.texts and result.attempts == 0 and result.error is None and not result.cached
    result.attempts += 0 if cached else answer.attempts
    result.cached = cached if first else (result.cached and cached)
    if answer.text is None:
        result.error = answer.error or "no answer"
        return  # keep an earlier (unusable) text if there was one
    result.text = answer.text
    result.error = None
    result.cut = answer.cut
    result.texts.append(answer.text)
    result.prompt_tokens += answer.prompt_tokens
    result.completion_tokens += answer.completion_tokens


def _needs_reask(
    results: list[ChatResult], pending: list[int], validate: Callable[[str], bool] | None, last: bool
) -> list[int]:
    again = []
    for i in pending:
        r = results[i]
        if validate is None or r.text is None:
            r.valid = None if r.text is None or validate is None else r.valid
            continue
        if validate(r.text):
            r.valid = True
        elif last:
            r.valid = False
        else:
            r.reasks += 1
            again.append(i)
    return again


def complete_all_from_args(
    teacher: Teacher,
    args: TeacherArguments,
    conversations: Sequence[Conversation],
    cache_path: str | Path | None,
    validate: Callable[[str], bool] | None = None,
    progress: bool = True,
    desc: str = "",
) -> tuple[list[ChatResult], RunCounts]:
    """``complete_all`` with the sampling, ``--max_reasks`` and ``--reask_temperature`` of ``args``."""
    return complete_all(
        teacher,
        conversations,
        args.sampling(),
        cache_path,
        validate=validate,
        max_reasks=args.max_reasks,
        progress=progress,
        desc=desc,
        reask_temperature=args.reask_temperature,
    )
