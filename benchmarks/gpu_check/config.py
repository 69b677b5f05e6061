"""What the check runs: its steps, their order and time limits, and how much work each does (GPU or dry run)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
ALPACA = "cherry_alpaca_5_percent.json"
COMPRESSED = "cherry_alpaca_5_percent_compressed.json"  # the release's rewrites: the Q variant's instructions
EVAL_SET = "vicuna_test_set.jsonl"
LLAMA2_VOCAB = 32000

# ZeRO-3 with resume (two launches, with checkpoints) is the longest: it goes last, so a slow disk cannot cost the
# other steps their numbers.
STEPS = ("prepare", "scoring_small", "scoring_7b", "train_lora", "eval", "train_qlora", "train_zero3", "scoring_vllm")
# Measured peers rather than the package's paths, needing packages the GPU machine lacks (vLLM): last, in the time
# the deadline leaves; without their package they record why and take a second.
PEERS = ("scoring_vllm",)

# Llama-shaped students built with random weights on the GPU machine (no hub there), all with a 32k vocabulary as
# Llama-2: the 7B body is Llama-2-7B's, the 1B one TinyLlama-1.1B's (grouped-query attention), the small one the
# embedded student's (SmolLM2-135M).
SHAPES: Mapping[str, Mapping[str, int]] = MappingProxyType(
    {
        "llama2-7b": MappingProxyType(
            {
                "hidden_size": 4096,
                "intermediate_size": 11008,
                "num_hidden_layers": 32,
                "num_attention_heads": 32,
                "num_key_value_heads": 32,
            }
        ),
        "llama-1b": MappingProxyType(
            {
                "hidden_size": 2048,
                "intermediate_size": 5632,
                "num_hidden_layers": 22,
                "num_attention_heads": 32,
                "num_key_value_heads": 4,
            }
        ),
        "smollm2-135m": MappingProxyType(
            {
                "hidden_size": 576,
                "intermediate_size": 1536,
                "num_hidden_layers": 30,
                "num_attention_heads": 9,
                "num_key_value_heads": 3,
            }
        ),
        "tiny": MappingProxyType(
            {
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
            }
        ),
    }
)


@dataclass(frozen=True)
class Sizes:
    """How much work each step does, and how long it may take: the GPU check's, or the dry run's."""

    # scoring: the release loop and the scorer on the small student (in bf16: the engines timed, the headline one
    # first), the engines in fp32; which rows (the first, or the shortest), and those scored to warm up
    loop_rows: int
    scorer_rows: int
    timed_engines: int
    fp32_rows: int
    shortest_rows: bool
    warmup_rows: int
    # scoring_7b
    rows_7b: int
    padded_rows_7b: int
    flex_rows_7b: int  # the packed engine under flex attention, on the first of the same rows
    profile_rows_7b: int  # the default engine under torch.profiler, on the first of the same rows
    flex_recompiles: int | None  # dynamo's recompile limit while flex is measured (None: torch's own, 8)
    shape_7b: str
    matmul_n: int
    matmul_reps: int
    # training: LoRA / QLoRA (and eval) on the 1B student, ZeRO-3 score → select → train → resume on another
    shape_1b: str
    adapter_steps: int
    adapter_per_device: int
    adapter_global: int
    shape_zero3: str
    zero3_rows: int
    zero3_steps: int
    zero3_save: int
    zero3_per_device: int
    zero3_global: int
    zero3_processes: int
    zero3_shard_size: int
    zero3_token_budget: int
    max_length: int | None  # None: the recipe's (the paper's 2048)
    eval_items: int
    eval_new_tokens: int
    # time: each step's limit (None: no per-step limit, the deadline alone) and the whole check's deadline
    limits: Mapping[str, int] | None
    deadline_s: int

    def limit(self, step: str) -> float:
        """The step's own time limit in seconds (infinite where there is none)."""
        return float("inf") if self.limits is None else float(self.limits[step])

    def as_dict(self) -> dict[str, Any]:
        """The sizes, for the report."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["limits"] = dict(self.limits) if self.limits is not None else None
        return out


# One H200, ~5 minutes in all so that a rerun fits in the session's device time. The first GPU run (2026-11-26,
# benchmarks/gpu_report.json) sized them: prepare took 15 s; the 7B scorer 41 s on 2,000 rows (packed) and 7 s on
# 200 (padded); LoRA / QLoRA 42-44 s for three steps of global batch 128 (4.3-5.0 s a step, ~25 s of start-up);
# scoring_small, eval (32 answers × 128 tokens) and ZeRO-3 (10 steps of the 1.1B student, three ~15 GB checkpoints)
# hit their limits. So: fewer rows, global batch 16 for the adapters, 16 answers × 64 tokens, and ZeRO-3 on the
# embedded student's shape (2.3 GB checkpoints) with 4 steps. The 7B step then gained the packed engine under flex
# attention (its first forwards compile) on the same 600 rows as the packed one under sdpa.
GPU = Sizes(
    loop_rows=50,
    scorer_rows=500,
    timed_engines=2,
    fp32_rows=100,
    shortest_rows=False,
    warmup_rows=8,
    rows_7b=600,
    padded_rows_7b=100,
    flex_rows_7b=600,
    profile_rows_7b=100,
    flex_recompiles=None,
    shape_7b="llama2-7b",
    matmul_n=8192,
    matmul_reps=20,
    shape_1b="llama-1b",
    adapter_steps=3,
    adapter_per_device=8,
    adapter_global=16,
    shape_zero3="smollm2-135m",
    zero3_rows=64,
    zero3_steps=4,
    zero3_save=2,
    zero3_per_device=8,
    zero3_global=16,
    zero3_processes=1,
    zero3_shard_size=16,
    zero3_token_budget=32768,
    max_length=None,
    eval_items=16,
    eval_new_tokens=64,
    limits=MappingProxyType(
        {
            "prepare": 20,
            "scoring_small": 40,
            "scoring_7b": 60,
            "train_lora": 35,
            "eval": 30,
            "train_qlora": 35,
            "train_zero3": 80,
            "scoring_vllm": 60,
        }
    ),
    deadline_s=300,  # the sum of the limits but the peers'; the wheels install before it (~15 s)
)
# The dry run checks behaviour, not speed: no step limit (a loaded 2-core CPU is slow and varies), only the deadline
# as a safety net. Every step runs its real code path once, on as little as shows it: ZeRO-3 on two processes,
# so scoring is shared between ranks.
DRY = Sizes(
    loop_rows=1,
    scorer_rows=6,
    timed_engines=1,  # the other engine runs in fp32
    fp32_rows=6,
    shortest_rows=True,  # bf16 on a CPU runs its products in fp32 on bf16 values: ~100 tokens/s on a busy core
    warmup_rows=0,
    rows_7b=2,
    padded_rows_7b=2,
    flex_rows_7b=1,
    profile_rows_7b=2,
    # on a CPU, inductor cannot compile flex for dynamic shapes: each new shape recompiles (seconds each) until the
    # limit, then runs the unfused kernel, with the same results; one compile shows the path
    flex_recompiles=1,
    shape_7b="tiny",
    matmul_n=256,
    matmul_reps=2,
    shape_1b="tiny",
    adapter_steps=2,
    adapter_per_device=1,
    adapter_global=2,
    shape_zero3="tiny",
    zero3_rows=6,  # 3 shards a variant: the two ranks score unevenly (2 and 1), as they often do
    zero3_steps=4,
    zero3_save=2,
    zero3_per_device=1,
    zero3_global=4,
    zero3_processes=2,
    zero3_shard_size=2,
    zero3_token_budget=4096,
    max_length=128,
    eval_items=2,
    eval_new_tokens=8,
    limits=None,
    deadline_s=1500,
)
