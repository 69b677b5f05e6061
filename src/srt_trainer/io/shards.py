"""The finished shards of a resumable stage (scoring, evaluation answers), and the one loop that resumes them.

A stage cuts its rows into fixed shards (``shard_bounds``); ``ShardStore.resume`` checks that the folder holds
shards of the same settings and data (``manifest.json``) and says which are done; ``ShardStore.run`` computes and
writes the others one by one (each written atomically before the next starts, so a killed run loses at most the
shard it was on); ``ShardStore.collect`` puts every shard's rows back in order, reading the ones an earlier run
finished. Under ``accelerate launch`` each process runs its own share of the shards, and the main process collects
what the others gathered to it.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from srt_trainer.errors import SRTUserError
from srt_trainer.io.readers import read_rows
from srt_trainer.io.writers import write_json, write_rows

logger = logging.getLogger(__name__)


class ResumeMismatchError(SRTUserError, RuntimeError):
    """A shard folder holds the shards of a run with other settings or data."""


def shard_bounds(num_rows: int, shard_size: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each fixed-size shard of ``num_rows`` rows."""
    return [(s, min(s + shard_size, num_rows)) for s in range(0, num_rows, shard_size)]


@dataclass
class ShardPlan:
    """The shards of a run: each one's ``[start, end)`` rows, and those an earlier run finished."""

    bounds: list[tuple[int, int]]
    done: list[int]

    @property
    def todo(self) -> list[int]:
        done = set(self.done)
        return [k for k in range(len(self.bounds)) if k not in done]

    @property
    def rows_done(self) -> int:
        """The rows of the finished shards."""
        return sum(self.bounds[k][1] - self.bounds[k][0] for k in self.done)


class ShardStore:
    """The finished shards of a resumable run in ``work_dir`` (``shard-NNNNNN.jsonl``, each written by
    ``write_rows``), with ``manifest.json``: the settings and data fingerprint of the run that made them.

    Resuming needs ``work_dir`` on storage every process sees, as with Trainer checkpoints.
    """

    MANIFEST = "manifest.json"

    def __init__(self, work_dir: str | Path) -> None:
        self.work_dir = Path(work_dir)

    def clear(self) -> None:
        """Forget every shard (``--overwrite``)."""
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def check_manifest(self, manifest: Mapping[str, Any], is_main: bool = True) -> None:
        """Refuse to resume into a folder whose run had other settings or data; the main process writes the manifest
        of a new run."""
        path = self.work_dir / self.MANIFEST
        if path.exists():
            old = json.loads(path.read_text())
            if old != manifest:
                diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
                raise ResumeMismatchError(
                    f"{self.work_dir} holds shards of a run with different {', '.join(diff)}; "
                    "remove that folder to start over (srt score and srt eval generate do it with --overwrite), or "
                    "write to another output"
                )
        elif is_main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            write_json(dict(manifest), path)

    def path(self, k: int) -> Path:
        return self.work_dir / f"shard-{k:06d}.jsonl"

    def done(self, num_shards: int) -> list[int]:
        """The shards among the first ``num_shards`` that are finished."""
        return [k for k in range(num_shards) if self.path(k).exists()]

    def write(self, k: int, rows: Iterable[Mapping[str, Any]]) -> None:
        write_rows(rows, self.path(k))

    def read(self, k: int) -> list[dict[str, Any]]:
        return read_rows(self.path(k), "jsonl")

    def resume(
        self,
        manifest: Mapping[str, Any],
        num_rows: int,
        shard_size: int,
        what: str,
        is_main: bool = True,
        wait: Callable[[], None] | None = None,
    ) -> ShardPlan:
        """The plan of a run over ``num_rows`` rows: the manifest checked (the main process first, writing it for a
        new run; under a launch, ``wait`` is the barrier before the others check it) and the shards already
        ``what`` (``scored``) by an earlier run, logged."""
        if is_main:
            self.check_manifest(manifest, is_main=True)
        if wait is not None:
            wait()
        if not is_main:
            self.check_manifest(manifest, is_main=False)
        bounds = shard_bounds(num_rows, shard_size)
        plan = ShardPlan(bounds, self.done(len(bounds)))
        if is_main and plan.done:
            logger.info("resuming: %d of %d shards already %s in %s", len(plan.done), len(bounds), what, self.work_dir)
        return plan

    def run(
        self, plan: ShardPlan, shards: Iterable[int], work: Callable[[int, int, int], list[dict[str, Any]]]
    ) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """Compute each of ``shards`` (``work(k, start, end)``) and write it before the next starts; yields
        ``(k, rows)`` as each is written."""
        for k in shards:
            start, end = plan.bounds[k]
            rows = work(k, start, end)
            self.write(k, rows)
            yield k, rows

    def collect(
        self, plan: ShardPlan, new: Iterable[tuple[int, list[dict[str, Any]]]], what: str
    ) -> list[dict[str, Any]]:
        """Every shard's rows in order: the ``new`` ones and those an earlier run finished (read back)."""
        by_shard = dict(new)
        for k in plan.done:
            by_shard[k] = self.read(k)
        missing = [k for k in range(len(plan.bounds)) if k not in by_shard]
        if missing:
            raise RuntimeError(f"shards {missing} were not {what} by any rank")
        return [r for k in range(len(plan.bounds)) for r in by_shard[k]]
