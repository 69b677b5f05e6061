"""Students and local teachers: the embedded default and any Hugging Face causal LM."""

from srt_trainer.models.embedded import EMBEDDED_NAME, EmbeddedModelError, ensure_embedded_model, find_embedded_gguf
from srt_trainer.models.loading import ensure_pad_token, load_student, load_tokenizer, resolve_model_path

__all__ = [
    "EMBEDDED_NAME",
    "EmbeddedModelError",
    "ensure_embedded_model",
    "ensure_pad_token",
    "find_embedded_gguf",
    "load_student",
    "load_tokenizer",
    "resolve_model_path",
]
