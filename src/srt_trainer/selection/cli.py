"""``srt select``: keep the rewrites the student accepts, and report what was kept and why.

srt select --ori ori.scores.jsonl --q q.scores.jsonl --a a.scores.jsonl --qa qa.scores.jsonl --output selected.jsonl
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from srt_trainer.errors import run_cli
from srt_trainer.selection.config import SelectArguments, SelectionArguments
from srt_trainer.selection.policy import SelectionResult

PROG = "srt select"


def format_result(result: SelectionResult, policy: str) -> str:
    """What ``srt select`` prints: the counts of every step, the report files, the output."""
    from srt_trainer.selection.report import format_counts

    lines = [f"selection ({policy} policy) of {result.counts['rows']} source rows:", format_counts(result.counts)]
    if result.sized_by == "paper":
        lines.append(f"size {result.size}: the paper policy's kept count on these four files")
    elif result.size is not None:
        lines.append(f"size {result.size}")
    lines += [f"{kind}: {path}" for kind, path in result.files.items() if kind != "output"]
    lines.append(f"wrote {result.files['output']} ({len(result.rows)} rows)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def command() -> None:
        from srt_trainer.options import StageParser
        from srt_trainer.selection.runner import run_select

        args, selection = StageParser((SelectArguments, SelectionArguments), PROG).parse_args_and_config(argv)
        print(format_result(run_select(args, selection), selection.policy))

    return run_cli(PROG, command)
