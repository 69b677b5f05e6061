"""``srt eval generate``: a model's answers to test sets, in the training prompt format, resumable.

The model is a base model, a base model with a PEFT adapter, or a merged folder. Prompts are rendered with the
template the student was trained with (``vicuna`` by default) and answered greedily unless a temperature is
given. Items are cut into fixed shards (longest prompts first, so similar lengths share a batch); each finished
shard is written before the next starts, so a killed run resumes where it stopped and ends with the same file.

Writes ``OUTPUT`` (JSONL / Parquet: ``id, test_set, instruction, input, output, generator``), the rows of the
test files that could not be read (``<stem>.rejects.jsonl``), ``<stem>.alpaca_eval.json`` (what the
``alpaca_eval`` tool reads) and ``<stem>.summary.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

ANSWER_COLUMNS = ("id", "test_set", "instruction", "input", "output", "generator")


@dataclass
class GenerateConfig:
    """Options of ``srt eval generate`` (YAML via ``--config``; every field also a flag)."""

    test_sets: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Test-set files (JSON, JSONL, Parquet with an instruction / prompt / text field) or "
            "folders of them, e.g. ../shared/data/eval."
        },
    )
    output: str = field(default=None, metadata={"help": "Answers file, .jsonl or .parquet."})
    model: str = field(default="embedded", metadata={"help": "Base or merged model: 'embedded', a folder or a hub id."})
    adapter: str | None = field(default=None, metadata={"help": "A PEFT (LoRA) adapter folder applied on `model`."})
    generator: str | None = field(
        default=None,
        metadata={"help": "Name of this model in the outputs (default: from the model and adapter names)."},
    )
    template: str = field(
        default="vicuna",
        metadata={
            "help": "Prompt format the model was trained with.",
            "choices": ["vicuna", "alpaca", "wizardlm", "chat"],
        },
    )
    engine: str = field(
        default="transformers",
        metadata={
            "help": "transformers (batched generate) or vllm (needs the vllm package).",
            "choices": ["transformers", "vllm"],
        },
    )
    max_new_tokens: int = field(default=1024, metadata={"help": "Length limit of an answer, in tokens."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per generate call (transformers engine)."})
    temperature: float = field(default=0.0, metadata={"help": "0 is greedy (the paper's setting); above 0 samples."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass when sampling."})
    seed: int = field(default=0, metadata={"help": "Seed of sampling (each shard seeds seed + its index)."})
    dtype: str = field(
        default="float32", metadata={"help": "Weights' dtype.", "choices": ["float32", "bfloat16", "float16"]}
    )
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:N or auto (default: CUDA if any)."})
    limit: int | None = field(default=None, metadata={"help": "Answer only the first N items of each test set."})
    shard_size: int = field(default=64, metadata={"help": "Items per checkpointed shard (the unit of resume)."})
    alpaca_eval: bool = field(default=True, metadata={"help": "Also write <stem>.alpaca_eval.json for alpaca_eval."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the model's folder."})
    overwrite: bool = field(default=False, metadata={"help": "Discard finished shards of an earlier run."})

    def fingerprint_settings(self) -> dict[str, Any]:
        """What changes the answers: a resumed run must match these."""
        keys = (
            "model",
            "adapter",
            "template",
            "engine",
            "max_new_tokens",
            "batch_size",
            "temperature",
            "top_p",
            "seed",
            "dtype",
        )
        return {k: getattr(self, k) for k in keys}


def default_generator_name(model: str, adapter: str | None = None) -> str:
    """``embedded`` → the embedded model's name; a folder or hub id → its last part; ``+adapter`` when one is set."""
    from srt_trainer.models.embedded import EMBEDDED_MODEL, EMBEDDED_NAME

    name = EMBEDDED_MODEL if model == EMBEDDED_NAME else Path(str(model).rstrip("/")).name
    return f"{name}+{Path(str(adapter).rstrip('/')).name}" if adapter else name


def render_prompts(items: Sequence[dict[str, Any]], template_name: str, tokenizer: Any = None) -> list[str]:
    """The training prompt of every item."""
    from srt_trainer.templates import get_template

    template = get_template(template_name, tokenizer)
    return [template.prompt(it["instruction"], it["input"]) for it in items]


def alpaca_eval_records(rows: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """AlpacaEval's model-output format; an item's input follows its instruction after a blank line."""
    return [
        {
            "instruction": r["instruction"] + (f"\n\n{r['input']}" if r["input"] else ""),
            "output": r["output"],
            "generator": r["generator"],
            "dataset": r["test_set"],
        }
        for r in rows
    ]


class TransformersEngine:
    """Batched ``generate`` with a transformers model (and a PEFT adapter when given)."""

    def __init__(self, config: GenerateConfig, model: Any = None, tokenizer: Any = None) -> None:
        from srt_trainer.models import load_student, load_tokenizer

        self.config = config
        self.tokenizer = tokenizer or load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
        self.model = model or load_student(
            config.model,
            dtype=config.dtype,
            device=config.device,
            adapter=config.adapter,
            trust_remote_code=config.trust_remote_code,
        )

    def generate(self, prompts: Sequence[str], seed: int) -> list[str]:
        import torch

        from srt_trainer.generation import generate_answers

        kwargs: dict[str, Any] = {}
        if self.config.temperature > 0:
            torch.manual_seed(seed)
            kwargs = {"do_sample": True, "temperature": self.config.temperature, "top_p": self.config.top_p}
        return generate_answers(
            self.model,
            self.tokenizer,
            prompts,
            max_new_tokens=self.config.max_new_tokens,
            batch_size=self.config.batch_size,
            generation_kwargs=kwargs,
            sort_by_length=True,
            progress=False,
        )


class VLLMEngine:
    """vLLM's offline engine (LoRA adapters through ``LoRARequest``)."""

    def __init__(self, config: GenerateConfig) -> None:
        try:
            from vllm import LLM
        except ImportError as e:
            raise SystemExit(
                "srt eval generate: --engine vllm needs the vllm package, which is not installed "
                "(pip install 'srt-trainer[vllm]' on a machine with a GPU), or use --engine transformers"
            ) from e
        from srt_trainer.models import load_tokenizer, resolve_model_path

        self.config = config
        self.tokenizer = load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
        options: dict[str, Any] = {
            "dtype": config.dtype,
            "seed": config.seed,
            "trust_remote_code": config.trust_remote_code,
        }
        if config.adapter:
            rank = json.loads((Path(config.adapter) / "adapter_config.json").read_text()).get("r", 16)
            options.update(enable_lora=True, max_lora_rank=next(r for r in (8, 16, 32, 64, 128, 256, 512) if r >= rank))
        self.llm = LLM(model=resolve_model_path(config.model), **options)

    def generate(self, prompts: Sequence[str], seed: int) -> list[str]:
        from vllm import SamplingParams

        params = SamplingParams(
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            max_tokens=self.config.max_new_tokens,
            seed=seed,
        )
        lora = None
        if self.config.adapter:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest("adapter", 1, str(self.config.adapter))
        outputs = self.llm.generate(list(prompts), params, lora_request=lora, use_tqdm=False)
        return [o.outputs[0].text.strip() for o in outputs]


def _items_fingerprint(items: Sequence[dict[str, Any]], prompts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for it, p in zip(items, prompts, strict=True):
        h.update(json.dumps([it["test_set"], it["id"], p], ensure_ascii=False).encode())
    return h.hexdigest()


def run_generate(config: GenerateConfig, model: Any = None, tokenizer: Any = None) -> list[dict[str, Any]]:
    """Answer every item of ``config.test_sets`` and write the outputs; returns the answer rows in input order."""
    from srt_trainer.data import summarize_rejects, write_rejects
    from srt_trainer.data.rejects import rejects_path_for
    from srt_trainer.evaluation.test_sets import read_test_sets
    from srt_trainer.io import check_output_path, sidecar_path, write_rows
    from srt_trainer.scoring.runner import check_manifest, read_shard, shard_bounds, write_shard

    if not config.test_sets or not config.output:
        raise SystemExit("srt eval generate: --test_sets and --output are required")
    output = check_output_path(config.output)
    sets = read_test_sets(config.test_sets, limit=config.limit)
    items = [it for s in sets for it in s.items]
    rejects = [r for s in sets for r in s.rejects]
    write_rejects(rejects, rejects_path_for(output))
    for s in sets:
        print(f"{s.source}: {s.num_rows_read} rows, {len(s.items)} items ({s.name})")
    if rejects:
        print(summarize_rejects(rejects))
    generator = config.generator or default_generator_name(config.model, config.adapter)

    engine: TransformersEngine | VLLMEngine = (
        VLLMEngine(config) if config.engine == "vllm" else TransformersEngine(config, model, tokenizer)
    )
    prompts = render_prompts(items, config.template, engine.tokenizer)
    if prompts:
        print(f"template {config.template}; first prompt:\n{prompts[0]}\n")
    # Longest prompts first: shards (and the batches inside) hold similar lengths; fixed, so a resume matches.
    order = sorted(range(len(items)), key=lambda i: (-len(prompts[i]), i))
    work_dir = sidecar_path(output, "gen-shards")
    if config.overwrite:
        shutil.rmtree(work_dir, ignore_errors=True)
    manifest = {
        "settings": config.fingerprint_settings(),
        "shard_size": config.shard_size,
        "num_items": len(items),
        "items": _items_fingerprint(items, prompts),
    }
    check_manifest(work_dir, manifest, is_main=True)
    bounds = shard_bounds(len(order), config.shard_size)
    shard_path = [work_dir / f"shard-{k:06d}.jsonl" for k in range(len(bounds))]
    done = [k for k in range(len(bounds)) if shard_path[k].exists()]
    if done:
        logger.info("resuming: %d of %d shards already generated in %s", len(done), len(bounds), work_dir)
    outputs: dict[int, str] = {}
    for k in done:
        outputs.update((r["index"], r["output"]) for r in read_shard(shard_path[k]))
    start = time.perf_counter()
    bar = tqdm(total=len(items), initial=len(outputs), desc=f"Answering ({generator})", unit="item")
    for k, (s, e) in enumerate(bounds):
        if k in done:
            continue
        idx = order[s:e]
        texts = engine.generate([prompts[i] for i in idx], seed=config.seed + k)
        write_shard(shard_path[k], [{"index": i, "output": t} for i, t in zip(idx, texts, strict=True)])
        outputs.update(zip(idx, texts, strict=True))
        bar.update(len(idx))
    bar.close()
    seconds = time.perf_counter() - start

    rows = [
        {**{c: it[c] for c in ANSWER_COLUMNS[:4]}, "output": outputs[i], "generator": generator}
        for i, it in enumerate(items)
    ]
    write_rows(rows, output)
    if config.alpaca_eval:
        alpaca = sidecar_path(output, "alpaca_eval.json")
        alpaca.write_text(json.dumps(alpaca_eval_records(rows), ensure_ascii=False, indent=1))
    per_set = Counter(r["test_set"] for r in rows)
    summary = {
        "generator": generator,
        "items": len(rows),
        "per_test_set": {s.name: per_set.get(s.name, 0) for s in sets},
        "rejected_rows": len(rejects),
        "empty_outputs": sum(1 for r in rows if not r["output"]),
        "generated_now": len(items) - sum(e - s for k, (s, e) in enumerate(bounds) if k in done),
        "seconds": round(seconds, 3),
        "config": asdict(config),
    }
    sidecar_path(output, "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {output} ({len(rows)} answers by {generator}; {summary['empty_outputs']} empty) in {seconds:.1f} s")
    return rows
