"""Teacher reflection (SPEC 1.2): prompts, tag parsers, and the runner behind ``srt reflect``.

- ``run_reflect(ReflectConfig(mode=..., data=..., output=..., teacher=...))``: the file-level stage.
- ``reflect_rows(rows, mode="instruction"|"response", teacher=build_teacher(...), config=ReflectConfig(...))``:
  rows in, reflected rows out (``reflect`` also returns the raw texts and counts).
"""

from srt_trainer.reflection.cli import ReflectConfig, build_teacher_from_config, run_reflect
from srt_trainer.reflection.parsers import (
    ParsedInstruction,
    extract_tagged,
    parse_instruction_reflection,
    parse_response_reflection,
)
from srt_trainer.reflection.prompts import DEFAULT_PROMPTS, PromptTemplateError, ReflectionPrompt, load_prompt
from srt_trainer.reflection.runner import STATUSES, ReflectionResult, detect_variant, reflect, reflect_rows

__all__ = [
    "DEFAULT_PROMPTS",
    "STATUSES",
    "ParsedInstruction",
    "PromptTemplateError",
    "ReflectConfig",
    "ReflectionPrompt",
    "ReflectionResult",
    "build_teacher_from_config",
    "detect_variant",
    "extract_tagged",
    "load_prompt",
    "parse_instruction_reflection",
    "parse_response_reflection",
    "reflect",
    "reflect_rows",
    "run_reflect",
]
