"""Row files every stage writes: JSONL or Parquet, chosen by the file's extension, written atomically."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

OUTPUT_SUFFIXES = (".jsonl", ".parquet")


def sidecar_path(output: str | Path, suffix: str) -> Path:
    """A file that belongs beside a stage's output: ``scores.jsonl`` → ``scores.<suffix>``."""
    output = Path(output)
    name = output.name
    for ext in (*OUTPUT_SUFFIXES, ".json"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return output.with_name(f"{name}.{suffix}")


def check_output_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.name.endswith(OUTPUT_SUFFIXES):
        raise ValueError(f"{path}: the output must end in .jsonl or .parquet")
    return path


def _clean(value: Any) -> Any:
    # JSON has no NaN: a missing statistic is null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_rows(rows: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write rows to ``path`` (JSONL or Parquet by extension) through a temporary file, so a killed run never
    leaves a half-written output behind."""
    path = check_output_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    rows = [{k: _clean(v) for k, v in r.items()} for r in rows]
    if path.name.endswith(".parquet"):
        import datasets

        datasets.Dataset.from_list(rows).to_parquet(str(tmp))
    else:
        with tmp.open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL or Parquet file written by ``write_rows``."""
    path = Path(path)
    if path.name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
