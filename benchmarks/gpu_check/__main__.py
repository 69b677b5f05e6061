"""``python -m gpu_check prepare | run | _step`` (with ``benchmarks/`` on ``PYTHONPATH``; scripts/gpu_check.sh
is the way in)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gpu_check
from gpu_check.config import STEPS


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the command."""
    ap = argparse.ArgumentParser(
        prog="python -m gpu_check", description=gpu_check.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write the assets the GPU machine cannot fetch")
    p.add_argument("--assets", type=Path, required=True)
    r = sub.add_parser("run", help="run the check and write the report")
    r.add_argument("--assets", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True, help="where gpu_report.json / .md and the logs go")
    r.add_argument("--work", type=Path, default=None, help="scratch folder (default: OUT/../gpu_check_work)")
    r.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, few rows")
    r.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of: " + ", ".join(STEPS))
    s = sub.add_parser("_step", help="run one step (the driver starts it)")
    s.add_argument("name", choices=STEPS)
    s.add_argument("--assets", type=Path, required=True)
    s.add_argument("--work", type=Path, required=True)
    s.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    if args.command == "prepare":
        from gpu_check.assets import prepare_assets

        print(f"assets written to {prepare_assets(args.assets)}")
        return 0
    from gpu_check.driver import run_check, run_step
    from gpu_check.report import markdown

    if args.command == "_step":
        return run_step(args.name, args.assets.resolve(), args.work.resolve(), args.dry_run)
    steps = [s for s in args.steps.split(",") if s]
    unknown = set(steps) - set(STEPS)
    if unknown:
        ap.error(f"unknown step(s): {', '.join(sorted(unknown))}")
    work = (args.work or args.out.resolve().parent / "gpu_check_work").resolve()
    report = run_check(args.assets.resolve(), args.out.resolve(), work, args.dry_run, steps)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
