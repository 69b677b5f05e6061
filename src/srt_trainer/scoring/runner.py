"""Score a file (``run_score``, behind ``srt score``) or a list of rows (``score_dataset``) across processes, in
resumable shards.

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
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from srt_trainer.distributed import get_state, zero3_init
from srt_trainer.errors import SRTUserError
from srt_trainer.io import ShardStore
from srt_trainer.models.config import LoadingArguments, SRTModelConfig
from srt_trainer.models.embedded import public_model_name
from srt_trainer.scoring.config import ScoreArguments, ScoringArguments, fingerprint_settings
from srt_trainer.scoring.loss import ERROR_COLUMNS, STAT_COLUMNS
from srt_trainer.scoring.scorer import IFDScorer
from srt_trainer.stage import REJECTS, SUMMARY, Stage

logger = logging.getLogger(__name__)

HISTOGRAM = "hist.png"  # the IFD / r-IFD histograms, beside the output


class NoStatisticsError(SRTUserError, ValueError):
    """No row of the output has statistics (every response empty, for one): nothing for selection to use."""


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


def estimate_tokens(rows: Sequence[Mapping[str, Any]], tokenizer: Any, sample: int = 512) -> list[int]:
    """Approximate tokens of a row's four views: response and instruction each appear in three of them. A row's
    tokens are its characters times the tokens per character of an evenly spaced sample of ``sample`` rows:
    tokenizing every row here would cost a third of what scoring itself spends tokenizing."""
    if not rows:
        return []
    texts = [(r.get("instruction") or "") + (r.get("input") or "") for r in rows]
    outs = [r.get("output") or "" for r in rows]
    step = max(1, len(rows) // sample)
    ratios = []
    for column in (texts, outs):
        picked = column[::step]
        chars = sum(map(len, picked))
        tokens = sum(map(len, tokenizer(picked, add_special_tokens=False)["input_ids"]))
        ratios.append(tokens / chars if chars else 0.0)
    # conversations: scale by turns, roughly
    turns = [max(1, int(r.get("num_turns") or 1)) for r in rows]
    return [
        3 * round(len(x) * ratios[0] + len(y) * ratios[1]) * k + 100 for x, y, k in zip(texts, outs, turns, strict=True)
    ]


def assign_shards(work: Sequence[int], world_size: int) -> list[list[int]]:
    """Shard indices per rank, balancing total work (greedy, largest first; deterministic)."""
    loads = [0] * world_size
    owned: list[list[int]] = [[] for _ in range(world_size)]
    for k in sorted(range(len(work)), key=lambda k: (-work[k], k)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        owned[rank].append(k)
        loads[rank] += work[k]
    return [sorted(ks) for ks in owned]


def score_dataset(
    rows: Sequence[Mapping[str, Any]],
    scorer: IFDScorer,
    work_dir: str | Path,
    shard_size: int = 256,
    settings: Mapping[str, Any] | None = None,
    progress: bool = True,
    timings: dict[str, float] | None = None,
) -> list[dict[str, Any]] | None:
    """Statistics of every row (see ``IFDScorer.score``) on the main process, in input order; None elsewhere.

    ``settings`` (model, dtype, template, ...) go into the work directory's fingerprint with the data.
    ``timings``, when given, gets ``student`` added: the seconds this process spent in ``IFDScorer.score``
    (tokenizing, planning and the forwards), the rest being the stage's own work.
    """
    from accelerate.utils import gather_object

    state = get_state()
    store = ShardStore(work_dir)
    manifest = {
        "settings": dict(settings or {}),
        "shard_size": shard_size,
        "num_rows": len(rows),
        "data": data_fingerprint(rows),
    }
    plan = store.resume(
        manifest, len(rows), shard_size, "scored", is_main=state.is_main_process, wait=state.wait_for_everyone
    )
    todo = plan.todo
    work = estimate_tokens(rows, scorer.tokenizer) if todo else []
    shard_work = [sum(work[s:e]) for s, e in plan.bounds] if todo else []
    mine = assign_shards([shard_work[k] for k in todo], state.num_processes)[state.process_index]
    mine = [todo[i] for i in mine]
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

    def score_shard(k: int, start: int, end: int) -> list[dict[str, Any]]:
        shard_end = bar.n + shard_work[k]  # the bar follows real tokens but never runs past the shard's estimate

        def advance(n: int) -> None:
            bar.update(max(0, min(n, shard_end - bar.n)))

        started = time.perf_counter()
        stats = scorer.score(rows[start:end], progress=advance)
        if timings is not None:
            timings["student"] = timings.get("student", 0.0) + time.perf_counter() - started
        bar.update(shard_end - bar.n)
        return stats

    new = list(store.run(plan, mine, score_shard))
    bar.close()
    scorer.finish()  # under ZeRO-3, join the forwards of the processes still scoring

    gathered = gather_object(new) if state.num_processes > 1 else new
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    out = store.collect(plan, gathered, "scored")
    assert len(out) == len(rows)
    return out


def output_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The input's own columns: Alpaca fields, conversations when the data has them, and every extra column of any
    row (in order of first appearance: optional fields may start after row 0)."""
    internal = {"messages", "system", "num_turns", "source_format"}
    chat = any(r["source_format"] != "alpaca" for r in rows)
    extras = [
        k
        for k in dict.fromkeys(k for r in rows for k in r)
        if k not in internal and k not in ("row_index", "instruction", "input", "output")
    ]
    return ["row_index", "instruction", "input", "output", *(["system", "messages"] if chat else []), *extras]


# columns the score output writes; a source column of one of these names is kept as orig_<name>
WRITTEN_COLUMNS = (*STAT_COLUMNS, *ERROR_COLUMNS, "num_turns", "ifd_turns", "rifd_turns")


@dataclass
class ScoreRun:
    """What ``run_score`` wrote: the output rows (in input order), the summary saved beside them and the files."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    output: Path
    histogram: Path | None = None


def run_score(
    args: ScoreArguments,
    scoring: ScoringArguments,
    model_args: SRTModelConfig,
    loading: LoadingArguments | None = None,
    model: Any = None,
    tokenizer: Any = None,
) -> ScoreRun | None:
    """Score ``args.data`` and write ``args.output`` with its summary, histogram and rejects; returns what was
    written on the main process (None on the others).

    ``model`` / ``tokenizer``: a student already loaded by the caller (the main job scores and then trains the same
    one); by default they are loaded as ``model_args`` and ``loading`` say. Before any work, an output that is the
    input (or a file beside the output that is) is refused, and the output's lock is held until the end (a second
    run on the same output stops with a message).
    """
    stage = Stage(
        args.output,
        "score output",
        inputs={"--data": args.data},
        side=(REJECTS, SUMMARY, HISTOGRAM),
        is_main=get_state().is_main_process,
    )
    with stage.guard():
        return _run_score(args, scoring, model_args, loading or LoadingArguments(), stage, model, tokenizer)


def _run_score(
    args: ScoreArguments,
    scoring: ScoringArguments,
    model_args: SRTModelConfig,
    loading: LoadingArguments,
    stage: Stage,
    model: Any,
    tokenizer: Any,
) -> ScoreRun | None:
    import torch

    from srt_trainer.data import keep_source_columns
    from srt_trainer.models.loading import load_configured_student, load_tokenizer
    from srt_trainer.scoring.report import plot_histograms, summarize

    state = get_state()
    store = stage.shards("score")
    if args.overwrite and state.is_main_process:
        store.clear()
    state.wait_for_everyone()

    clock = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = seconds.get(name, 0.0) + now - clock
        clock = now

    loaded = stage.load(
        args.data, usable_for="scoring", to="score", format=args.data_format, limit=args.limit, offset=args.offset
    )
    rows = loaded.rows
    renamed = keep_source_columns(rows, WRITTEN_COLUMNS, what=f"{loaded.source} (srt score writes them)")

    lap("load")
    device = loading.device or (str(state.device) if state.num_processes > 1 else None)
    if state.num_processes > 1 and (device or "cpu").startswith("cpu") and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // state.num_processes))
    if tokenizer is None:
        tokenizer = load_tokenizer(
            model_args.model_name_or_path, trust_remote_code=loading.trust_remote_code, revision=model_args.revision()
        )
    if model is None:
        with zero3_init(model_args.dtype):
            model = load_configured_student(model_args, device=device, trust_remote_code=loading.trust_remote_code)
    scorer = IFDScorer(model, tokenizer, model_args.template, **scoring.scorer_options())
    lap("load_student")
    try:
        stats = score_dataset(
            rows,
            scorer,
            store.work_dir,
            shard_size=scoring.shard_size,
            settings=fingerprint_settings(scoring, model_args),
            progress=state.is_local_main_process,
            timings=seconds,
        )
    finally:
        scorer.close()
    lap("score")  # the student's own share (``student``) counted within
    if stats is None:
        return None

    multi_turn = any(s["num_turns"] > 1 for s in stats)
    columns = output_columns(rows)
    stat_columns = (*STAT_COLUMNS, *ERROR_COLUMNS, *(["num_turns", "ifd_turns", "rifd_turns"] if multi_turn else []))
    out_rows = []
    for k, r in enumerate(rows):
        s, stats[k] = stats[k], None  # each row's statistics freed as its output row takes them
        out_rows.append({**{c: r[c] for c in columns if c in r}, **{c: s.get(c) for c in stat_columns}})
    del stats
    source, rejected = loaded.source, len(loaded.rejects)
    loaded.rows = rows = []  # the normalized rows (conversations and all) are not needed any more
    output = stage.write(out_rows)
    lap("write")
    summary = summarize(out_rows)
    summary.update(
        data=source,
        rejected_rows=rejected,
        renamed_columns={**loaded.renamed, **renamed},
        output=str(output),
        config={"score": asdict(args), "scoring": asdict(scoring), "student": asdict(model_args)},
        scorer={"fast_path": scorer.fast_path, "engine": scorer.engine, "token_budget": scorer.token_budget},
    )
    histogram = None
    if args.plot and summary["scored"]:
        student = public_model_name(model_args.model_name_or_path)
        histogram = plot_histograms(
            out_rows,
            stage.path(HISTOGRAM),
            title=f"{Path(source).name}: {student} ({model_args.template}, {model_args.dtype})",
        )
    lap("report")
    summary["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    stage.write_summary(summary)
    if not summary["scored"]:
        raise NoStatisticsError(
            f"{output}: none of its {len(out_rows)} rows could be scored ({summary['errors']}); "
            f"each row's reason is in its score_error column"
        )
    return ScoreRun(rows=out_rows, summary=summary, output=output, histogram=histogram)
