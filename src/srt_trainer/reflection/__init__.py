"""Teacher reflection (the paper's instruction and response reflection, §2): prompts, tag parsers, and the runner
behind ``srt reflect``.

- ``reflect(rows, "instruction" | "response", teacher, TeacherArguments(...), ReflectionArguments(...))``: rows in,
  a ``ReflectionResult`` out (the reflected rows in input order, the teacher's raw texts, the counts).
- ``run_reflect(ReflectArguments(mode=..., data=..., output=...), TeacherArguments(...), ReflectionArguments())``:
  the file-level stage (what ``srt reflect`` runs).
"""

from srt_trainer.reflection.config import ReflectArguments, ReflectConfigError, ReflectionArguments
from srt_trainer.reflection.parsers import (
    InstructionFields,
    ParsedInstruction,
    extract_tagged,
    inspect_instruction_reflection,
    inspect_tagged,
    parse_instruction_reflection,
    parse_response_reflection,
)
from srt_trainer.reflection.prompts import DEFAULT_PROMPTS, PromptTemplateError, ReflectionPrompt, load_prompt
from srt_trainer.reflection.runner import (
    STATUSES,
    ReflectionResult,
    ReflectRun,
    TeacherView,
    detect_variant,
    fold_input,
    reflect,
    run_reflect,
    teacher_view_of,
)

__all__ = [
    "DEFAULT_PROMPTS",
    "STATUSES",
    "InstructionFields",
    "ParsedInstruction",
    "PromptTemplateError",
    "ReflectArguments",
    "ReflectConfigError",
    "ReflectRun",
    "ReflectionArguments",
    "ReflectionPrompt",
    "ReflectionResult",
    "TeacherView",
    "detect_variant",
    "extract_tagged",
    "fold_input",
    "inspect_instruction_reflection",
    "inspect_tagged",
    "load_prompt",
    "parse_instruction_reflection",
    "parse_response_reflection",
    "reflect",
    "run_reflect",
    "teacher_view_of",
]
