"""Read the teacher's tagged answers, tolerating what the release tolerated.

``[New Instruction] ... [End]``, ``[New Answer] ... [End]`` and ``[Better Answer] ... [End]``; also without
``[End]`` (a segment stops at the next tag, an echoed ``[The End of Answer]``, or the end of the text), the
``New Answer:`` forms, any letter case, Markdown emphasis around a tag, tags repeated back to back, and a template
placeholder echoed back ("your answer"). An optional ``[New Input] ... [End]`` becomes the new row's input.
"""

from __future__ import annotations

import re
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
_TRAILING_ENUM = re.compile(r"\n\s*\d+[.)]\s*$")


def extract_tagged(text: str, tag: str) -> str | None:
    """The first usable segment after ``tag``: bracket form when the text has one, else the ``Tag:`` form."""
    if not text:
        return None
    pattern = re.compile(_bracket(tag), re.IGNORECASE)
    starts = list(pattern.finditer(text))
    if not starts:
        starts = list(re.compile(_colon(tag), re.IGNORECASE).finditer(text))
    for match in starts:
        stop = _STOP.search(text, match.end())
        segment = text[match.end() : stop.start() if stop else len(text)]
        segment = _TRAILING_ENUM.sub("", segment.strip()).strip()
        if segment and segment.lower().strip(" .:") not in PLACEHOLDERS:
            return segment
    return None


@dataclass(frozen=True)
class ParsedInstruction:
    instruction: str
    input: str
    output: str


def parse_instruction_reflection(text: str) -> ParsedInstruction | None:
    """The new instruction (and input, if tagged) with its answer; None unless both instruction and answer are
    there."""
    instruction = extract_tagged(text, "New Instruction")
    output = extract_tagged(text, "New Answer")
    if not instruction or not output:
        return None
    return ParsedInstruction(instruction, extract_tagged(text, "New Input") or "", output)


def parse_response_reflection(text: str) -> str | None:
    """The better answer, or None."""
    return extract_tagged(text, "Better Answer")
