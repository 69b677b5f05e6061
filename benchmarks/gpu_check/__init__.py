"""The one-call GPU check: scoring speed, DeepSpeed ZeRO-3 / LoRA / QLoRA training with resume, and evaluation.

Run through ``scripts/gpu_check.sh`` (which installs the carried wheels first). Every step runs in its own process
under a time limit, so one that fails or hangs leaves the others their time; each writes its numbers to
``WORK/results/STEP.json`` and the driver folds them into one report, ``OUT/gpu_report.json`` (``null`` with a
``*_reason`` beside every number a step could not give) and ``OUT/gpu_report.md``.

    python -m gpu_check prepare --assets .gpu_check     # tokenizers, configs and real rows to carry
    python -m gpu_check run --assets .gpu_check --out DIR [--dry-run]

(with ``benchmarks/`` on ``PYTHONPATH``). ``--dry-run`` runs the same steps on the CPU with tiny shapes and few
rows, so CI exercises the check.

Modules: ``config`` (sizes, time limits), ``assets`` (what the GPU machine cannot fetch), ``steps`` (the work, one
module per kind), ``driver`` (one process per step, under its limit), ``report`` (JSON and markdown).
"""
