"""One shape for every stage: its output, the files beside it, the checks before any work, and what it writes.

A stage (``srt reflect``, ``srt score``, ``srt select``, ``srt eval generate`` and ``judge``) reads its inputs and
writes one output, ``.jsonl`` or ``.parquet``, with side files named from it (``scores.jsonl`` →
``scores.summary.json``, ``scores.rejects.jsonl``, ``scores.lock``, ``scores.score-shards/``). ``Stage`` names them
in one place and does what every stage does around its own work, so that a runner keeps only that work::

    from srt_trainer.stage import Stage

    def run_mystage(args: MyArguments) -> MyRun:
        stage = Stage(args.output, "my output", inputs={"--data": args.data}, side=("rejects.jsonl", "summary.json"))
        with stage.guard():  # output ≠ any input, output writable, the lock held (and gone again if refused)
            loaded = stage.load(args.data, usable_for="my stage", to="do", limit=args.limit)  # rejects written
            rows = [do(row) for row in loaded.rows]  # the stage's own work
            stage.write(rows)  # whole or not at all
            summary = stage.write_summary({"rows": len(rows), "data": loaded.source})
        return MyRun(rows, summary, stage.output)

- ``side``: the suffixes of the files the stage writes beside its output; each is refused, before any work, when it
  is one of the inputs (``SIDE_LABELS`` says how messages name it), and ``stage.path(suffix)`` is its path.
  ``extra``: other outputs the user named by option (``{"--teacher_cache": path}``), and ``reports``: the suffixes
  of report files (``aggregate.md``), checked the same way.
- ``guard()``: the checks before any work and the output's lock (``io.output_lock``), on the main process only.
- ``load()``: instruction data with its rejects written beside the output; an input with no usable row is refused
  naming the file. ``reject()`` does the same for a stage that reads its items its own way; ``nonempty()`` refuses a
  source with no row at all, as every loader does (``<file>: contains no rows``).
- ``write()``, ``write_side()``, ``write_summary()``: atomic writes (``io.write_rows``, ``io.write_json``).
- ``shards(name)``: the ``ShardStore`` of a resumable stage, ``<stem>.<name>-shards/``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from srt_trainer.data import (
    LoadedData,
    NoUsableRowsError,
    Reject,
    load_instruction_data,
    require_rows,
    summarize_rejects,
    write_rejects,
)
from srt_trainer.io import (
    DataLoadError,
    ShardStore,
    check_distinct_paths,
    check_output_path,
    check_writable,
    no_rows_message,
    output_lock,
    sidecar_path,
    write_json,
    write_rows,
)

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

REJECTS = "rejects.jsonl"
SUMMARY = "summary.json"
LOCK = "lock"

# how messages name a side file (a file the user did not name, so it is named by what it is)
SIDE_LABELS = {
    REJECTS: "the rejects file",
    SUMMARY: "the summary",
    "raw.jsonl": "the raw texts",
    "hist.png": "the histogram",
    "alpaca_eval.json": "the AlpacaEval file",
    "failures.jsonl": "the failures file",
}


def side_label(suffix: str) -> str:
    """How messages name a side file: ``the summary`` for ``summary.json``."""
    return SIDE_LABELS.get(suffix, f"the file {suffix}")


class Stage:
    """A stage's output and the files beside it (see the module's docstring for how a stage uses it).

    Args:
        output: the output file; a name that is not ``.jsonl`` or ``.parquet`` is refused at once.
        what: what the output is, for the lock's message (``score output``, ``selection``).
        inputs: the files the stage reads, by the option that named them (``{"--data": path}``); None is skipped.
        side: the suffixes of the files written beside the output (``summary.json``, ``hist.png``).
        extra: other outputs, by the option that named them (``{"--teacher_cache": path}``).
        reports: the suffixes of report files written beside the output (``aggregate.md``): ``the report <suffix>``.
        is_main: False on the other processes of a launch: they check and lock nothing, and write no rejects.
    """

    def __init__(
        self,
        output: str | Path,
        what: str,
        inputs: Mapping[str, str | Path | None],
        side: Sequence[str] = (REJECTS, SUMMARY),
        extra: Mapping[str, str | Path | None] | None = None,
        reports: Sequence[str] = (),
        is_main: bool = True,
    ) -> None:
        self.output = check_output_path(output)
        self.what = what
        self.inputs = dict(inputs)
        self.side = tuple(side)
        self.extra = dict(extra or {})
        self.reports = tuple(reports)
        self.is_main = is_main

    def path(self, suffix: str) -> Path:
        """The file beside the output: ``path("summary.json")`` → ``<stem>.summary.json``."""
        return sidecar_path(self.output, suffix)

    @property
    def rejects(self) -> Path:
        return self.path(REJECTS)

    @property
    def summary(self) -> Path:
        return self.path(SUMMARY)

    @property
    def lock(self) -> Path:
        return self.path(LOCK)

    def outputs(self) -> dict[str, Path | str | None]:
        """Every file the stage writes, by how messages name it: the output, the side files, ``extra``, the reports
        and the lock."""
        side = {side_label(s): self.path(s) for s in self.side}
        reports = {f"the report {s}": self.path(s) for s in self.reports}
        return {"--output": self.output, **side, **self.extra, **reports, "the lock file": self.lock}

    @contextlib.contextmanager
    def guard(self) -> Iterator[Stage]:
        """What every stage does before any work: refuse an output (or a side file) that is one of the inputs or
        another output, try that the output can be written, and hold its lock until the stage is done; a run refused
        (or failed) inside leaves no lock file of its own behind."""
        if not self.is_main:
            yield self
            return
        check_distinct_paths(self.inputs, self.outputs())
        check_writable(self.output)
        with output_lock(self.output, self.what):
            yield self

    # -- reading ----------------------------------------------------------------------------------------------

    def load(self, source: str | Path, usable_for: str, to: str, **options: Any) -> LoadedData:
        """Instruction data (``load_instruction_data`` with ``options``), its rejects written beside the output (by
        the main process); an input with no usable row is refused naming the file and why. Logs what was read."""
        loaded = load_instruction_data(source, rejects_path=self.rejects if self.is_main else None, **options)
        require_rows(loaded, self.rejects, f"usable for {usable_for}")
        if self.is_main:
            logger.info(
                "%s: %d rows read (%s), %d to %s; %s",
                loaded.source,
                loaded.num_rows_read,
                loaded.format,
                len(loaded.rows),
                to,
                summarize_rejects(loaded.rejects),
            )
        return loaded

    def reject(self, rejects: Sequence[Reject], usable: int, source: str, nothing: str, reasons: int = 3) -> None:
        """Write the rejects file of a stage that reads its items its own way; refuse when none is ``usable``
        (``<source>: <nothing>; <the most common reasons> (see <rejects file>)``)."""
        write_rejects(rejects, self.rejects)
        if not usable:
            why = summarize_rejects(list(rejects), reasons=reasons).splitlines()[0]
            raise NoUsableRowsError(f"{source}: {nothing}; {why} (see {self.rejects})")

    @staticmethod
    def nonempty(rows: Iterable[_T], source: str | Path, offset: int = 0) -> Iterator[_T]:
        """``rows`` as they come, after refusing a source without any (``<source>: contains no rows``, as every
        loader says): the first row is read now, so the refusal comes before any work."""
        rows = iter(rows)
        first = next(rows, _NONE)
        if first is _NONE:
            raise DataLoadError(no_rows_message(str(source), offset))
        return itertools.chain((first,), rows)

    # -- writing ----------------------------------------------------------------------------------------------

    def write(self, rows: Iterable[Mapping[str, Any]]) -> Path:
        """The output, whole or not at all."""
        return write_rows(rows, self.output)

    def write_side(self, suffix: str, rows: Iterable[Mapping[str, Any]]) -> Path:
        """A row file beside the output (``raw.jsonl``, ``failures.jsonl``)."""
        return write_rows(rows, self.path(suffix))

    def write_summary(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        """``<stem>.summary.json``; returns the summary."""
        write_json(summary, self.summary)
        return dict(summary)

    def shards(self, name: str) -> ShardStore:
        """The finished shards of a resumable stage, in ``<stem>.<name>-shards/``."""
        return ShardStore(self.path(f"{name}-shards"))


_NONE: Any = object()
