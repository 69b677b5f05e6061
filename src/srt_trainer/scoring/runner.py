"""Score a whole dataset across processes, in resumable shards.

- Rows are cut into fixed shards (``shard_size`` rows). A shard's statistics depend only on its own rows, so a
  resumed run, or a run with another world size, computes every shard exactly as an uninterrupted one did.
- Under ``accelerate launch`` shards go to ranks by estimated tokens (longest-processing-time first), not by row
  count, so ranks finish together.
- Each finished shard is written atomically to ``work_dir`` before the next starts; a restarted run skips the
  shards already there (the work directory carries a fingerprint of the settings and data, and refuses to mix
  runs). Resuming needs ``work_dir`` on storage every rank sees, as with Trainer checkpoints.
- New results are gathered to the main process with accelerate's ``gather_object``; only the main process
  returns the rows, in input order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from srt_trainer.scoring.scorer import IFDScorer

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"


class ResumeMismatchError(RuntimeError):
    """The work directory holds shards of a run with other settings or data."""


def data_fingerprint(rows: Sequence[Mapping[str, Any]]) -> str:
    """Hash of what scoring reads from each row."""
    h = hashlib.sha256()
    for r in rows:
        h.update(
            json.dumps(
                [r.get("instruction"), r.get("input"), r.get("output"), r.get("system"), r.get("messages")],
                ensure_ascii=False,
            ).encode()
        )
    return h.hexdigest()


def shard_bounds(num_rows: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, num_rows)) for s in range(0, num_rows, shard_size)]


def estimate_tokens(rows: Sequence[Mapping[str, Any]], tokenizer: Any) -> list[int]:
    """Approximate tokens of a row's four views: response and instruction each appear in three of them."""
    if not rows:
        return []
    texts = [(r.get("instruction") or "") + (r.get("input") or "") for r in rows]
    outs = [r.get("output") or "" for r in rows]
    n_x = [len(t) for t in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    n_y = [len(t) for t in tokenizer(outs, add_special_tokens=False)["input_ids"]]
    # conversations: scale by turns, roughly
    turns = [max(1, int(r.get("num_turns") or 1)) for r in rows]
    return [3 * (x + y) * k + 100 for x, y, k in zip(n_x, n_y, turns, strict=True)]


def assign_shards(work: Sequence[int], world_size: int) -> list[list[int]]:
    """Shard indices per rank, balancing total work (greedy, largest first; deterministic)."""
    loads = [0] * world_size
    owned: list[list[int]] = [[] for _ in range(world_size)]
    for k in sorted(range(len(work)), key=lambda k: (-work[k], k)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        owned[rank].append(k)
        loads[rank] += work[k]
    return [sorted(ks) for ks in owned]


def _shard_path(work_dir: Path, k: int) -> Path:
    return work_dir / f"shard-{k:06d}.jsonl"


def write_shard(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write a finished shard atomically (temporary file, fsync, rename): a kill never leaves half a shard.
    Shared by every resumable stage (scoring, evaluation answers)."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_shard(path: Path) -> list[dict[str, Any]]:
    """Rows of a shard written by ``write_shard``."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def check_manifest(work_dir: Path, manifest: dict[str, Any], is_main: bool) -> None:
    """Refuse to resume into ``work_dir`` when its run had other settings or data; the main process writes the
    manifest of a new run."""
    path = work_dir / MANIFEST
    if path.exists():
        old = json.loads(path.read_text())
        if old != manifest:
            diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
            raise ResumeMismatchError(
                f"{work_dir} holds shards of a run with different {', '.join(diff)}; "
                f"remove it (or pass --overwrite) to start over"
            )
    elif is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(manifest, indent=2))


def score_dataset(
    rows: Sequence[Mapping[str, Any]],
    scorer: IFDScorer,
    work_dir: str | Path,
    shard_size: int = 256,
    settings: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]] | None:
    """Statistics of every row (see ``IFDScorer.score``) on the main process, in input order; None elsewhere.

    ``settings`` (model, dtype, template, ...) go into the work directory's fingerprint with the data.
    """
    from accelerate.utils import gather_object

    from srt_trainer.distributed import get_state

    state = get_state()
    work_dir = Path(work_dir)
    manifest = {
        "settings": dict(settings or {}),
        "shard_size": shard_size,
        "num_rows": len(rows),
        "data": data_fingerprint(rows),
    }
    if state.is_main_process:
        check_manifest(work_dir, manifest, True)
    state.wait_for_everyone()
    if not state.is_main_process:
        check_manifest(work_dir, manifest, False)

    bounds = shard_bounds(len(rows), shard_size)
    done = {k for k in range(len(bounds)) if _shard_path(work_dir, k).exists()}
    todo = [k for k in range(len(bounds)) if k not in done]
    work = estimate_tokens(rows, scorer.tokenizer) if todo else []
    shard_work = [sum(work[s:e]) for s, e in bounds] if todo else []
    mine = assign_shards([shard_work[k] for k in todo], state.num_processes)[state.process_index]
    mine = [todo[i] for i in mine]
    if state.is_main_process and done:
        logger.info("resuming: %d of %d shards already scored in %s", len(done), len(bounds), work_dir)
    if state.num_processes > 1:
        logger.info(
            "rank %d of %d: %d shards, ~%d tokens",
            state.process_index,
            state.num_processes,
            len(mine),
            sum(shard_work[k] for k in mine),
        )

    bar = tqdm(
        total=sum(shard_work[k] for k in mine),
        unit="tok",
        unit_scale=True,
        disable=not progress,
        desc=f"Scoring (rank {state.process_index})" if state.num_processes > 1 else "Scoring",
    )
    new: list[tuple[int, list[dict[str, Any]]]] = []
    for k in mine:
        start, end = bounds[k]
        shard_end = bar.n + shard_work[k]  # the bar follows real tokens but never runs past the shard's estimate

        def advance(n: int, stop: int = shard_end) -> None:
            bar.update(max(0, min(n, stop - bar.n)))

        stats = scorer.score(rows[start:end], progress=advance)
        bar.update(shard_end - bar.n)
        write_shard(_shard_path(work_dir, k), stats)
        new.append((k, stats))
    bar.close()

    gathered = gather_object(new) if state.num_processes > 1 else new
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    by_shard = dict(gathered)
    for k in done:
        by_shard[k] = read_shard(_shard_path(work_dir, k))
    missing = [k for k in range(len(bounds)) if k not in by_shard]
    if missing:
        raise RuntimeError(f"shards {missing} were not scored by any rank")
    out = [r for k in range(len(bounds)) for r in by_shard[k]]
    assert len(out) == len(rows)
    return out
