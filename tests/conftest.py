"""Shared fixtures: the small real data slices in tests/data, the embedded student, tiny models of other
architectures (built by ``srt_trainer.models.tiny``, as the benchmarks' and the GPU check's are). The suite needs
nothing beside the checkout: the full data in ``../shared/data`` is the benchmarks'."""

from __future__ import annotations

import os
from pathlib import Path

# Tests never reach a model or dataset hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (`make test` runs two workers) each worker gets its share of the cores, set before torch loads
# (and inherited by the processes a test launches): two workers of two threads each on two cores spin against each
# other.
if workers := os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(workers))))

import pytest
from hypothesis import settings

# Property tests draw the same cases on every run, so a CI result never depends on luck; a developer explores new
# cases with HYPOTHESIS_PROFILE=explore (cases that ever failed are pinned as @example in the tests).
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

DATA = Path(__file__).resolve().parent / "data"


def every_command() -> list[str]:
    """Every command of ``srt``, as typed after it (``score``, ``eval judge``, ...), read from the CLI's own tables so
    a new stage is checked without editing a list."""
    from srt_trainer.cli import STAGES
    from srt_trainer.evaluation.cli import COMMANDS

    return [*(s for s in STAGES if s != "eval"), *(f"eval {c}" for c in COMMANDS)]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``vllm`` need the real vLLM, which lives in an environment of its own (it pins other torch and
    transformers versions): skipped here when it is absent; `make test` runs them there."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        return
    skip = pytest.mark.skip(reason="vLLM is not installed in this environment (`make test` runs these in .venv-vllm)")
    for item in items:
        if "vllm" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data slices the tests read (``tests/data``, described in its README)."""
    return DATA


@pytest.fixture(scope="session")
def alpaca_rows(data_dir: Path) -> list[dict]:
    """247 real Alpaca rows: rows 0-223 of the Cherry 5% file, then 23 later rows that tests pick by a property."""
    import json

    return json.loads((data_dir / "alpaca_slice.json").read_text())


@pytest.fixture(scope="session")
def short_rows(alpaca_rows: list[dict]) -> list[dict]:
    """The real Alpaca rows short enough to score in moments (instruction, input and output only)."""
    return [
        {k: r[k] for k in ("instruction", "input", "output")}
        for r in alpaca_rows
        if 25 <= len(r["output"].strip()) <= 120 and len(r["instruction"]) + len(r["input"]) <= 90
    ]


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


@pytest.fixture(scope="session")
def tiny_models(alpaca_rows, tmp_path_factory) -> dict[str, Path]:
    """Tiny random students of four families (``srt_trainer.models.tiny.ARCHITECTURES``), each with a tokenizer
    trained on the real rows, saved as folders any stage loads."""
    from srt_trainer.models.tiny import ARCHITECTURES, save_tiny_student

    texts = [r["instruction"] + " " + r["input"] + " " + r["output"] for r in alpaca_rows]
    return {name: save_tiny_student(tmp_path_factory.mktemp(name), texts, name) for name in ARCHITECTURES}


@pytest.fixture
def soft_capped_gemma2(tiny_models):
    """A tiny Gemma-2 over the tiny Llama's tokenizer, and that tokenizer: Gemma-2 soft-caps its logits
    (``final_logit_softcapping``), which the scorer's fast path over the output layer does not reproduce."""
    from srt_trainer.models import load_tokenizer
    from srt_trainer.models.tiny import random_causal_lm

    tokenizer = load_tokenizer(tiny_models["llama"])
    model = random_causal_lm(tokenizer, "gemma2", head_dim=16, final_logit_softcapping=0.5, sliding_window=4096)
    return model, tokenizer


@pytest.fixture(scope="session")
def teacher_server(embedded_dir: Path, tmp_path_factory):
    """Yields ``http://127.0.0.1:PORT/v1`` of a real ``transformers serve`` with the embedded model (CPU), started
    once per session and stopped at its end. Requests must name the model as ``str(embedded_dir)``."""
    from tests.serving import start_transformers_serve

    server = start_transformers_serve(embedded_dir, tmp_path_factory.mktemp("teacher_server") / "serve.log")
    try:
        yield server.base_url
    finally:
        server.stop()
