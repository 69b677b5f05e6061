"""The real vLLM (its CPU build) for the tests marked ``vllm``: the engine settings a 2-core CPU needs, its OpenAI
server started as the tests' teacher, and its batch runner.

The embedded student runs in float32 (vLLM would pick bfloat16 on a CPU with bf16 kernels; the tests compare texts
with transformers), eager (no ~60 s compile), with a 1 GiB KV cache (by default vLLM reserves 92% of the machine's
memory on a CPU and refuses to start where other processes hold some). The ``vllm`` command of the CPU package looks
for metadata named ``vllm`` and fails, so the servers run as ``python -m``, as the docs tell users.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tests.serving import ServeProcess, _tail, free_port


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL a vLLM process and everything it started: the engine core and its worker are children in the same
    process group, which a kill of the parent alone would leave running (holding their memory)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def stop_all(servers: Sequence[ServeProcess]) -> None:
    """Stop each server (SIGTERM, its engine shutting down) and then make sure nothing of it is left."""
    for server in servers:
        server.stop()
        kill_group(server.process)


KV_CACHE_BYTES = 1 << 30
# vllm.LLM arguments of the in-process engine (dtype is each command's own option)
CPU_ENGINE = {"enforce_eager": True, "kv_cache_memory_bytes": KV_CACHE_BYTES}
# the same settings as flags of the server and the batch runner
CPU_FLAGS = ["--dtype", "float32", "--enforce-eager", "--kv-cache-memory-bytes", str(KV_CACHE_BYTES)]


def vllm_env() -> dict[str, str]:
    """The environment of a vLLM process: offline, and quiet unless something goes wrong."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}


def start_vllm_servers(model_dir: str | Path, logs: Sequence[Path], timeout: float = 900.0) -> list[ServeProcess]:
    """One ``vllm.entrypoints.openai.api_server`` per log file, started together on free loopback ports; returns
    once every one answers ``/health`` (requests name the model ``str(model_dir)``). Raises with a server's log tail
    when it exits or does not come up in ``timeout`` seconds (stopping the others)."""
    servers = []
    for log_path in logs:
        port = free_port()
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir)]
        cmd += ["--host", "127.0.0.1", "--port", str(port), *CPU_FLAGS, "--uvicorn-log-level", "warning"]
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=vllm_env(), start_new_session=True
            )
        servers.append(ServeProcess(process, port, str(model_dir), Path(log_path)))
    deadline = time.monotonic() + timeout
    waiting = list(servers)
    while waiting and time.monotonic() < deadline:
        for server in list(waiting):
            if server.process.poll() is not None:
                stop_all(servers)
                raise RuntimeError(f"vLLM's server exited with {server.process.returncode}:\n{_tail(server.log_path)}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health", timeout=2) as r:
                    if r.status == 200:
                        waiting.remove(server)
            except (urllib.error.URLError, OSError):
                pass
        time.sleep(0.5)
    if waiting:
        stop_all(servers)
        raise RuntimeError(f"vLLM's server did not answer /health in {timeout:.0f} s:\n{_tail(waiting[0].log_path)}")
    return servers


def run_batch(model_dir: str | Path, requests: Path, results: Path, log_path: Path) -> None:
    """Answer an OpenAI batch input file with vLLM's batch runner (``run-batch``), as a user would."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(requests), "-o", str(results)]
    cmd += ["--model", str(model_dir), *CPU_FLAGS]
    with open(log_path, "w") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=vllm_env(), start_new_session=True)
    try:
        code = process.wait()
    finally:
        kill_group(process)  # an engine process left behind by a failed run
    if code != 0:
        raise RuntimeError(f"vLLM's run_batch exited with {code}:\n{_tail(log_path)}")


# Float32 on two sets of kernels (vLLM's CPU ones, torch's) agrees to ~6e-5 in log-probability: two greedy answers
# may part only where the model's two best next tokens were closer than this (a near-tie that rounding tips).
NEAR_TIE = 1e-3


def parting_gap(model, tokenizer, prompt: str, a: str, b: str) -> float:
    """Where two greedy answers to ``prompt`` part, the distance (log-probability, by the transformers model) between
    the two tokens they continue with; 0 when they do not part. An answer that stops where the other goes on
    continues with EOS."""
    import torch

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    ta, tb = ids(a), ids(b)
    if ta == tb:
        return 0.0
    k = next((i for i, (x, y) in enumerate(zip(ta, tb, strict=False)) if x != y), min(len(ta), len(tb)))
    eos = tokenizer.eos_token_id
    with torch.no_grad():
        logits = model(torch.tensor([ids(prompt) + ta[:k]])).logits[0, -1].float()
    logp = torch.log_softmax(logits, dim=-1)
    next_a, next_b = (t[k] if k < len(t) else eos for t in (ta, tb))
    return abs(logp[next_a] - logp[next_b]).item()


def explain_differences(pairs, model, tokenizer) -> list[str]:
    """For each differing ``(prompt, a, b)``: a line naming where the answers part, failing (AssertionError) unless
    it is a near-tie; the lines report how many differ and why."""
    lines = []
    for prompt, a, b in pairs:
        if a == b:
            continue
        gap = parting_gap(model, tokenizer, prompt, a, b)
        common = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        line = (
            f"part after {common} characters ({a[common : common + 20]!r} / {b[common : common + 20]!r}), gap {gap:.1e}"
        )
        assert gap < NEAR_TIE, f"not a near-tie: {line}\n{a!r}\n{b!r}"
        lines.append(line)
    return lines
