"""Shared fixtures: the small real data slices in tests/data, the embedded student, tiny models of other
architectures. The suite needs nothing beside the checkout: the full data in ``../shared/data`` is the benchmarks'."""

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
import torch
from hypothesis import settings

# Property tests draw the same cases on every run, so a CI result never depends on luck; a developer explores new
# cases with HYPOTHESIS_PROFILE=explore (cases that ever failed are pinned as @example in the tests).
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

DATA = Path(__file__).resolve().parent / "data"


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


def _train_tokenizer(texts: list[str], *, bos: bool, specials: dict[str, str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=specials.get("unk_token")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=list(specials.values()), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    if bos:  # Llama-style: BOS prepended to every text
        b = specials["bos_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{b} $A", pair=f"{b} $A {b} $B", special_tokens=[(b, tok.token_to_id(b))]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials)


ARCHS = {
    # name: (config factory, prepends BOS, special tokens); only Qwen2 has a pad token of its own
    "llama": ("LlamaConfig", True, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}),
    "mistral": ("MistralConfig", True, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}),
    "gpt2": ("GPT2Config", False, {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}),
    "qwen2": ("Qwen2Config", False, {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}),
}


@pytest.fixture(scope="session")
def tiny_models(alpaca_rows, tmp_path_factory) -> dict[str, Path]:
    import transformers

    texts = [r["instruction"] + " " + r["input"] + " " + r["output"] for r in alpaca_rows]
    folders = {}
    for name, (config_cls, bos, specials) in ARCHS.items():
        folder = tmp_path_factory.mktemp(name)
        tok = _train_tokenizer(texts, bos=bos, specials=specials)
        tok.save_pretrained(folder)
        size = (
            {"n_embd": 32, "n_layer": 2, "n_head": 2}
            if name == "gpt2"
            else {
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "num_key_value_heads": 1,
            }
        )
        ids = {
            k.replace("_token", "_token_id"): tok.convert_tokens_to_ids(v)
            for k, v in specials.items()
            if k in ("bos_token", "eos_token")
        }
        config = getattr(transformers, config_cls)(vocab_size=len(tok), **size, **ids)
        torch.manual_seed(0)
        transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
        folders[name] = folder
    return folders


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
