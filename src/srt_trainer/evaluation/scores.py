"""The judge's two scores, read from the first line of a review (the pairwise reviewer's format).

Shared by judging (a review without readable scores is asked again) and aggregation (it is a failure, never a tie).
"""

from __future__ import annotations

import re

# Markdown and quoting the judge may wrap its first line in.
_MARKUP = re.compile(r"[*_`#>|]+")
# "Assistant 1", "Assistant 2's", "Answer 2", "Assistant A", "Assistants 1 and 2": labels whose digits are not scores.
_LABEL = re.compile(
    r"(?i)\bassistants?\s*1\s*(?:and|&|,|/)\s*(?:assistant\s*)?2\b"
    r"|\b(?:assistant|answer|response|model)\s*(?:#\s*)?(?:[12]|one|two|[ab](?![a-z]))(?:'s)?"
)
# "8/10", "8 / 10", "8 out of 10": the scale is not a score.
_OUT_OF = re.compile(r"(?i)\s*(?:/|out\s+of)\s*10(?:\.0+)?(?![\d.])")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?!\w|\.\d)")
_HEADER_MAX_CHARS = 40
# A short line that announces the scores on the next one: "Scores:", "**Evaluation**".
_HEADER = re.compile(r"(?i)(?::\s*$|\b(?:scores?|ratings?|evaluation|review|verdict)\b)")


def _clean(line: str) -> str:
    return _MARKUP.sub(" ", line).strip()


def _numbers(line: str) -> list[float]:
    return [float(x) for x in _NUMBER.findall(_OUT_OF.sub(" ", _LABEL.sub(" ", line)))]


def _label_at(line: str, which: str) -> int | None:
    """Where "Assistant 1" (``which="1"``) or "Assistant 2" is named in a line, or None."""
    names = {"1": r"(?:1|one|a)", "2": r"(?:2|two|b)"}[which]
    m = re.search(rf"(?i)\b(?:assistant|answer|response|model)\s*(?:#\s*)?{names}\b", line)
    return m.start() if m else None


def parse_scores(review: str | None) -> tuple[float, float] | None:
    """The two scores (Assistant 1, Assistant 2) from the first line of a review, or None.

    Accepts "8 7", "8, 7", "8/10 7/10", "Assistant 1: 8 Assistant 2: 7", "Score: 8 and 7", decimals ("7.5 8"),
    markdown emphasis, labels in either order ("Assistant 2: 7, Assistant 1: 8"), a short header line ("Scores:")
    before the score line, and the two scores on two labelled lines ("Assistant 1: 8" / "Assistant 2: 7"). Scores
    must lie in 0–10. Numbers further down
    (the explanation) are never read.
    """
    if not review:
        return None
    lines = [c for c in (_clean(x) for x in review.splitlines()) if c]
    if not lines:
        return None
    start = 0
    if len(lines) > 1 and not _numbers(lines[0]) and len(lines[0]) <= _HEADER_MAX_CHARS and _HEADER.search(lines[0]):
        start = 1
    line = lines[start]
    first = _numbers(line)
    scores: list[float] | None = None
    if len(first) == 2:
        scores = first
        at_1, at_2 = _label_at(line, "1"), _label_at(line, "2")
        if at_1 is not None and at_2 is not None and at_2 < at_1:  # "Assistant 2: 7, Assistant 1: 8"
            scores = scores[::-1]
    elif len(first) == 1 and start + 1 < len(lines) and _label_at(line, "1") is not None:
        second = _numbers(lines[start + 1])
        if len(second) == 1 and _label_at(lines[start + 1], "2") is not None:
            scores = [first[0], second[0]]
    if scores is None or not all(0 <= s <= 10 for s in scores):
        return None
    return scores[0], scores[1]


def has_scores(review: str | None) -> bool:
    """The judge answered with a readable score pair (the validator that triggers a re-ask)."""
    return parse_scores(review) is not None
