"""Data at the size users have: every stage's own work at 10k, 100k and 1M real-looking rows, beside the plain
library on the same files.

Rows are those of the Cherry Alpaca file, repeated, each copy with a few of its words swapped (so no two rows are
the same text). Every measurement runs in a fresh process: seconds (wall) and that process's peak RSS. The stages:

- load: ``load_instruction_data`` on a JSON list (indent 4, as ``alpaca_data.json``), JSONL and Parquet, against
  ``json.load``, ``json.loads`` per line (and ``pyarrow.json.read_json``), ``pyarrow.parquet`` ``to_pylist``;
- write: ``write_rows`` to JSONL against ``json.dumps`` per row;
- tokenize: the scorer's views and plan of every shard (``DataCollatorForIFD.views`` + ``IFDScorer.plan``, no
  forward), against the tokenizer's batch encode of the four view texts;
- score: the whole ``srt score`` process with a tiny random student (one layer, 8 wide, a 512-token vocabulary
  trained on the data), so the model costs little and the rest shows; its summary's ``seconds`` split it into the
  student's own time (tokenize, plan, forwards) and the rest;
- select: the whole ``srt select`` process on four score files (ori, Q, A, QA written here with real-looking
  statistics and reflection columns), against ``json.loads`` of the four files;
- reflect: the whole ``srt reflect --mode response`` process resumed with every answer in its teacher cache (no
  teacher call; the cache is filled first by the same stage with the teacher's sending replaced), against reading
  the data and the cache with ``json.loads``;
- sft: ``load_training_rows`` + ``build_sft_dataset``, against ``json.loads`` + ``datasets.Dataset.from_dict`` of
  prompts formatted by hand.

    python benchmarks/bench_scale.py                                   # 10k, 100k, 1M rows
    python benchmarks/bench_scale.py --sizes 10000,100000 --stages load,select
    python benchmarks/bench_scale.py --score-sizes 10000,100000        # srt score at 1M takes 2.4 hours here
    python benchmarks/bench_scale.py --stages load --repeat 3          # the fastest of three fresh processes

Data: ``--data``, else ``$SRT_BENCH_DATA``, else ``../shared/data/cherry_alpaca_5_percent.json`` beside the
repository (falling back to ``tests/data/alpaca_slice.json``). Files go to ``--work`` (a temporary folder by
default; 1M rows take about 10 GB).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cherry_alpaca_5_percent.json"
FALLBACK_DATA = REPO / "tests" / "data" / "alpaca_slice.json"
STAGES = ("load", "write", "tokenize", "score", "select", "reflect", "sft")
# nothing listens there: a request the cache did not answer fails at once instead of being sent
TEACHER = ["--teacher", "openai", "--teacher_model", "bench-teacher", "--base_url", "http://127.0.0.1:9/v1"]
TEACHER += ["--max_retries", "0"]


# -- machine ------------------------------------------------------------------------------------------------


def machine() -> str:
    """CPU model, the vector extensions that matter here, cores, memory, Python and library versions."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                model = value.strip()
            elif key.strip() == "Flags":
                flags = set(value.split())
    except (OSError, subprocess.CalledProcessError):
        pass
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import pyarrow

    versions = f"Python {platform.python_version()}, pyarrow {pyarrow.__version__}"
    return f"{model} ({', '.join(wanted) or 'no AVX2'}), {os.cpu_count()} cores, {mem:.0f} GiB; {versions}"


# -- data -----------------------------------------------------------------------------------------------------


def _swap_words(text: str, rng: random.Random, swaps: int = 2) -> str:
    words = text.split(" ")
    if len(words) < 4:
        return text
    for _ in range(swaps):
        i, j = rng.randrange(len(words)), rng.randrange(len(words))
        words[i], words[j] = words[j], words[i]
    return " ".join(words)


def real_looking_rows(base: list[dict[str, Any]], n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` rows: the base rows in order, then copies with a few words swapped in instruction and output."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        r = base[i % len(base)]
        if i < len(base):
            rows.append({"instruction": r["instruction"], "input": r["input"], "output": r["output"]})
        else:
            rows.append(
                {
                    "instruction": _swap_words(r["instruction"], rng, 1),
                    "input": r["input"],
                    "output": _swap_words(r["output"], rng),
                }
            )
    return rows


def write_inputs(rows: list[dict[str, Any]], folder: Path) -> None:
    """The rows as a JSON list (indent 4), JSONL and Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with (folder / "rows.json").open("w", encoding="utf-8") as f:
        json.dump(rows, f, indent=4, ensure_ascii=False)
    with (folder / "rows.jsonl").open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    pq.write_table(pa.Table.from_pylist(rows), folder / "rows.parquet")


def _stats(rng: random.Random, empty: bool) -> dict[str, Any]:
    """Real-looking statistics: mean losses of a small student, IFD and r-IFD near and mostly below 1."""
    if empty:
        return {
            **dict.fromkeys(("loss_ins_alone", "loss_out_alone", "loss_ins_cond", "loss_out_cond"), None),
            **dict.fromkeys(("ifd", "rifd", "ifd_loss", "rifd_loss"), None),
            "score_error": "empty response",
            "ifd_error": "empty response",
            "rifd_error": "empty response",
        }
    out_alone, ins_alone = rng.uniform(1.2, 3.2), rng.uniform(2.0, 4.5)
    log_ifd, log_rifd = rng.gauss(-0.08, 0.09), rng.gauss(-0.12, 0.1)
    out_cond, ins_cond = out_alone + log_ifd, ins_alone + log_rifd
    return {
        "loss_ins_alone": ins_alone,
        "loss_out_alone": out_alone,
        "loss_ins_cond": ins_cond,
        "loss_out_cond": out_cond,
        "ifd": math.exp(log_ifd),
        "rifd": math.exp(log_rifd),
        "ifd_loss": out_cond / out_alone,
        "rifd_loss": ins_cond / ins_alone,
        "score_error": None,
        "ifd_error": None,
        "rifd_error": None,
    }


def write_score_files(rows: list[dict[str, Any]], folder: Path, seed: int = 1) -> dict[str, Path]:
    """Score outputs of ori and of its rewrites Q, A and QA, as `srt score` writes them (reflection columns on the
    rewrites; 2% teacher fallbacks, which keep the source text, and 0.1% empty responses)."""
    rng = random.Random(seed)
    paths = {v: folder / f"{v.lower()}.scores.jsonl" for v in ("ori", "Q", "A", "QA")}
    files = {v: p.open("w", encoding="utf-8") for v, p in paths.items()}
    teacher = {"teacher": "openai", "teacher_model": "bench-teacher"}
    try:
        for i, r in enumerate(rows):
            fallback = rng.random() < 0.02
            q_instruction = r["instruction"] if fallback else "In detail, and step by step: " + r["instruction"]
            q_output = r["output"] if fallback else r["output"] + " In short, that is the whole answer."
            texts = {
                "ori": (r["instruction"], r["input"], r["output"]),
                "Q": (q_instruction, "" if not fallback else r["input"], q_output),
                "A": (r["instruction"], r["input"], "To answer well: " + r["output"]),
            }
            texts["QA"] = (texts["Q"][0], texts["Q"][1], "A better answer: " + q_output)
            for view, (instruction, input_, output) in texts.items():
                row: dict[str, Any] = {"row_index": i, "instruction": instruction, "input": input_, "output": output}
                if view != "ori":
                    status = "fallback" if fallback and view == "Q" else "ok"
                    row.update(source_index=i, variant=view, **teacher, reflection_status=status)
                row.update(_stats(rng, empty=rng.random() < 0.001))
                files[view].write(json.dumps(row, ensure_ascii=False) + "\n")
    finally:
        for f in files.values():
            f.close()
    return paths


def tiny_student(base: list[dict[str, Any]], folder: Path, vocab: int = 512) -> Path:
    """A random one-layer Llama, 8 wide, with a BPE tokenizer of ``vocab`` tokens trained on the data."""
    from srt_trainer.models.tiny import save_tiny_student

    return save_tiny_student(
        folder,
        [r["instruction"] + " " + r["input"] + " " + r["output"] for r in base],
        "llama",
        vocab_size=vocab,
        specials={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        prepends_bos=False,
        shape={
            "hidden_size": 8,
            "intermediate_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 1,
            "num_key_value_heads": 1,
        },
        max_position_embeddings=4096,
    )


# -- one measurement per process --------------------------------------------------------------------------


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _jsonl(path: str) -> list[Any]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _view_texts(rows: list[dict[str, Any]], template: Any) -> list[str]:
    """The texts the four views of each row are tokenized from: prompt(x) + y, reverse(y) + x, y and x."""
    texts = []
    for r in rows:
        x = r["instruction"] + r["input"]
        texts += [template.prompt(r["instruction"], r["input"]) + r["output"], template.reverse_prompt(r["output"]) + x]
        texts += [r["output"], x]
    return texts


def worker(op: str, args: list[str]) -> dict[str, Any]:
    """Run one operation (the timed part only) and say what it did."""
    import gc

    extra: dict[str, Any] = {}
    if op == "load":
        from srt_trainer.data import load_instruction_data

        start = time.perf_counter()
        n = len(load_instruction_data(args[0]).rows)
    elif op == "json.load":
        start = time.perf_counter()
        with open(args[0], encoding="utf-8") as f:
            n = len(json.load(f))
    elif op == "json.loads":
        start = time.perf_counter()
        n = sum(len(_jsonl(path)) for path in args)
    elif op == "pyarrow.json":
        import pyarrow.json

        start = time.perf_counter()
        n = pyarrow.json.read_json(args[0]).num_rows
    elif op == "pyarrow.parquet":
        import pyarrow.parquet as pq

        start = time.perf_counter()
        n = len(pq.read_table(args[0]).to_pylist())
    elif op in ("write_rows", "json.dumps"):
        from srt_trainer.io import write_rows

        rows = _jsonl(args[0])
        gc.collect()
        start = time.perf_counter()
        if op == "write_rows":
            write_rows(rows, args[1])
        else:
            with open(args[1], "w", encoding="utf-8") as f:
                for r in rows:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
        n = len(rows)
    elif op in ("views+plan", "tokenizer"):
        from srt_trainer.data import load_instruction_data
        from srt_trainer.models import load_student, load_tokenizer
        from srt_trainer.scoring.collator import VIEW_KINDS
        from srt_trainer.scoring.scorer import IFDScorer
        from srt_trainer.templates import get_template

        rows = load_instruction_data(args[0]).rows
        tokenizer = load_tokenizer(args[1])
        gc.collect()
        if op == "tokenizer":
            start = time.perf_counter()
            for s in range(0, len(rows), 4096):
                tokenizer(_view_texts(rows[s : s + 4096], get_template("vicuna", tokenizer)))
        else:
            scorer = IFDScorer(load_student(args[1], dtype="float32", device="cpu"), tokenizer, "vicuna")
            start = time.perf_counter()
            forwards = 0
            for s in range(0, len(rows), 256):  # scoring's shards
                views = [v for sv in scorer.collator.views(rows[s : s + 256]) for v in sv.views]
                for kind in VIEW_KINDS:
                    members = [v for v in views if v.kind == kind]
                    plen = scorer.shared_prefix_length(members)
                    forwards += len(scorer.plan([len(v.input_ids) - plen for v in members], plen))
            extra["forwards"] = forwards
        n = len(rows)
    elif op == "sft":
        from srt_trainer.models import load_tokenizer
        from srt_trainer.training.data import build_sft_dataset, load_training_rows

        tokenizer = load_tokenizer(args[1])
        start = time.perf_counter()
        rows = load_training_rows(args[0], args[2])
        n = len(build_sft_dataset(rows, "vicuna", tokenizer))
    elif op == "sft.plain":
        import datasets

        start = time.perf_counter()
        rows = _jsonl(args[0])
        system = (
            "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
            "detailed, and polite answers to the user's questions."
        )
        prompts = [
            f"{system} USER: {r['instruction']}" + (f"\nInput:\n{r['input']}" if r["input"] else "") + " ASSISTANT:"
            for r in rows
        ]
        n = len(datasets.Dataset.from_dict({"prompt": prompts, "completion": [" " + r["output"] for r in rows]}))
    elif op == "reflect.prepare":
        return prepare_reflect(args)
    elif op == "reflect.plain":
        start = time.perf_counter()
        rows = _jsonl(args[0])
        cache = {e["key"]: e for e in _jsonl(args[1])}
        n = min(len(rows), len(cache))
    else:
        raise SystemExit(f"unknown operation {op}")
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rows": n, "rss_mb_at_end": _rss_mb(), **extra}


def prepare_reflect(args: list[str]) -> dict[str, Any]:
    """Fill the teacher cache of ``srt reflect --mode response`` on the data: the same stage and settings as the
    measured run, with the teacher's sending replaced by an instant answer."""
    from srt_trainer.options import StageParser
    from srt_trainer.reflection.config import ReflectArguments, ReflectionArguments
    from srt_trainer.reflection.runner import run_reflect
    from srt_trainer.teachers import build_teacher_from_args
    from srt_trainer.teachers.base import Answer
    from srt_trainer.teachers.config import TeacherArguments

    parser = StageParser((ReflectArguments, ReflectionArguments, TeacherArguments), "srt reflect")
    reflect_args, reflection, teacher_args = parser.parse_args_and_config(args)
    teacher = build_teacher_from_args(teacher_args)

    def answer(conversations, sampling, on_answer) -> None:
        for j, conversation in enumerate(conversations):
            text = "The answer is fine.\n[Better Answer] " + conversation[-1]["content"][-200:] + " [End]"
            on_answer(j, Answer(text, None, 100, 50, 1))

    teacher.generate = answer  # type: ignore[method-assign]
    start = time.perf_counter()
    run = run_reflect(reflect_args, teacher_args, reflection, teacher=teacher)
    return {"seconds": time.perf_counter() - start, "rows": len(run.result.rows)}


def run_one(command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``command`` in a fresh process, through a small parent whose only child it is (so the peak RSS is that
    command's alone): wall seconds, peak RSS (MiB) and what it printed last (JSON)."""
    probe = [
        sys.executable,
        "-c",
        "import json, os, subprocess, sys, time, resource\n"
        "start = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "wall = time.perf_counter() - start\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "sys.stderr.write(p.stderr[-3000:])\n"
        "last = (p.stdout.strip().splitlines() or [''])[-1]\n"
        "print(json.dumps({'wall': wall, 'peak_mb': peak, 'rc': p.returncode, 'last': last}))\n",
        *command,
    ]
    proc = subprocess.run(probe, capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"{' '.join(command)}: the probe failed:\n{proc.stderr[-3000:]}")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    if got["rc"] != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({got['rc']}):\n{proc.stderr[-3000:]}")
    result = {"wall": got["wall"], "peak_mb": got["peak_mb"]}
    if got["last"].startswith("{"):
        result.update(json.loads(got["last"]))
    return result


def warm_inputs(command: list[str]) -> None:
    """Read the files a command names into the page cache first: otherwise whichever of ours and the baseline runs
    first on a file may pay for reading it from disk (measured here: without this, ours, which runs first, took up
    to 3x its best time on the 1M-row files while the baseline after it did not vary)."""
    for arg in command:
        path = Path(arg)
        if path.is_file() and path.suffix in (".json", ".jsonl", ".parquet"):
            with path.open("rb") as f:
                while f.read(1 << 24):
                    pass


# -- the stages -------------------------------------------------------------------------------------------------


def py(op: str, *args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "_worker", op, *map(str, args)]


def srt(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("srt")), *map(str, args)]


def stage_commands(stage: str, folder: Path, student: Path) -> list[tuple[str, str, list[str], bool]]:
    """(measurement, what, command, is ours) of a stage at one size."""
    d = folder
    if stage == "load":
        return [
            ("load JSON list", "load_instruction_data", py("load", d / "rows.json"), True),
            ("load JSON list", "json.load", py("json.load", d / "rows.json"), False),
            ("load JSONL", "load_instruction_data", py("load", d / "rows.jsonl"), True),
            ("load JSONL", "json.loads per line", py("json.loads", d / "rows.jsonl"), False),
            ("load JSONL", "pyarrow.json.read_json (Arrow only)", py("pyarrow.json", d / "rows.jsonl"), False),
            ("load Parquet", "load_instruction_data", py("load", d / "rows.parquet"), True),
            ("load Parquet", "pyarrow.parquet to_pylist", py("pyarrow.parquet", d / "rows.parquet"), False),
        ]
    if stage == "write":
        return [
            ("write JSONL", "write_rows", py("write_rows", d / "rows.jsonl", d / "out.write.jsonl"), True),
            ("write JSONL", "json.dumps per row", py("json.dumps", d / "rows.jsonl", d / "out.dumps.jsonl"), False),
        ]
    if stage == "tokenize":
        return [
            ("tokenize and plan", "views + plan (no forward)", py("views+plan", d / "rows.jsonl", student), True),
            ("tokenize and plan", "tokenizer batch encode", py("tokenizer", d / "rows.jsonl", student), False),
        ]
    if stage == "score":
        out = d / "score" / "scores.jsonl"
        command = srt("score", "--data", d / "rows.jsonl", "--output", out, "--model", student, "--overwrite")
        return [("srt score (tiny student)", "whole process", command, True)]
    if stage == "select":
        views = {v: d / f"{v.lower()}.scores.jsonl" for v in ("ori", "Q", "A", "QA")}
        command = srt("select", *(x for v, p in views.items() for x in (f"--{v.lower()}", p)))
        command += ["--output", str(d / "select" / "selected.jsonl")]
        plain = py("json.loads", *views.values())
        return [
            ("srt select (4 files)", "whole process", command, True),
            ("srt select (4 files)", "json.loads of the 4 files", plain, False),
        ]
    if stage == "reflect":
        command = srt("reflect", *reflect_args(d))
        plain = py("reflect.plain", d / "rows.jsonl", d / "reflect" / "cache.jsonl")
        return [
            ("srt reflect, resumed (all cached)", "whole process", command, True),
            ("srt reflect, resumed (all cached)", "json.loads of data and cache", plain, False),
        ]
    if stage == "sft":
        ours = py("sft", d / "rows.jsonl", student, d / "sft.rejects.jsonl")
        return [
            ("SFT dataset build", "load_training_rows + build_sft_dataset", ours, True),
            ("SFT dataset build", "json.loads + Dataset.from_dict", py("sft.plain", d / "rows.jsonl"), False),
        ]
    raise ValueError(stage)


def reflect_args(d: Path) -> list[str]:
    out, cache = d / "reflect" / "a.jsonl", d / "reflect" / "cache.jsonl"
    files = ["--data", str(d / "rows.jsonl"), "--output", str(out), "--teacher_cache", str(cache)]
    return ["--mode", "response", *files, "--no_progress", *TEACHER]


def prepare(stage: str, folder: Path, rows: list[dict[str, Any]], env: dict[str, str]) -> None:
    """What a stage reads besides the rows: score files for select, a filled teacher cache for reflect."""
    if stage == "select" and not (folder / "qa.scores.jsonl").exists():
        write_score_files(rows, folder)
    if stage == "reflect":
        cache = folder / "reflect" / "cache.jsonl"
        if not cache.exists():
            (folder / "reflect").mkdir(exist_ok=True)
            run_one(py("reflect.prepare", *reflect_args(folder)), env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("SRT_BENCH_DATA") or str(DEFAULT_DATA))
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--score-sizes", default=None, help="sizes for srt score (default: --sizes)")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--work", default=None, help="folder for the files (default: a temporary one, removed)")
    ap.add_argument("--json", default=None, help="also write every measurement to this JSON file")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each measurement this many times, alternating ours and the baseline, and keep the fastest of each "
        "(a VM's first touches of fresh memory vary by tens of percent from one process to the next)",
    )
    args = ap.parse_args()

    data = Path(args.data) if Path(args.data).is_file() else FALLBACK_DATA
    base = json.loads(data.read_text(encoding="utf-8"))
    sizes = [int(s) for s in args.sizes.split(",")]
    score_sizes = [int(s) for s in (args.score_sizes or args.sizes).split(",")]
    stages = [s for s in args.stages.split(",") if s]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY", "unused"), "TOKENIZERS_PARALLELISM": "true"}
    print(f"machine: {machine()}")
    print(f"data: {data.name} ({len(base)} rows), sizes {sizes}, srt score at {score_sizes}, work {work}")
    student = work / "tiny-student"
    if not (student / "config.json").exists():
        tiny_student(base, student)

    results: list[dict[str, Any]] = []
    try:
        for n in sorted(set(sizes) | set(score_sizes)):
            folder = work / str(n)
            folder.mkdir(exist_ok=True)
            rows = real_looking_rows(base, n)
            if not (folder / "rows.parquet").exists():
                write_inputs(rows, folder)
            for stage in stages:
                if n not in (score_sizes if stage == "score" else sizes):
                    continue
                prepare(stage, folder, rows, env)
                commands = stage_commands(stage, folder, student)
                runs: list[list[dict[str, Any]]] = [[] for _ in commands]
                for _ in range(max(1, args.repeat)):
                    for k, (name, what, command, ours) in enumerate(commands):
                        warm_inputs(command)
                        got = run_one(command, env)
                        if stage == "score":
                            got.update(score_split(folder / "score" / "scores.summary.json", got["wall"]))
                        got.update(size=n, measurement=name, what=what, ours=ours)
                        print(json.dumps(got), flush=True)
                        runs[k].append(got)
                # the fastest try of each, timed as ``table`` times it: whole processes where ours is a whole process
                whole = {c[0]: "seconds" not in runs[k][0] for k, c in enumerate(commands) if c[3]}
                results += [min(t, key=lambda r: _seconds(r, whole[r["measurement"]])) for t in runs]
            del rows
    finally:
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": machine(), "results": results}, indent=2))
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(results))


def score_split(summary_path: Path, wall: float) -> dict[str, Any]:
    """The student's own seconds (tokenize, plan, forwards) and the rest of the ``srt score`` process."""
    seconds = json.loads(summary_path.read_text())["seconds"]
    student = seconds.get("student", 0.0)
    return {"student_s": student, "rest_s": wall - student, "phases": seconds}


def _seconds(r: dict[str, Any], whole_process: bool) -> float:
    """A worker's timed part, or the whole process's wall time where ours is a whole process (a CLI stage)."""
    return r["wall"] if whole_process or "seconds" not in r else r["seconds"]


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: per measurement and size, ours and the plain library's seconds and peak RSS, the ratio, and the
    growth of our time per 10x rows. Where ours is a whole ``srt`` process (imports included), the plain library is
    timed as a whole process too."""
    lines = [
        "| stage | rows | ours s | ours peak MiB | plain library | plain s | plain peak MiB | ours / plain "
        "| growth ×10 rows |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    names = list(dict.fromkeys(r["measurement"] for r in results))
    for name in names:
        ours = {r["size"]: r for r in results if r["measurement"] == name and r["ours"]}
        plains = [r for r in results if r["measurement"] == name and not r["ours"]]
        for n in sorted(ours):
            o = ours[n]
            whole = "seconds" not in o
            t = _seconds(o, whole)
            prev = ours.get(n // 10)
            growth = f"{t / _seconds(prev, whole):.1f}×" if prev is not None else ""
            same = [p for p in plains if p["size"] == n] or [None]
            for k, p in enumerate(same):
                pt = None if p is None else _seconds(p, whole)
                cells = [name if k == 0 else "", f"{n:,}" if k == 0 else "", f"{t:.2f}" if k == 0 else ""]
                cells.append(f"{o['peak_mb']:.0f}" if k == 0 else "")
                cells += [p["what"] if p else "—", f"{pt:.2f}" if pt else "—", f"{p['peak_mb']:.0f}" if p else "—"]
                cells += [f"{t / pt:.2f}×" if pt else "—", growth if k == 0 else ""]
                lines.append("| " + " | ".join(cells) + " |")
            if "student_s" in o:
                lines.append(
                    f"| &nbsp;&nbsp;of which the student (tokenize, plan, forwards) | {n:,} | {o['student_s']:.2f} | | "
                    f"rest of the process | {o['rest_s']:.2f} | | rest: {o['rest_s'] / t:.0%} of the time | |"
                )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_worker":
        print(json.dumps(worker(sys.argv[2], sys.argv[3:])))
    else:
        main()
