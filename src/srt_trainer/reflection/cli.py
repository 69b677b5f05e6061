"""``srt reflect``: rewrite instructions (variant Q) or responses (A, QA) with a teacher LLM.

srt reflect --mode instruction --data alpaca.json --output q.jsonl --teacher transformers
srt reflect --mode response --data q.jsonl --output qa.jsonl --teacher openai --teacher-model gpt-4o-mini
OPENAI_API_KEY=... srt reflect --mode response --data alpaca.json --output a.jsonl --teacher openai \
    --teacher-model NAME --base-url http://127.0.0.1:8000/v1
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from srt_trainer.errors import run_cli

PROG = "srt reflect"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def command() -> None:
        from srt_trainer.options import StageParser
        from srt_trainer.reflection.config import ReflectArguments, ReflectionArguments
        from srt_trainer.reflection.runner import run_reflect
        from srt_trainer.teachers.config import TeacherArguments
        from srt_trainer.teachers.offline import RequestsExported

        parser = StageParser((ReflectArguments, ReflectionArguments, TeacherArguments), PROG)
        args, reflection, teacher_args = parser.parse_args_and_config(argv)
        try:
            run = run_reflect(args, teacher_args, reflection)
        except RequestsExported as done:  # the next step is the user's: not an error
            print(done)
            return
        result = run.result
        print(result.format())
        if result.statuses["failed"]:
            print(
                f"{result.statuses['failed']} rows failed (the teacher never answered; originals kept): run the same "
                f"command again to ask for them only; answered rows come from {run.cache}."
            )
        print(f"wrote {run.output} ({len(result.rows)} rows)")

    return run_cli(PROG, command)
