"""The data a run trains on: the one step before ``train`` that scores and selects (Section 3 of the paper).

``prepare_training_data`` returns the file to train on: ``--dataset`` as given; else the selection of the four
``srt score`` outputs (``--*_scores``), or of the four variant files (``--*_data``) after the student scored them.
Under ``accelerate launch`` every process runs it: scoring shares the rows between the processes (collective, and
resumable in shards), the main process selects, and every process goes on once the selection exists.
"""

from __future__ import annotations

import logging
from pathlib import Path

from srt_trainer.data import load_instruction_data
from srt_trainer.data.loading import rejects_reasons
from srt_trainer.distributed import get_state
from srt_trainer.resources import resolve_data
from srt_trainer.scoring import ScoreArguments, ScoringArguments, run_score
from srt_trainer.scoring.report import format_summary
from srt_trainer.selection import SelectArguments, SelectionArguments, SelectionCounts, format_counts, run_select
from srt_trainer.training.callbacks import REPORT_DIR
from srt_trainer.training.config import VARIANT_FIELDS, SRTScriptArguments
from srt_trainer.training.data import TrainingDataError
from srt_trainer.training.student import Student

logger = logging.getLogger(__name__)

SELECTED = "selected.jsonl"  # the selection's output in ``output_dir/selection``
SCORES_DIR = "scores"


def prepare_training_data(
    script_args: SRTScriptArguments,
    scoring: ScoringArguments,
    selection: SelectionArguments,
    student: Student,
    output_dir: str | Path,
    seed: int = 42,
) -> Path:
    """The file to train on, after scoring and selecting where ``script_args`` ask for it (``seed`` orders the
    selection's random policies: the training seed).

    - ``--dataset``: that file (or the carried set it names), as given;
    - ``--*_scores``: their selection by ``selection``, in ``output_dir/selection/selected.jsonl`` with its report;
    - ``--*_data``: every file checked first (see ``check_variant_files``), then scored by ``student`` into
      ``output_dir/scores`` (across all processes; a rerun reuses the finished shards) and selected as above.

    A selection that keeps nothing raises ``TrainingDataError`` saying which steps removed the rows. Run it on every
    process of a launch: scoring is collective, and each process returns once the file exists.
    """
    out = Path(output_dir)
    mode = script_args.mode(selection.needed_views())
    if mode == "dataset":
        return Path(resolve_data(script_args.dataset))
    if mode == "scores":
        score_files = script_args.variant_files("scores")
    else:
        data_files = {v: resolve_data(f) for v, f in script_args.variant_files("data").items() if f}
        check_variant_files(data_files, script_args.data_format)
        score_files = score_variants(
            data_files, scoring, student, out / SCORES_DIR, script_args.data_format, plot=script_args.plot
        )
    return select_variants(score_files, selection, out / REPORT_DIR / SELECTED, plot=script_args.plot, seed=seed)


def check_variant_files(files: dict[str, str], data_format: str = "auto") -> None:
    """Refuse variant files that scoring would fail on, or that the selection would refuse after hours of scoring:
    each one must exist, be readable, parse, and hold as many usable rows as ori (Q, A and QA are rewrites of ori's
    rows, one each, in ori's order). Every process checks, so every process stops with the same message."""
    counts: dict[str, int] = {}
    for variant, path in files.items():
        loaded = load_instruction_data(path, format=data_format)
        counts[variant] = len(loaded.rows)
        ori = files.get("ori")
        if variant == "ori" or ori is None or counts[variant] == counts["ori"]:
            continue
        rejected = (
            f" ({len(loaded.rejects)} of its {loaded.num_rows_read} rows rejected: {rejects_reasons(loaded)})"
            if loaded.rejects
            else ""
        )
        raise TrainingDataError(
            f"{path} (--{VARIANT_FIELDS[variant]}_data): {counts[variant]} usable rows{rejected}, but {ori} "
            f"(--ori_data) has {counts['ori']}; {variant} must hold one rewrite of each of ori's rows, in ori's order"
        )


def score_variants(
    files: dict[str, str],
    scoring: ScoringArguments,
    student: Student,
    folder: Path,
    data_format: str = "auto",
    plot: bool = True,
) -> dict[str, str]:
    """Score each variant file with the student across all processes (resumable); returns the score files."""
    state = get_state()
    model, tokenizer = student.model, student.tokenizer
    out: dict[str, str] = {}
    for variant, data in files.items():
        output = folder / f"{variant.lower()}.scores.jsonl"
        args = ScoreArguments(data=data, output=str(output), data_format=data_format, plot=plot)
        if state.is_main_process:
            logger.info("scoring the %s pairs of %s with the student", variant, data)
        was_training = model.training
        model.eval()
        scored = run_score(args, scoring, student.args, model=model, tokenizer=tokenizer)
        model.train(was_training)
        if scored is not None:  # the main process
            logger.info("%s\nwrote %s (%d rows)", format_summary(scored.summary), output, len(scored.rows))
        state.wait_for_everyone()  # the main process writes the output after the others are done
        out[variant] = str(output)
    return out


def select_variants(
    score_files: dict[str, str | None],
    selection: SelectionArguments,
    output: Path,
    plot: bool = True,
    seed: int = 42,
) -> Path:
    """Run the selection on the main process and let every process continue once its output exists; ``seed``
    orders the 'random' policy."""
    state = get_state()
    if state.is_main_process:
        args = SelectArguments(
            ori=score_files["ori"],
            q=score_files.get("Q"),
            a=score_files.get("A"),
            qa=score_files.get("QA"),
            output=str(output),
            plot=plot,
            seed=seed,
        )
        result = run_select(args, selection)
        logger.info(
            "selection (%s policy) of %d source rows:\n%s\nwrote %s (%d rows)",
            selection.policy,
            result.counts["rows"],
            format_counts(result.counts),
            output,
            len(result.rows),
        )
        if not result.rows:
            raise TrainingDataError(nothing_selected(result.counts, output))
    state.wait_for_everyone()
    return output


def nothing_selected(counts: SelectionCounts, output: Path) -> str:
    """Why a selection left nothing to train on: the steps that removed rows, largest first."""
    reasons = ", ".join(f"{k} {n}" for k, n in list(counts.removals().items())[:4])
    hint = (
        "; a missing statistic fails its threshold: the score files' ifd_error / rifd_error say why it is missing "
        "(for example a score_max_length too short for the reverse prompt)"
        if counts.missing_statistic_cuts()
        else ""
    )
    return (
        f"the selection kept none of the {counts.get('rows', 0)} source rows ({reasons or 'no row was judged'}){hint}; "
        f"the counts and funnel are beside {output}"
    )
