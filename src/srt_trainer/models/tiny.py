"""Tiny students with random weights, built in moments, for the tests, the benchmarks and the GPU check: a byte-level
BPE tokenizer trained on a few texts, and a causal LM of any architecture transformers knows, seeded so that the
same arguments give the same weights."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# two layers, 32 wide, grouped-query attention: every code path of a real student, at a size a CPU runs at once
TINY_SHAPE: Mapping[str, int] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
}
LLAMA_SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


@dataclass(frozen=True)
class TinyArchitecture:
    """How a family's tokenizer marks text (its special tokens, whether it prepends BOS) and its tiny shape."""

    specials: Mapping[str, str]
    prepends_bos: bool
    shape: Mapping[str, int] = field(default_factory=lambda: TINY_SHAPE)


# the families the tests cover, by transformers' model type; only Qwen2 has a pad token of its own
ARCHITECTURES: Mapping[str, TinyArchitecture] = {
    "llama": TinyArchitecture(LLAMA_SPECIALS, prepends_bos=True),
    "mistral": TinyArchitecture(LLAMA_SPECIALS, prepends_bos=True),
    "gpt2": TinyArchitecture(
        {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"},
        prepends_bos=False,
        shape={"n_embd": 32, "n_layer": 2, "n_head": 2},
    ),
    "qwen2": TinyArchitecture({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, prepends_bos=False),
}


def train_tokenizer(
    texts: Iterable[str], specials: Mapping[str, str], prepends_bos: bool = False, vocab_size: int = 600
) -> Any:
    """A byte-level BPE tokenizer of ``vocab_size`` tokens trained on ``texts``, with ``specials`` (``bos_token``,
    ``eos_token``, ``unk_token``, ``pad_token``); ``prepends_bos``: BOS before every text, as Llama's does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=specials.get("unk_token")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    if prepends_bos:
        b = specials["bos_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{b} $A", pair=f"{b} $A {b} $B", special_tokens=[(b, tok.token_to_id(b))]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials)


def random_causal_lm(
    tokenizer: Any,
    model_type: str = "llama",
    shape: Mapping[str, int] = TINY_SHAPE,
    *,
    dtype: Any = None,
    device: str | None = None,
    attn_implementation: str | None = None,
    seed: int = 0,
    **config: Any,
) -> Any:
    """A causal LM of ``model_type`` (``llama``, ``gemma2``, ...) and ``shape`` with random weights (``seed``), built
    directly on ``device`` in ``dtype``, in eval mode: the vocabulary and the BOS / EOS / pad ids are
    ``tokenizer``'s (where it has them); ``config`` sets any other field of the model's config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    ids = {f"{t}_token_id": getattr(tokenizer, f"{t}_token_id") for t in ("bos", "eos", "pad")}
    settings = {k: v for k, v in ids.items() if v is not None} | dict(shape) | config
    model_config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), **settings)
    options = {k: v for k, v in (("dtype", dtype), ("attn_implementation", attn_implementation)) if v is not None}
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        model = AutoModelForCausalLM.from_config(model_config, **options)
    return model.eval()


def save_tiny_student(
    folder: str | Path,
    texts: Iterable[str],
    model_type: str = "llama",
    *,
    vocab_size: int = 600,
    specials: Mapping[str, str] | None = None,
    prepends_bos: bool | None = None,
    shape: Mapping[str, int] | None = None,
    **config: Any,
) -> Path:
    """A tokenizer trained on ``texts`` and a random ``model_type`` student over it, saved in ``folder`` as any
    student is (``load_student`` / ``--model_name_or_path`` take it). Unless given, the special tokens, BOS and the
    shape are those of ``ARCHITECTURES[model_type]``."""
    family = ARCHITECTURES.get(model_type, ARCHITECTURES["llama"])
    tokenizer = train_tokenizer(
        texts,
        family.specials if specials is None else specials,
        family.prepends_bos if prepends_bos is None else prepends_bos,
        vocab_size,
    )
    tokenizer.save_pretrained(folder)
    random_causal_lm(tokenizer, model_type, family.shape if shape is None else shape, **config).save_pretrained(folder)
    return Path(folder)
