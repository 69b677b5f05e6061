"""``srt eval generate | judge | aggregate``.

srt eval generate --test_sets tests/data/eval --output answers.jsonl [--model PATH] [--adapter DIR]
srt eval judge --answers_a a.jsonl --answers_b b.jsonl --output reviews.jsonl --base_url URL --judge_model NAME
srt eval aggregate --reviews reviews.jsonl [--json] [--output_dir DIR]
srt eval alpacaeval --model_outputs m.alpaca_eval.json --reference_outputs r.alpaca_eval.json --output ae.jsonl
    --base_url URL --judge_model NAME
srt eval harness --model PATH [--adapter DIR] --tasks leaderboard_v1 --output harness.jsonl
srt eval report --pairwise r.aggregate.json --alpacaeval ae.jsonl --harness harness.jsonl --output report.md
srt eval mtbench --questions question.jsonl --judge_prompts judge_prompts.jsonl --reference_answers gpt-4.jsonl
    --output_dir DIR [--model PATH] [--adapter DIR] [--answers_b FILE] --teacher openai --teacher_model NAME
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from srt_trainer.errors import EXIT_OK, EXIT_USER_ERROR, invalid_choice, run_cli

COMMANDS = {
    "generate": "answers of a model (base, base + adapter, or merged) to test sets",
    "judge": "two answer files judged pairwise, in both orders, by an OpenAI-compatible judge",
    "aggregate": "win / tie / lose per test set, the winning score, a chart and a markdown summary",
    "alpacaeval": "AlpacaEval's own package judges a model's outputs against reference outputs (win rate)",
    "harness": "lm-evaluation-harness tasks (leaderboard_v1: the Open LLM Leaderboard of the paper's tables)",
    "report": "every evaluation of every model in one markdown table and one JSON, with how each was obtained",
    "mtbench": "MT-Bench: both turns answered, graded by an OpenAI-compatible judge in FastChat's formats",
}


def generate(argv: Sequence[str], prog: str) -> None:
    from srt_trainer.data import summarize_rejects
    from srt_trainer.evaluation.config import GenerateArguments
    from srt_trainer.evaluation.generate import run_generate
    from srt_trainer.models.config import LoadingArguments, SRTModelConfig
    from srt_trainer.options import StageParser

    parser = StageParser((GenerateArguments, SRTModelConfig, LoadingArguments), prog)
    config, model_args, loading = parser.parse_args_and_config(argv)
    run = run_generate(config, model_args, loading)
    for s in run.sets:
        print(f"{s.source}: {s.num_rows_read} rows, {len(s.items)} items ({s.name})")
    if run.rejects:
        print(summarize_rejects(run.rejects))
    if run.first_prompt is not None:
        print(f"template {model_args.template}; first prompt:\n{run.first_prompt}\n")
    summary = run.summary
    print(
        f"wrote {run.output} ({len(run.rows)} answers by {summary['generator']}; {summary['empty_outputs']} empty) "
        f"in {summary['seconds']:.1f} s"
    )


def judge(argv: Sequence[str], prog: str) -> None:
    from srt_trainer.evaluation.aggregate import format_table, summary_line
    from srt_trainer.evaluation.config import JudgeArguments
    from srt_trainer.evaluation.judge import NoReadableScoresError, run_judge
    from srt_trainer.options import StageParser
    from srt_trainer.teachers.config import TeacherArguments

    config, judge_args = StageParser((JudgeArguments, TeacherArguments), prog).parse_args_and_config(argv)
    try:
        run = run_judge(config, judge_args)
    except NoReadableScoresError as e:
        print(f"judge: {e.run.counts.format()}")  # what the failed run cost; the error line says the rest
        raise
    failed = sum(r["status"] == "failed" for r in run.records)
    drawn = sum(r["status"] == "drawn" for r in run.records)
    drawn_note = f", {drawn} counted with a draw (--unscored tie)" if config.unscored == "tie" else ""
    print(f"judge: {run.counts.format()}")
    print(
        f"{summary_line(run.aggregate.overall)} ({failed} failed{drawn_note}, reported in {run.failures})\n"
        f"{format_table(run.aggregate)}"
    )
    print(f"wrote {run.output} ({len(run.records)} items); " + ", ".join(run.reports.values()))


def aggregate(argv: Sequence[str], prog: str) -> None:
    """One line (or JSON object) per reviews file on stdout, the details on stderr."""
    from srt_trainer.evaluation.aggregate import aggregate_file, check_report_paths, format_table, summary_line
    from srt_trainer.evaluation.config import AggregateArguments
    from srt_trainer.options import StageParser

    (config,) = StageParser(AggregateArguments, prog).parse_args_and_config(argv)
    check_report_paths(config.reviews, config.output_dir)
    for name in config.reviews:
        run = aggregate_file(name, config.output_dir, plot=config.plot, unscored=config.unscored)
        agg = run.aggregate
        if config.json:
            result = {"file": str(run.file), **agg.to_dict(), **run.reports}
            print(json.dumps({k: v for k, v in result.items() if k != "failures"} | {"failures": len(agg.failures)}))
        else:
            print(summary_line(agg.overall))
        drawn = f", {agg.overall.unscored_draws} with a draw (--unscored tie)" if config.unscored == "tie" else ""
        print(
            f"{run.file}: {len(agg.failures)} failed (never counted as ties){drawn}\n{format_table(agg)}\n"
            f"reports: {', '.join(run.reports.values())}",
            file=sys.stderr,
        )


def alpacaeval(argv: Sequence[str], prog: str) -> None:
    from srt_trainer.data import summarize_rejects
    from srt_trainer.evaluation.alpaca import run_alpaca_eval
    from srt_trainer.evaluation.config import AlpacaEvalArguments
    from srt_trainer.options import StageParser

    (config,) = StageParser(AlpacaEvalArguments, prog).parse_args_and_config(argv)
    run = run_alpaca_eval(config)
    s = run.summary
    if run.rejects:
        print(summarize_rejects(run.rejects))
    lc = s["length_controlled_winrate"]
    print(
        f"{s['generator']} vs {s['reference']}: win rate {s['win_rate']:.2f}% (± {s['standard_error']:.2f})"
        + (f", length-controlled {lc:.2f}%" if lc is not None else "")
        + f" over {s['judged']} items ({s['failed']} without a readable judgment, {s['chunks_judged_now']} chunks "
        f"judged now; alpaca_eval {s['alpaca_eval_version']})"
    )
    print(f"wrote {run.output}; " + ", ".join(run.files.values()))


def harness(argv: Sequence[str], prog: str) -> None:
    from srt_trainer.evaluation.config import HarnessArguments
    from srt_trainer.evaluation.harness import run_harness
    from srt_trainer.options import StageParser

    (config,) = StageParser(HarnessArguments, prog).parse_args_and_config(argv)
    run = run_harness(config)
    for r in run.rows:
        value = "n/a" if r["value"] is None else f"{r['value']:.4f}"
        stderr = "" if r["stderr"] is None else f" ± {r['stderr']:.4f}"
        print(f"{r['task']:<24} {r['num_fewshot']!s:>4}-shot  {r['metric']:<26} {value}{stderr}")
    average = run.summary["average"]
    if average is not None and len(run.rows) > 1:
        print(f"{'average':<24} {'':>10}  {'':<26} {average:.4f}")
    print(f"wrote {run.output} ({run.summary['tasks_run_now']} tasks run now); " + ", ".join(run.files.values()))


def report(argv: Sequence[str], prog: str) -> None:
    from srt_trainer.evaluation.config import ReportArguments
    from srt_trainer.evaluation.report import run_report
    from srt_trainer.options import StageParser

    (config,) = StageParser(ReportArguments, prog).parse_args_and_config(argv)
    run = run_report(config)
    missing = [s.path for s in run.report.sources if s.manifest is None]
    print(run.markdown.read_text().split("\n## ")[0].rstrip())
    if missing:
        print(f"no manifest beside {', '.join(missing)}: how those numbers were obtained is unknown")
    print(f"wrote {run.markdown}, {run.json}")


def mtbench(argv: Sequence[str], prog: str) -> None:
    from srt_trainer.data import summarize_rejects
    from srt_trainer.evaluation.config import MTBenchArguments
    from srt_trainer.evaluation.mtbench import MTBenchNoScoresError, run_mtbench
    from srt_trainer.models.config import LoadingArguments, SRTModelConfig
    from srt_trainer.options import StageParser
    from srt_trainer.teachers.config import TeacherArguments

    parser = StageParser((MTBenchArguments, SRTModelConfig, LoadingArguments, TeacherArguments), prog)
    config, model_args, loading, judge_args = parser.parse_args_and_config(argv)
    try:
        run = run_mtbench(config, model_args, loading, judge_args)
    except MTBenchNoScoresError as e:
        for kind, counts in e.run.counts.items():
            print(f"judge ({kind}): {counts.format()}")
        raise
    summary = run.summary
    if run.rejects:
        print(summarize_rejects(run.rejects))
    generation = summary["generation"]
    done = f" ({generation['generated_now']} answered now in {generation['seconds']:.1f} s)" if generation else ""
    print(f"answers: {summary['files']['answers']}: {summary['questions']} questions{done}")
    for kind, counts in run.counts.items():
        print(f"judge ({kind}): {counts.format()}")
    single = summary["single"]
    if single:
        overall = "-" if single["overall"] is None else f"{single['overall']:.2f}"
        print(
            f"MT-Bench {summary['model_id']} by {summary['judge']}: {overall} "
            f"({single['scored']} of {single['judgments']} judgments scored)"
        )
    if config.grade:
        print(run.report())
        print(f"{summary['failures']} failures (never scored), in {summary['files']['failures']}")
    written = {k: v for k, v in summary["files"].items() if not (k == "answers" and config.answers)}
    print("wrote " + ", ".join(str(p) for p in (run.stage.summary, *written.values())))


HANDLERS = {
    "generate": generate,
    "judge": judge,
    "aggregate": aggregate,
    "alpacaeval": alpacaeval,
    "harness": harness,
    "report": report,
    "mtbench": mtbench,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        # one line, as argparse does for `srt scor`; an option first means the command is missing
        word = argv[0]
        if word.startswith("-"):
            message = f"missing command before {word}; choose from {', '.join(COMMANDS)}"
        else:
            message = invalid_choice("command", word, COMMANDS)
        print(f"srt eval: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    if not argv or argv[0] not in COMMANDS:
        asked_for_help = bool(argv) and argv[0] in ("-h", "--help")
        lines = [f"  {name:<10} {text}" for name, text in COMMANDS.items()]
        print(
            f"usage: srt eval {{{','.join(COMMANDS)}}} [options]\n\ncommands:\n"
            + "\n".join(lines)
            + "\n\nRun `srt eval COMMAND --help` for a command's options.",
            file=sys.stdout if asked_for_help else sys.stderr,
        )
        return EXIT_OK if asked_for_help else EXIT_USER_ERROR
    command, rest = argv[0], argv[1:]
    prog = f"srt eval {command}"
    return run_cli(prog, lambda: HANDLERS[command](rest, prog))
