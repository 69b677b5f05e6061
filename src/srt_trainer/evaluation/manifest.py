"""How a number was obtained, written beside it: ``<stem>.manifest.json``.

Published evaluation numbers are hard to reproduce when the script, the shot count, the judge or a package version
is unknown. Every evaluation runner here writes a small manifest next to its result (the package versions, the
judge's model and endpoint host, sha256 of the prompt and question files, seeds, shots, the date), and
``srt eval report`` gathers them. A manifest never holds an API key or a full endpoint URL: only its host.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from srt_trainer.io import sidecar_path, write_json

if TYPE_CHECKING:
    from srt_trainer.teachers import TeacherArguments

MANIFEST = "manifest.json"
# what every manifest names; a runner adds the packages it ran (lm-eval, alpaca-eval)
BASE_PACKAGES = ("srt-trainer", "torch", "transformers", "peft", "datasets", "openai")


def manifest_path(result: str | Path) -> Path:
    """``<stem>.manifest.json`` beside a result file."""
    return sidecar_path(result, MANIFEST)


def package_versions(names: Iterable[str]) -> dict[str, str | None]:
    """Installed version of each distribution (None when it is not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_entry(path: str | Path | None) -> dict[str, Any] | None:
    """A file as a manifest names it: its path and sha256 (None for no file; a folder is named without a hash)."""
    if path is None:
        return None
    p = Path(path)
    if p.is_file():
        return {"path": str(path), "sha256": file_sha256(p)}
    return {"path": str(path), "sha256": None}


def endpoint_host(url: str | None) -> str | None:
    """``host[:port]`` of an endpoint URL, never its credentials, path or query (None for no URL); several URLs
    separated by commas (replicas) give their hosts the same way."""
    if not url:
        return None
    hosts = []
    for part in url.split(","):
        parsed = urlparse(part.strip())
        host = parsed.hostname or ""
        hosts.append(f"{host}:{parsed.port}" if parsed.port else host)
    return ",".join(hosts)


def judge_entry(judge: TeacherArguments, name: str | None = None) -> dict[str, Any]:
    """A judge as a manifest names it: the teacher kind, the model asked for, the name the run's files give it
    (``name``), the endpoint host (never the key or the URL's path) and how it was asked (sampling, re-asks)."""
    sampling = judge.sampling()
    return {
        "teacher": judge.teacher,
        "model": judge.teacher_model or name,
        "name": name or judge.teacher_model,
        "host": endpoint_host(judge.base_url) if judge.teacher == "openai" else None,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
        "seed": sampling.seed,
        "max_reasks": judge.max_reasks,
        "reask_temperature": judge.reask_temperature,
        "batch_api": judge.teacher_batch,
    }


# what a generate summary says about how its answers were made
_GENERATION_KEYS = ("template", "seed", "temperature", "top_p", "max_new_tokens", "max_length", "stop_at_turns")


def answers_entry(path: str | Path) -> dict[str, Any] | None:
    """An answer file as a manifest names it: its path and sha256, and how ``srt eval generate`` made it (model,
    adapter, template, seed, limits) when its ``<stem>.summary.json`` is beside it."""
    entry = file_entry(path)
    summary_file = sidecar_path(path, "summary.json")
    if entry is None or not summary_file.is_file():
        return entry
    try:
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
        config = summary["config"]
        settings = {**config["generate"], **config["student"]}
    except (ValueError, KeyError, TypeError):
        return entry  # not a generate summary: the hash alone says which file it was
    generation = {"generator": summary.get("generator"), "model": settings.get("model_name_or_path")}
    generation |= {"adapter": settings.get("adapter")} | {k: settings.get(k) for k in _GENERATION_KEYS}
    return {**entry, "summary_sha256": file_sha256(summary_file), "generation": generation}


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def build_manifest(kind: str, packages: Iterable[str] = (), **fields: Any) -> dict[str, Any]:
    """The manifest of one evaluation: its kind (``alpacaeval``, ``harness``...), the date, the Python and the
    package versions, then the runner's own ``fields`` (settings, judge, files with their sha256)."""
    return {
        "kind": kind,
        "date": utc_now(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions([*BASE_PACKAGES, *packages]),
        **fields,
    }


def write_manifest(result: str | Path, manifest: Mapping[str, Any]) -> Path:
    """Write ``manifest`` beside ``result``; returns its path."""
    return write_json(dict(manifest), manifest_path(result), default=str)
