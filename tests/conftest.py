"""Shared fixtures: the real data beside the checkout, the embedded student, tiny models of other architectures."""

from __future__ import annotations

import os
from pathlib import Path

# Tests never reach a model or dataset hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SRT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data that sits beside the checkout (``../shared/data``); CI always has it."""
    if not (SHARED_DATA / "cherry_alpaca_5_percent.json").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA} (set SRT_SHARED_DATA to point at it)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def alpaca_rows(shared_data: Path) -> list[dict]:
    import json

    return json.loads((shared_data / "cherry_alpaca_5_percent.json").read_text())


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    from srt_trainer.models import ensure_embedded_model

    return ensure_embedded_model()


@pytest.fixture(scope="session")
def embedded_tokenizer(embedded_dir: Path):
    from srt_trainer.models import load_tokenizer

    return load_tokenizer(embedded_dir)


@pytest.fixture(scope="session")
def embedded_model(embedded_dir: Path):
    from srt_trainer.models import load_student

    return load_student(embedded_dir, dtype="float32", device="cpu")
