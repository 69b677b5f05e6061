"""``srt eval generate``: a model's answers to test sets, in the training prompt format, resumable.

The model is a base model, a base model with a PEFT adapter, or a merged folder. Prompts are rendered with the
template the student was trained with (``vicuna`` by default) and answered greedily unless a temperature is
given, as the release did: prompt and answer share ``max_length`` tokens, and an answer ends where the model starts
the template's next turn (``--max_new_tokens`` and ``--stop_at_turns false`` give this package's earlier limits).
Items are cut into fixed shards (longest prompts first, so similar lengths share a batch); each finished
shard is written before the next starts, so a killed run resumes where it stopped and ends with the same file.

Writes ``OUTPUT`` (JSONL / Parquet: ``id, test_set, instruction, input, output, generator``), the rows of the
test files that could not be read (``<stem>.rejects.jsonl``), ``<stem>.alpaca_eval.json`` (what the
``alpaca_eval`` tool reads) and ``<stem>.summary.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from srt_trainer.data import Reject, summarize_rejects
from srt_trainer.evaluation.config import GenerateArguments
from srt_trainer.evaluation.test_sets import TestSet, expand_test_set_paths, read_test_sets
from srt_trainer.generation import generate_answers
from srt_trainer.models import load_tokenizer
from srt_trainer.models.config import LoadingArguments, SRTModelConfig
from srt_trainer.models.embedded import EMBEDDED_MODEL, EMBEDDED_NAME
from srt_trainer.models.loading import load_configured_student
from srt_trainer.stage import REJECTS, SUMMARY, Stage
from srt_trainer.templates import get_template

logger = logging.getLogger(__name__)

ALPACA_EVAL = "alpaca_eval.json"  # the answers as the alpaca_eval tool reads them, beside the output
ANSWER_COLUMNS = ("id", "test_set", "instruction", "input", "output", "generator")


def default_generator_name(model: str, adapter: str | None = None) -> str:
    """``embedded`` → the embedded model's name; a folder or hub id → its last part; ``+adapter`` when one is set."""
    name = EMBEDDED_MODEL if model == EMBEDDED_NAME else Path(str(model).rstrip("/")).name
    return f"{name}+{Path(str(adapter).rstrip('/')).name}" if adapter else name


# The answer tag of each template: the released generation script decoded prompt + answer and kept the text between
# the first and the second tag, so a model that runs on into a turn of its own loses it at the tag. Templates not
# named here (chat templates) end their turns with EOS.
TURN_MARKERS = {
    "vicuna": ("ASSISTANT:",),
    "alpaca": ("Response:",),
    "wizardlm": ("Response:",),
}


def cut_at_turns(text: str, markers: Sequence[str]) -> str:
    """The answer before the first marker in it (stripped)."""
    cut = min((k for k in (text.find(m) for m in markers) if k >= 0), default=len(text))
    return text[:cut].strip()


def render_prompts(items: Sequence[dict[str, Any]], template_name: str, tokenizer: Any = None) -> list[str]:
    """The training prompt of every item."""
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


def load_answering_model(
    model_args: SRTModelConfig, loading: LoadingArguments, model: Any = None, tokenizer: Any = None
) -> tuple[Any, Any]:
    """The model that answers (``model_args``: base, adapter, dtype...) and its tokenizer, each loaded unless given."""
    tokenizer = tokenizer or load_tokenizer(
        model_args.model_name_or_path, trust_remote_code=loading.trust_remote_code, revision=model_args.revision()
    )
    model = model or load_configured_student(
        model_args, device=loading.device, trust_remote_code=loading.trust_remote_code
    )
    return model, tokenizer


class TransformersEngine:
    """Batched ``generate`` with a transformers model (and a PEFT adapter when given)."""

    def __init__(
        self,
        config: GenerateArguments,
        model_args: SRTModelConfig,
        loading: LoadingArguments,
        model: Any = None,
        tokenizer: Any = None,
    ) -> None:
        self.config = config
        self.model, self.tokenizer = load_answering_model(model_args, loading, model, tokenizer)

    def generate(self, prompts: Sequence[str], seed: int) -> list[str]:
        kwargs: dict[str, Any] = {}
        if self.config.temperature > 0:
            torch.manual_seed(seed)
            kwargs = {"do_sample": True, "temperature": self.config.temperature, "top_p": self.config.top_p}
        return generate_answers(
            self.model,
            self.tokenizer,
            prompts,
            max_new_tokens=self.config.max_new_tokens,
            max_length=self.config.max_length,
            batch_size=self.config.batch_size,
            generation_kwargs=kwargs,
            sort_by_length=True,
            progress=False,
        )


class VLLMEngine:
    """vLLM's offline engine (LoRA adapters through ``LoRARequest``)."""

    MISSING = (
        "--engine vllm needs the vllm package, which is not installed (pip install 'srt-trainer[vllm]' on a machine "
        "with a GPU), or use --engine transformers"
    )

    def __init__(self, config: GenerateArguments, model_args: SRTModelConfig, loading: LoadingArguments) -> None:
        from srt_trainer.vllm_engine import VLLMEngine as Engine
        from srt_trainer.vllm_engine import parse_vllm_options

        self.config = config
        self.engine = Engine(
            model_args.model_name_or_path,
            missing=self.MISSING,
            adapter=model_args.adapter,
            dtype=model_args.dtype,
            seed=config.seed,
            revision=model_args.revision(),
            trust_remote_code=loading.trust_remote_code,
            **parse_vllm_options(config.vllm_options, "--vllm_options"),
        )
        self.tokenizer = load_tokenizer(model_args.model_name_or_path, trust_remote_code=loading.trust_remote_code)

    def generate(self, prompts: Sequence[str], seed: int) -> list[str]:
        if self.config.max_new_tokens is not None:
            rooms = [self.config.max_new_tokens] * len(prompts)
        else:  # prompt + answer within max_length, as the transformers engine counts them
            lengths = [len(ids) for ids in self.tokenizer(list(prompts))["input_ids"]]
            rooms = [max(self.config.max_length - n, 0) for n in lengths]
        asked = [i for i, room in enumerate(rooms) if room > 0]  # vLLM wants at least one token
        texts = [""] * len(prompts)
        if asked:
            completions = self.engine.complete(
                [prompts[i] for i in asked],
                temperature=self.config.temperature,
                top_p=self.config.top_p,
                max_tokens=[rooms[i] for i in asked],
                seed=seed,
            )
            for i, c in zip(asked, completions, strict=True):
                texts[i] = c.text.strip()
        return texts


def _items_fingerprint(items: Sequence[dict[str, Any]], prompts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for it, p in zip(items, prompts, strict=True):
        h.update(json.dumps([it["test_set"], it["id"], p], ensure_ascii=False).encode())
    return h.hexdigest()


@dataclass
class GenerateRun:
    """What ``run_generate`` wrote: the answer rows (in input order), the test sets read, the summary, the output."""

    rows: list[dict[str, Any]]
    sets: list[TestSet]
    rejects: list[Reject]
    summary: dict[str, Any]
    output: Path
    first_prompt: str | None = None


def run_generate(
    config: GenerateArguments,
    model_args: SRTModelConfig,
    loading: LoadingArguments | None = None,
    model: Any = None,
    tokenizer: Any = None,
) -> GenerateRun:
    """Answer every item of ``config.test_sets`` with the student ``model_args`` describes (or ``model``) and write
    the outputs (answers, AlpacaEval file, summary, rejects), resuming from the finished shards of an earlier run
    with the same settings."""
    loading = loading or LoadingArguments()
    stage = Stage(
        config.output,
        "answers file",
        inputs={f"--test_sets {p}": p for p in expand_test_set_paths(config.test_sets)},
        side=(REJECTS, SUMMARY, ALPACA_EVAL),
    )
    with stage.guard():
        return _run_generate(config, model_args, loading, stage, model, tokenizer)


def _run_generate(
    config: GenerateArguments,
    model_args: SRTModelConfig,
    loading: LoadingArguments,
    stage: Stage,
    model: Any,
    tokenizer: Any,
) -> GenerateRun:
    sets = read_test_sets(config.test_sets, limit=config.limit, offset=config.offset)
    items = [it for s in sets for it in s.items]
    rejects = [r for s in sets for r in s.rejects]
    stage.reject(rejects, len(items), ", ".join(s.source for s in sets), "no usable test item")
    for s in sets:
        logger.info("%s: %d rows, %d items (%s)", s.source, s.num_rows_read, len(s.items), s.name)
    if rejects:
        logger.warning(summarize_rejects(rejects))
    generator = config.generator or default_generator_name(model_args.model_name_or_path, model_args.adapter)

    engine: TransformersEngine | VLLMEngine = (
        VLLMEngine(config, model_args, loading)
        if config.engine == "vllm"
        else TransformersEngine(config, model_args, loading, model, tokenizer)
    )
    prompts = render_prompts(items, model_args.template, engine.tokenizer)
    markers = TURN_MARKERS.get(model_args.template, ())
    if prompts:
        logger.debug("template %s; first prompt:\n%s", model_args.template, prompts[0])
    # Longest prompts first: shards (and the batches inside) hold similar lengths; fixed, so a resume matches.
    order = sorted(range(len(items)), key=lambda i: (-len(prompts[i]), i))
    store = stage.shards("gen")
    if config.overwrite:
        store.clear()
    manifest = {
        "settings": config.fingerprint_settings(model_args),
        "shard_size": config.shard_size,
        "num_items": len(items),
        "items": _items_fingerprint(items, prompts),
    }
    plan = store.resume(manifest, len(order), config.shard_size, "generated")

    def answer(k: int, s: int, e: int) -> list[dict[str, Any]]:
        idx = order[s:e]
        texts = engine.generate([prompts[i] for i in idx], seed=config.seed + k)
        if config.stop_at_turns:
            texts = [cut_at_turns(t, markers) for t in texts]
        return [{"index": i, "output": t} for i, t in zip(idx, texts, strict=True)]

    start = time.perf_counter()
    bar = tqdm(total=len(items), initial=plan.rows_done, desc=f"Answering ({generator})", unit="item")
    new = []
    for k, answered in store.run(plan, plan.todo, answer):
        new.append((k, answered))
        bar.update(len(answered))
    bar.close()
    seconds = time.perf_counter() - start
    outputs = {r["index"]: r["output"] for r in store.collect(plan, new, "generated")}

    rows = [
        {**{c: it[c] for c in ANSWER_COLUMNS[:4]}, "output": outputs[i], "generator": generator}
        for i, it in enumerate(items)
    ]
    output = stage.write(rows)
    if config.alpaca_eval:
        stage.write_side(ALPACA_EVAL, alpaca_eval_records(rows))
    per_set = Counter(r["test_set"] for r in rows)
    summary = {
        "generator": generator,
        "items": len(rows),
        "per_test_set": {s.name: per_set.get(s.name, 0) for s in sets},
        "rejected_rows": len(rejects),
        "empty_outputs": sum(1 for r in rows if not r["output"]),
        "generated_now": len(items) - plan.rows_done,
        "seconds": round(seconds, 3),
        "config": {"generate": asdict(config), "student": asdict(model_args)},
    }
    stage.write_summary(summary)
    return GenerateRun(rows, sets, rejects, summary, output, prompts[0] if prompts else None)
