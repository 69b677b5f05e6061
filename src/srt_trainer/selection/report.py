"""What a selection did, beside the selected data: counts, a funnel plot, IFD / r-IFD histograms, a data card."""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from srt_trainer.io import check_output_path, sidecar_path, write_rows, write_text_atomic
from srt_trainer.plotting import pyplot, save_figure
from srt_trainer.selection.config import VARIANTS, SelectArguments, SelectionArguments, SelectionInputError
from srt_trainer.selection.counts import ACCEPTING, SelectionCounts
from srt_trainer.selection.policy import SelectionResult
from srt_trainer.selection.views import Views, ViewSummary

# the scored views of a result built by hand: ``Views``, or a mapping by view name (any case)
Scored = Views[Sequence[Mapping[str, Any]]] | Mapping[str, Sequence[Mapping[str, Any]] | None] | None
BRANCH_TEXT = {
    1: "new instruction and new response accepted → QA",
    2: "new instruction accepted, new response not → Q",
    3: "new instruction not accepted, new response accepted → A",
    4: "neither accepted → ori",
}
COLORS = {"QA": "#4c72b0", "A": "#55a868", "Q": "#8172b2", "ori": "#ccb974", "none": "#c0c0c0"}
BRANCH_VIEW = {1: "QA", 2: "Q", 3: "A", 4: "ori"}


def format_counts(counts: Mapping[str, int]) -> str:
    """The counts as printed by ``srt select``: one line per step, indented under its parent."""
    lines = []
    for key, n in counts.items():
        nested = "/" in key and key.rsplit("/", 1)[0] in counts
        label = key.rsplit("/", 1)[-1] if nested else key
        lines.append(f"  {'    ' * nested}{label:<{44 - 4 * nested}}{n:>8}")
    return "\n".join(lines)


def funnel_stages(
    counts: Mapping[str, int], config: SelectionArguments
) -> list[tuple[str, list[tuple[str, int, str]]]]:
    """The funnel, top to bottom: (stage label, [(segment label, count, color)])."""
    stages = [("input rows", [("rows", counts["rows"], COLORS["none"])])]
    stages.append(("judged", [("judged", counts["judged"], "#64b5cd")]))
    if config.policy == "paper":
        stages.append(
            ("branch", [(f"branch {b}", counts[f"branch_{b}"], COLORS[BRANCH_VIEW[b]]) for b in (1, 2, 3, 4)])
        )
        passed = [
            (BRANCH_VIEW[b], counts[f"branch_{b}/passed"], COLORS[BRANCH_VIEW[b]])
            for b in (1, 2, 3, 4)
            if f"branch_{b}/passed" in counts
        ]
    elif config.policy in ("ifd", "ifd_top"):
        passed = [("ori", counts[f"{config.policy}/passed"], COLORS["ori"])]
    else:  # one pair per source row (the ablation), or every original pair (a baseline, before its size)
        if config.policy in ACCEPTING:
            rewrite = ACCEPTING[config.policy]
            parts = [("accepted", counts["accepted"], COLORS[rewrite]), ("not", counts["not_accepted"], COLORS["ori"])]
            stages.append((f"{rewrite} accepted", parts))
        passed = [("candidates", counts["passed_thresholds"], COLORS["none"])]
    stages.append(("passed thresholds" if config.policy in ("paper", "ifd") else "candidates", passed))
    kept = [(v, counts[f"kept/{v}"], COLORS[v]) for v in BRANCH_VIEW.values() if f"kept/{v}" in counts]
    stages.append(("kept (after budget)" if config.order() == "IFD" else "kept (after size)", kept))
    return stages


def plot_funnel(counts: Mapping[str, int], config: SelectionArguments, path: str | Path, title: str = "") -> Path:
    """Centered horizontal bars, one per step, split by branch / variant where the step has parts."""
    plt = pyplot()

    stages = funnel_stages(counts, config)
    total = max(1, counts["rows"])
    fig, ax = plt.subplots(figsize=(9, 0.8 + 0.75 * len(stages)))
    for y, (_, parts) in enumerate(stages):
        width = sum(n for _, n, _ in parts)
        left = (total - width) / 2
        for name, n, color in parts:
            if n:
                ax.barh(y, n, left=left, color=color, edgecolor="white", height=0.7)
                if len(parts) > 1 and n / total > 0.06:
                    ax.text(left + n / 2, y, f"{name}\n{n}", ha="center", va="center", fontsize=7)
            left += n
        ax.text(total * 1.02, y, f"{width}", va="center", fontsize=9)
    ax.set_yticks(range(len(stages)), [s[0] for s in stages])
    ax.invert_yaxis()
    ax.set_xlim(0, total * 1.12)
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_title(title or f"Selection funnel ({config.policy} policy)", fontsize=10)
    return save_figure(fig, path)


def _present(value: Any) -> bool:
    """A statistic that is there: a number, not null and not NaN (the release's missing value)."""
    return value is not None and not math.isnan(value)


def view_statistics(
    result: SelectionResult, scored: Mapping[str, Sequence[Mapping[str, Any]]] | None = None
) -> dict[tuple[str, str], np.ndarray]:
    """IFD and r-IFD of every row of each view, NaN where missing: from the result's decisions, or from ``scored``
    (the views by name) for a result built by hand."""
    if result.table is not None:
        return {(v, k): result.table.values(v, k) for v in result.table.views for k in ("ifd", "rifd")}
    scored = scored or {}
    return {
        (v, k): np.array([r.get(k) if _present(r.get(k)) else math.nan for r in scored[v]], dtype=float)
        for v in VARIANTS
        if scored.get(v)
        for k in ("ifd", "rifd")
    }


def plot_histograms(
    result: SelectionResult,
    config: SelectionArguments,
    path: str | Path,
    scored: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> Path | None:
    """IFD (top) and r-IFD (bottom) of each view, one column per view, with the rows kept from it overlaid."""
    stats = view_statistics(result, scored)
    views = [v for v in VARIANTS if (v, "ifd") in stats and len(stats[(v, "ifd")])]
    values = {key: column[~np.isnan(column)] for key, column in stats.items()}
    if not any(len(values[(v, k)]) for v in views for k in ("ifd", "rifd")):
        return None
    plt = pyplot()

    kept_index = {v: np.array(result.kept_positions(v), dtype=np.int64) for v in views}
    fig, axes = plt.subplots(2, len(views), figsize=(3.2 * len(views), 5.4), squeeze=False)
    for row, (key, label, threshold) in enumerate(
        (("ifd", "IFD", config.ifd_threshold), ("rifd", "r-IFD", config.rifd_threshold))
    ):
        pooled = np.concatenate([values[(v, key)] for v in views])
        lo, hi = np.quantile(pooled, [0.0, 0.99]) if len(pooled) else (0.0, 2.0)
        bins = np.linspace(min(lo, threshold * 0.95), max(hi, threshold * 1.05), 30)
        for col, v in enumerate(views):
            ax = axes[row][col]
            ax.hist(np.clip(values[(v, key)], bins[0], bins[-1]), bins=bins, color=COLORS["none"], label="scored")
            kept = stats[(v, key)][kept_index[v]]
            kept = kept[~np.isnan(kept)]
            if len(kept):
                ax.hist(np.clip(kept, bins[0], bins[-1]), bins=bins, color=COLORS[v], label="kept")
            ax.axvline(threshold, color="#c44e52", linestyle="--", linewidth=1)
            ax.set_title(f"{v}: {label} (n={len(values[(v, key)])})", fontsize=9)
            if col == 0:
                ax.set_ylabel("samples")
            ax.legend(frameon=False, fontsize=7)
    fig.suptitle(
        f"Student statistics of the views; kept rows in colour; dashed: threshold ({config.policy} policy)", fontsize=10
    )
    return save_figure(fig, path)


def _score_summary(file: str | None) -> dict[str, Any]:
    """The ``srt score`` summary written beside a score output, when there is one (it names the student)."""
    if not file:
        return {}
    path = sidecar_path(file, "summary.json")
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _view_summaries(
    result: SelectionResult, scored: Mapping[str, Sequence[Mapping[str, Any]]] | None
) -> dict[str, ViewSummary]:
    """What each view held, as the selection counted it while reading; from ``scored`` for a result built by
    hand."""
    if result.views:
        return dict(result.views)
    out = {}
    for view in VARIANTS:
        rows = (scored or {}).get(view)
        if rows is None:
            continue
        summary = ViewSummary(rows=len(rows))
        for r in rows:
            summary.add(r)
            has_ifd, has_rifd = _present(r.get("ifd")), _present(r.get("rifd"))
            summary.with_ifd += has_ifd
            summary.with_rifd += has_rifd
            summary.with_statistics += has_ifd and has_rifd
        out[view] = summary
    return out


def input_summary(
    args: SelectArguments,
    scored: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    result: SelectionResult | None = None,
) -> dict[str, Any]:
    """Per view: file, rows, rows with statistics, reflection statuses, student and teacher where recorded (from
    ``result``'s view summaries, else from the ``scored`` rows)."""
    result = result if result is not None else SelectionResult([], [], SelectionCounts())
    views = _view_summaries(result, scored)
    out = {}
    for view, s in views.items():
        summary = _score_summary(args.files()[view])
        settings = summary.get("config", {})
        student = {**settings.get("student", {}), **settings.get("scoring", {})}
        out[view] = {
            "file": args.files()[view],
            "rows": s.rows,
            "with_statistics": s.with_statistics,
            "with_ifd": s.with_ifd,
            "with_rifd": s.with_rifd,
            "reflection_status": dict(s.reflection_status),
            "student": {name: student[k] for name, k in STUDENT_KEYS.items() if k in student},
            "teacher": list(s.teacher),
        }
    return out


# report name ← field of the score summary's student and scoring settings
STUDENT_KEYS = {
    "model": "model_name_or_path",
    "adapter": "adapter",
    "template": "template",
    "dtype": "dtype",
    "max_length": "score_max_length",
}
RULE_TEXT = """\
if IFD(Q) > IFD(ori):            # the student accepts the new instruction
    if rIFD(QA) < rIFD(Q):       # ... and the new response
        keep QA if rIFD(QA) < {r:g} and IFD(QA) < {i:g}          (branch 1)
    else: {b2:<50}(branch 2)
else:
    if rIFD(A) < rIFD(ori):
        keep A  if rIFD(A) < {r:g} and IFD(A) < {i:g}            (branch 3)
    else: {b4:<50}(branch 4)"""


def read_agreement(path: str | Path) -> dict[str, Any]:
    """An ``srt agree`` report, checked to be one."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(report, dict):
            raise ValueError("not an object")
        missing = [k for k in ("files", "rows", "statistics") if k not in report]
        if missing or not {"a", "b"} <= set(report["files"]):
            raise KeyError(", ".join(missing) or "files a and b")
        stats = {s["statistic"]: s for s in report["statistics"]}
    except OSError as e:
        raise SelectionInputError(f"--agreement {path}: cannot be read: {e.strerror or e}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise SelectionInputError(f"--agreement {path}: not an `srt agree` report ({type(e).__name__}: {e})") from None
    return {**report, "by_statistic": stats}


def proxy_lines(report: Mapping[str, Any], path: str | Path) -> list[str]:
    """The data card's lines on the proxy student: whose scores it stands in for and how well they agreed."""

    def fmt(x: Any) -> str:
        return "none" if x is None else f"{x:.3f}"

    stats = report["by_statistic"]
    parts = [
        f"{name} Spearman {fmt(stats[k].get('spearman'))}, Kendall {fmt(stats[k].get('kendall'))}, top "
        f"{stats[k].get('top_p', 0):.0%} overlap {fmt(stats[k].get('top_overlap'))}"
        for k, name in (("ifd", "IFD"), ("rifd", "r-IFD"))
        if k in stats
    ]
    lines = [
        f"- Proxy: the student above stands in for the one that scored `{Path(report['files']['a']).name}`; "
        f"`srt agree` (`{Path(path).name}`) measured on {report['rows']} rows of `{Path(report['files']['b']).name}`: "
        + "; ".join(parts)
        + "."
    ]
    d = report.get("decisions")
    if d:
        lines.append(
            f"- Proxy decisions (the paper's rule on both students' scores): same branch on "
            f"{fmt(d.get('same_branch'))} of {d.get('rows')} rows, same kept variant (or none) on "
            f"{fmt(d.get('same_kept_variant'))}."
        )
    if report.get("passed") is not None:
        verdict = "passed" if report["passed"] else "failed: " + "; ".join(report.get("failures") or [])
        lines.append(f"- Proxy agreement threshold {report.get('min_spearman')}: {verdict}.")
    return lines


def data_card(
    result: SelectionResult,
    args: SelectArguments,
    config: SelectionArguments,
    scored: Scored = None,
    files: Mapping[str, Path] | None = None,
) -> str:
    """Markdown: what went in, which models, the rule, the counts, the budgets, where the plots are. ``scored`` is
    read only for a result built by hand (one of ``select_rows`` carries what it read)."""
    from srt_trainer import __version__

    files = files or {}
    inputs = input_summary(args, _normalized_views(scored), result)
    statistics = config.policy in ("paper", "ifd", "ifd_top", *ACCEPTING)  # the student's statistics decide
    by_student = " by the student" if statistics else ""
    out = Path(args.output).name
    lines = [
        f"# Data card: `{out}`",
        "",
        f"{len(result.rows)} instruction-response pairs selected{by_student} from {result.counts['rows']} "
        f"source rows with the `{config.policy}` policy of `srt select` (srt_trainer {__version__}), "
        "Selective Reflection-Tuning (Li et al., ACL 2024 Findings).",
        "",
        "## Inputs",
        "",
        "| view | pair | file | rows | with IFD | with r-IFD | reflection status |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    pairs = {"ori": "(x0, y0)", "Q": "(x_ins, y_ins)", "A": "(x0, y_res)", "QA": "(x_ins, y_res')"}
    for view, s in inputs.items():
        status = ", ".join(f"{k}: {n}" for k, n in s["reflection_status"].items()) or "—"
        lines.append(
            f"| {view} | {pairs[view]} | `{Path(s['file']).name if s['file'] else '(in memory)'}` | "
            f"{s['rows']} | {s['with_ifd']} | {s['with_rifd']} | {status} |"
        )
    students = {json.dumps(s["student"], sort_keys=True) for s in inputs.values() if s["student"]}
    teachers = sorted({t for s in inputs.values() for t in s["teacher"]})
    lines += ["", "## Models", ""]
    if students:
        for s in sorted(students):
            d = json.loads(s)
            lines.append("- Student (scored the pairs): " + ", ".join(f"{k} `{v}`" for k, v in d.items() if v))
    else:
        lines.append("- Student: not recorded beside the inputs (no `srt score` summary found).")
    lines.append(
        f"- Teacher (rewrote the pairs): {', '.join(f'`{t}`' for t in teachers)}"
        if teachers
        else "- Teacher: not recorded in the inputs' columns."
    )
    if args.agreement:
        lines += proxy_lines(read_agreement(args.agreement), args.agreement)
    fallbacks = {v: s["reflection_status"] for v, s in inputs.items() if set(s["reflection_status"]) - {"ok"}}
    if fallbacks:
        text = "; ".join(
            f"{v}: " + ", ".join(f"{k} {n}" for k, n in st.items() if k != "ok") for v, st in fallbacks.items()
        )
        lines.append(f"- Teacher fallbacks / failures (the original text was kept): {text}")
    lines += ["", "## Rule", ""]
    if config.policy == "paper":
        winners = config.keep_unaccepted_winners
        lines += [
            "The paper's rule, as released; IFD = ppl(y|x)/ppl(y), r-IFD = ppl(x|y)/ppl(x) under the student:",
            "",
            "```",
            RULE_TEXT.format(
                r=config.rifd_threshold,
                i=config.ifd_threshold,
                b2=f"keep Q if rIFD(Q) < {config.rifd_threshold:g} and IFD(Q) < {config.ifd_threshold:g}"
                if winners
                else "not kept (as in the release)",
                b4=f"keep ori if rIFD(ori) < {config.rifd_threshold:g} and IFD(ori) < {config.ifd_threshold:g}"
                if winners
                else "not kept (as in the release)",
            ),
            "```",
            "",
        ]
        lines.append(
            "Threshold cuts are counted r-IFD first, then IFD, so each row is counted once. A rewrite "
            "identical to its source (a teacher fallback) is not accepted: it scores as its source does. "
            "A missing statistic makes every comparison with it false, as NaN does in the release's script: "
            "`null_comparisons` counts the comparisons it decided, `cut_rifd_null` / `cut_ifd_null` the "
            "thresholds it failed."
        )
    elif config.policy == "ifd":
        lines.append(
            "Cherry_LLM's selection: the original pairs only, kept when their IFD, the ratio of mean losses "
            f"s(y|x) / s(y), is at most {config.ifd_threshold:g}, ranked by it, highest first; a pair without "
            "it fails the threshold (`cut_ifd_null`)."
        )
    else:
        lines.append(arm_text(config, args.seed))
    budget = [
        f"top_k = {config.top_k}" if config.top_k is not None and not config.sized_by_paper() else "",
        f"top_p = {config.top_p:g}" if config.top_p is not None and not config.sized_by_paper() else "",
        f"size = {result.size}" if result.size is not None else "",
    ]
    budget_text = " and ".join(b for b in budget if b)
    order = {
        "IFD": "the pairs with the highest IFD first",
        "length": "the longest responses first",
        "random": f"in a random order (seed {args.seed}"
        + (", the random baseline's own stream)" if config.policy == "random" else ")"),
    }[config.order()]
    lines += [
        "",
        f"Budget: {budget_text + ', ' + order if budget_text else 'none'}.",
        *(["", size_text(result, config)] if result.sized_by == "paper" else []),
        "",
        "## Counts",
        "",
        "| step | rows |",
        "|---|---:|",
    ]
    for key, n in result.counts.items():
        nested = "/" in key and key.rsplit("/", 1)[0] in result.counts
        lines.append(f"| {'&nbsp;' * 4 * nested}{key} | {n} |")
    if config.policy == "paper":
        lines += ["", "Branches: " + "; ".join(f"{b}: {t}" for b, t in BRANCH_TEXT.items()) + "."]
    lines += [
        "",
        "## Files",
        "",
        f"- `{out}`: the kept pairs (`instruction`, `input`, `output`, `variant`, "
        "`source_index`, `branch`, `ifd`, `rifd`, `ifd_ori`, `rifd_ori`), in source order.",
    ]
    described = {
        "selection": "counts and configuration (JSON)",
        "decisions": "one decision per source row: branch, kept variant, cut reason, the statistics used",
        "funnel": "the funnel plot",
        "hist": "IFD / r-IFD histograms of each view",
    }
    for key, text in described.items():
        if key in files:
            lines.append(f"- `{files[key].name}`: {text}")
    for key, text in (("funnel", "Funnel"), ("hist", "Statistics")):
        if key in files:
            lines += ["", f"![{text}]({files[key].name})"]
    cmd = ["srt", "select"]
    for k, v in {**asdict(args), **asdict(config)}.items():
        if (
            v is not None
            and v is not False
            and k not in ("plot", "data_card", *(() if config.uses_seed() else ("seed",)))
        ):
            cmd += [f"--{k}", str(v)]
    lines += ["", "## Reproduce", "", "```", shlex.join(cmd), "```", ""]
    return "\n".join(lines)


ARM_TEXT = {
    "ori": "The paper's ablation (§5), the original data: every original pair (x0, y0), one per source row; the "
    "statistics are not read.",
    "instruction_only": "The paper's ablation (§5), the instruction stage alone: Q = (x_ins, y_ins) where the student "
    "accepts the new instruction, IFD(Q) > IFD(ori), and Q passes the thresholds, rIFD(Q) < {r:g} and IFD(Q) < {i:g} "
    "(r-IFD first); else the original pair. One pair per source row: a cut Q puts ori back (`accepted/cut_*`, "
    "`replaced` in the decisions). A teacher fallback is never accepted; a missing statistic makes the comparison "
    "false and fails its threshold, as NaN does in the release.",
    "response_only": "The paper's ablation (§5), the response stage alone on the original instruction: A = (x0, "
    "y_res) where the student accepts the new response, rIFD(A) < rIFD(ori), and A passes the thresholds, rIFD(A) < "
    "{r:g} and IFD(A) < {i:g} (r-IFD first); else the original pair. One pair per source row: a cut A puts ori back "
    "(`accepted/cut_*`, `replaced` in the decisions). A teacher fallback is never accepted; a missing statistic makes "
    "the comparison false and fails its threshold, as NaN does in the release.",
    "reflection_all": "The paper's ablation (§5), reflection without the student's selection: QA = (x_ins, y_res') "
    "for every source row; the statistics are not read.",
    "random": "Baseline: original pairs (x0, y0) drawn at random, numpy's `default_rng([{seed}, 1]).permutation` of "
    "the source rows (the random baseline's own stream of the seed, independent of the order `ori --size` is cut "
    "by); the statistics are not read.",
    "ifd_top": "Baseline, Cherry_LLM's selection as the paper's budgets apply it: the original pairs with IFD (the "
    "perplexity ratio ppl(y|x)/ppl(y)) below {i:g}, the highest first, ties in source order; a pair without IFD "
    "is cut (`ifd_top/cut_ifd_null`).",
    "longest": "Baseline (Zhao et al., 2024, arXiv 2402.04833): the original pairs with the longest responses, in "
    "characters, longest first, ties in source order; the statistics are not read.",
}


def arm_text(config: SelectionArguments, seed: int) -> str:
    """The data card's rule for a policy of the ablation or a baseline."""
    return ARM_TEXT[config.policy].format(r=config.rifd_threshold, i=config.ifd_threshold, seed=seed)


def size_text(result: SelectionResult, config: SelectionArguments) -> str:
    """Where a baseline's size comes from: the paper policy's kept count on the same four views."""
    budgets = [f"top_k = {config.top_k}" if config.top_k is not None else ""]
    budgets.append(f"top_p = {config.top_p:g}" if config.top_p is not None else "")
    shaped = " and ".join(b for b in budgets if b)
    return (
        f"Size {result.size}: as many rows as the `paper` policy keeps on the same four files, with the same "
        f"thresholds{' and ' + shaped if shaped else ''} (computed in the same pass)."
    )


def _normalized_views(scored: Scored) -> dict[str, Sequence[Mapping[str, Any]]]:
    if isinstance(scored, Views):
        return scored.named()
    names = {v.lower(): v for v in VARIANTS}
    return {names.get(k.lower(), k): v for k, v in (scored or {}).items() if v is not None}


def write_selection(
    result: SelectionResult,
    args: SelectArguments,
    config: SelectionArguments,
    scored: Scored = None,
) -> dict[str, Path]:
    """Write the kept rows to ``args.output`` and the report beside it; returns the paths by kind.

    ``scored``: the scored views by name (``ori``, ``Q``, ``A``, ``QA``; lower case accepted), needed only for a
    result built by hand; one of ``select_rows`` / ``select_from`` carries what the report needs.
    """
    output = check_output_path(args.output)
    scored = _normalized_views(scored)
    files: dict[str, Path] = {"output": write_rows(result.rows, output)}
    report = {
        "counts": result.counts,
        "inputs": input_summary(args, scored, result),
        "output": str(output),
        "kept": len(result.rows),
        "config": {"select": asdict(args), "selection": asdict(config)},
        **({"size": {"rows": result.size, "from": result.sized_by}} if result.size is not None else {}),
    }
    files["selection"] = sidecar_path(output, "selection.json")
    write_text_atomic(json.dumps(report, indent=2, ensure_ascii=False), files["selection"])
    files["decisions"] = write_rows(result.iter_decisions(), sidecar_path(output, "decisions.jsonl"))
    if args.plot:
        files["funnel"] = plot_funnel(
            result.counts,
            config,
            sidecar_path(output, "funnel.png"),
            title=f"{output.name}: selection funnel ({config.policy} policy)",
        )
        hist = plot_histograms(result, config, sidecar_path(output, "hist.png"), scored)
        if hist:
            files["hist"] = hist
    if args.data_card:
        files["card"] = sidecar_path(output, "card.md")
        write_text_atomic(data_card(result, args, config, scored, files), files["card"])
    return files
