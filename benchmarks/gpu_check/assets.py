"""What the GPU machine cannot fetch, prepared where there is network and data: the embedded student's tokenizer
and config, a 32k cut of its tokenizer for the Llama-shaped students, real Alpaca rows, one test set, and the four
variant files (ori, Q, A, QA) that the ZeRO-3 step scores, selects and trains on."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from gpu_check.config import ALPACA, COMPRESSED, EVAL_SET, LLAMA2_VOCAB, REPO

VARIANTS = ("ori", "Q", "A", "QA")
VARIANT_ROWS = 128  # carried; a step takes the first rows it needs


def shared_data() -> Path:
    """The full data: ``SRT_SHARED_DATA``, else ``shared/data`` beside the checkout."""
    return Path(os.environ.get("SRT_SHARED_DATA", REPO.parent / "shared" / "data"))


def truncate_bpe(tokenizer_json: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    """A byte-level BPE tokenizer cut to its first ``vocab_size`` ids: a merge is kept only where its result keeps
    its id. BPE ids follow merge order, so every kept token is still reachable and the cut tokenizer is a real
    (slightly less compact) tokenizer of that vocabulary size."""
    out = json.loads(json.dumps(tokenizer_json))
    model = out["model"]
    model["vocab"] = {tok: i for tok, i in model["vocab"].items() if i < vocab_size}
    merges = []
    for merge in model["merges"]:
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        if left + right in model["vocab"]:
            merges.append(merge)
    model["merges"] = merges
    out["added_tokens"] = [t for t in out["added_tokens"] if t["id"] < vocab_size]
    return out


def variant_rows(rows: list[dict[str, Any]], compressed: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The four variants of ``rows`` without a teacher: ori is the row; Q its instruction as the release's
    compressed data rewrote it (the input folded in; the original where the release has no rewrite); A the
    original instruction answered by the first sentence of its response; QA the rewritten instruction with that
    answer. Every row has a non-empty response, so each variant has statistics."""
    rewritten = {r["output"]: r["instruction"] for r in compressed}
    out: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for i, r in enumerate(rows):
        new_instruction = rewritten.get(r["output"], r["instruction"] + (f"\n{r['input']}" if r["input"] else ""))
        short = r["output"].strip().split("\n")[0].split(". ")[0].rstrip(".") + "."
        out["ori"].append({"instruction": r["instruction"], "input": r["input"], "output": r["output"]})
        out["Q"].append({"instruction": new_instruction, "input": "", "output": r["output"], "source_index": i})
        out["A"].append({"instruction": r["instruction"], "input": r["input"], "output": short, "source_index": i})
        out["QA"].append({"instruction": new_instruction, "input": "", "output": short, "source_index": i})
    return out


def write_jsonl(rows: list[dict[str, Any]], path: Path) -> Path:
    """``rows`` as JSON lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def variant_file(assets: Path, variant: str) -> Path:
    """The carried file of one variant."""
    return assets / "data" / "variants" / f"{variant.lower()}.jsonl"


def read_rows(path: Path, n: int | None = None) -> list[dict[str, Any]]:
    """The first ``n`` rows (all by default) of a JSON or JSONL file; fewer than ``n`` is an error."""
    text = path.read_text()
    rows = json.loads(text) if path.suffix == ".json" else [json.loads(line) for line in text.splitlines()]
    if n is not None and n > len(rows):
        raise ValueError(f"{n} rows asked for, {path} has {len(rows)}")
    return rows if n is None else rows[:n]


def pick(rows: list[dict[str, Any]], n: int, shortest: bool) -> list[int]:
    """Indices of the first ``n`` rows, or (``shortest``) of the ``n`` shortest, in file order."""
    if n > len(rows):
        raise ValueError(f"{n} rows asked for, there are {len(rows)}")
    if not shortest:
        return list(range(n))
    return sorted(sorted(range(len(rows)), key=lambda i: len(json.dumps(rows[i])))[:n])


def prepare_assets(assets: Path, data: Path | None = None) -> Path:
    """Write what the check reads into ``assets`` from the embedded student and the full data folder ``data``."""
    from srt_trainer.models import ensure_embedded_model

    data = data or shared_data()
    src = ensure_embedded_model()
    small, tok32k, out = assets / "smollm2", assets / "tok32k", assets / "data"
    for folder in (small, tok32k, out):
        folder.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (src / name).is_file():
            shutil.copy(src / name, small / name)
    cut = truncate_bpe(json.loads((src / "tokenizer.json").read_text()), LLAMA2_VOCAB)
    (tok32k / "tokenizer.json").write_text(json.dumps(cut, ensure_ascii=False))
    shutil.copy(src / "tokenizer_config.json", tok32k / "tokenizer_config.json")
    shutil.copy(data / ALPACA, out / ALPACA)
    shutil.copy(data / "eval" / EVAL_SET, out / EVAL_SET)
    rows = read_rows(data / ALPACA)[:VARIANT_ROWS]
    for variant, vrows in variant_rows(rows, read_rows(data / COMPRESSED)).items():
        write_jsonl(vrows, variant_file(assets, variant))
    return assets
