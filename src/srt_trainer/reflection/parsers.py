"""Read the teacher's tagged answers, tolerating what the release tolerated.

``[New Instruction] ... [End]``, ``[New Answer] ... [End]`` and ``[Better Answer] ... [End]``; also without
``[End]`` (a segment stops at the next tag, an echoed ``[The End of Answer]``, or the end of the text), the
``New Answer:`` forms, any letter case, Markdown emphasis around a tag, tags repeated back to back, and a template
placeholder echoed back ("your answer"). An optional ``[New Input] ... [End]`` becomes the new row's input.

The release's rejection rules decide which parts are usable: an instruction that is missing or still the
template's placeholder, and an answer that is missing, a placeholder or only "N/A", are unusable; ``inspect_*`` says
which rule rejected a part, so each can be counted. ``rule="whole"`` (default) judges the whole segment; ``"substring"``
is the release's test, which rejects a segment that merely contains "your instruction", "your answer" or "N/A".
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterator
from dataclasses import dataclass

TAGS = ("New Instruction", "New Input", "New Answer", "Better Answer")
PLACEHOLDERS = {
    "your instruction",
    "your new instruction",
    "your input",
    "your answer",
    "your new answer",
    "your better answer",
    "...",
    "…",
}


def _name(tag: str) -> str:
    return r"\s+".join(tag.split())


def _bracket(tag: str) -> str:
    return rf"(?:\*\*|__)?\[\s*{_name(tag)}\s*\](?:\*\*|__)?\s*:?"


def _colon(tag: str) -> str:
    return rf"(?:(?<=\n)|^)[ \t#>*_-]*{_name(tag)}(?:\*\*|__)?\s*:(?:\*\*|__)?"


_END = r"(?:\*\*|__)?\[\s*end\s*\](?:\*\*|__)?"
_ECHO = r"\[\s*the\s+(?:start|end)\b"  # the prompt's own "[The End of Answer]" markers, echoed back
_STOP = re.compile("|".join([_END, _ECHO, *(_bracket(t) for t in TAGS), *(_colon(t) for t in TAGS)]), re.IGNORECASE)


# Where a stop can start: at a bracket (or the ``**`` / ``__`` before it), or at a line's start for the ``Tag:``
# forms. Trying ``_STOP`` there only finds what ``_STOP.search`` finds, without trying its dozen case-blind
# alternatives at every character of a long answer (measured: 0.8 ms for a 1,500-character answer, 8x less here).
def _bracket_starts(text: str, pos: int) -> Iterator[int]:
    b = text.find("[", pos)
    while b != -1:
        if b - 2 >= pos and text[b - 2 : b] in ("**", "__"):
            yield b - 2
        yield b
        b = text.find("[", b + 1)


def _line_starts(text: str, pos: int) -> Iterator[int]:
    if pos == 0 or text[pos - 1] == "\n":  # a line that starts right there
        yield pos
    n = text.find("\n", pos)
    while n != -1:
        yield n + 1
        n = text.find("\n", n + 1)


def _next_stop(text: str, pos: int) -> re.Match[str] | None:
    """``_STOP.search(text, pos)``: the first stop at or after ``pos``."""
    for start in heapq.merge(_bracket_starts(text, pos), _line_starts(text, pos)):
        found = _STOP.match(text, start)
        if found is not None:
            return found
    return None


_TRAILING_ENUM = re.compile(r"\n\s*\d+[.)]\s*$")
# answers that say nothing: "N/A" and its spellings, alone (the release rejected any answer containing "N/A")
NOT_AVAILABLE = {"n/a", "na", "n.a", "none", "not applicable", "no answer"}
# the release's substring tests, per tag
_SUBSTRING_RULES = {
    "New Instruction": ("your instruction",),
    "New Answer": ("your answer", "N/A"),
    "Better Answer": (),
}
REJECTION_RULES = ("whole", "substring")
MISSING, PLACEHOLDER, NOT_AVAILABLE_REASON = "missing", "placeholder", "n/a"
NOT_ONE = "not exactly one tag"  # the release's response rule: a reply with two [Better Answer] tags is unusable


def _rejection(segment: str, tag: str, rule: str) -> str | None:
    """Why ``segment`` (stripped, non-empty) is unusable as ``tag``'s content, or None."""
    if rule == "substring":
        for needle in _SUBSTRING_RULES.get(tag, ()):
            if needle in segment:
                return NOT_AVAILABLE_REASON if needle == "N/A" else PLACEHOLDER
        return None
    bare = segment.lower().strip(" .:!*_`\"'()")
    if bare in PLACEHOLDERS or segment.lower().strip(" .:") in PLACEHOLDERS:
        return PLACEHOLDER
    if tag == "New Answer" and bare in NOT_AVAILABLE:
        return NOT_AVAILABLE_REASON
    return None


def inspect_tagged(text: str, tag: str, rule: str = "whole") -> tuple[str | None, str | None]:
    """The first usable segment after ``tag`` (bracket form when the text has one, else the ``Tag:`` form) and None;
    or None and why nothing was usable: ``missing`` (no non-empty segment), else the last rejection's reason
    (``placeholder``, ``n/a``; under the release's ``substring`` rule also ``not exactly one tag`` for a response
    reflection with two or more ``[Better Answer]`` tags)."""
    if rule not in REJECTION_RULES:
        raise ValueError(f"unknown rejection rule {rule!r}; choose one of {', '.join(REJECTION_RULES)}")
    if not text:
        return None, MISSING
    if rule == "substring" and tag == "Better Answer" and text.count("[Better Answer]") > 1:
        return None, NOT_ONE  # as released: exactly one tag (none is `missing` under either rule)
    pattern = re.compile(_bracket(tag), re.IGNORECASE)
    starts = list(pattern.finditer(text))
    if not starts:
        starts = list(re.compile(_colon(tag), re.IGNORECASE).finditer(text))
    reason = MISSING
    for match in starts:
        stop = _next_stop(text, match.end())
        segment = text[match.end() : stop.start() if stop else len(text)]
        segment = _TRAILING_ENUM.sub("", segment.strip()).strip()
        if not segment:
            continue
        rejected = _rejection(segment, tag, rule)
        if rejected is None:
            return segment, None
        reason = rejected
    return None, reason


def extract_tagged(text: str, tag: str, rule: str = "whole") -> str | None:
    """The first usable segment after ``tag``, or None (see ``inspect_tagged``)."""
    return inspect_tagged(text, tag, rule)[0]


@dataclass(frozen=True)
class ParsedInstruction:
    instruction: str
    input: str
    output: str


@dataclass(frozen=True)
class InstructionFields:
    """Each part of an instruction reflection on its own: the usable text, or None and why it was rejected
    (``missing``, ``placeholder``, ``n/a``)."""

    instruction: str | None
    input: str
    output: str | None
    instruction_rejected: str | None
    output_rejected: str | None


def inspect_instruction_reflection(text: str, rule: str = "whole") -> InstructionFields:
    """The new instruction, input and answer, each judged on its own (the release kept a usable part even when the
    other was unusable)."""
    instruction, instruction_rejected = inspect_tagged(text, "New Instruction", rule)
    output, output_rejected = inspect_tagged(text, "New Answer", rule)
    return InstructionFields(
        instruction, extract_tagged(text, "New Input") or "", output, instruction_rejected, output_rejected
    )


def parse_instruction_reflection(text: str, rule: str = "whole") -> ParsedInstruction | None:
    """The new instruction (and input, if tagged) with its answer; None unless both instruction and answer are
    there."""
    fields = inspect_instruction_reflection(text, rule)
    if not fields.instruction or not fields.output:
        return None
    return ParsedInstruction(fields.instruction, fields.input, fields.output)


def parse_response_reflection(text: str) -> str | None:
    """The better answer, or None."""
    return extract_tagged(text, "Better Answer")
