"""Files the package carries, addressable by short names in configs (``data: demo``)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

BUILTIN_DATA = {
    "demo": "demo_instructions.jsonl",
    "demo-held-out": "demo_held_out.jsonl",
}


def resolve_data(name_or_path: str) -> str:
    """A built-in data set's file path for its short name; any other string is returned unchanged."""
    if name_or_path in BUILTIN_DATA:
        return str(Path(str(files("srt_trainer") / "resources" / BUILTIN_DATA[name_or_path])))
    return name_or_path
