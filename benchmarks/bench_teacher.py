"""Teacher throughput: the release's request pattern versus ``complete_all`` with the OpenAI teacher.

Both talk, through the official ``openai`` async client, to an in-process OpenAI-compatible stub endpoint that
answers each request after a fixed latency and fails a seeded fraction of them with HTTP 500 (a benchmark fixture:
it isolates the client's scheduling from any model's speed).

- release: lock-step batches of 10 requests through ``asyncio.gather``; when any request of a batch fails, sleep
  and send the whole batch again (as the released scripts did, which pays again for the answers that had come back).
- ours: ``complete_all`` with ``OpenAITeacher(concurrency=64)``: per-request retries (the openai client's backoff
  and jitter), each answer appended to the durable cache (fsync'd) as it arrives.

    python benchmarks/bench_teacher.py                       # 500 requests, 200 ms, 2% errors
    python benchmarks/bench_teacher.py --n 2000 --latency 0.5 --error-rate 0.05
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import tempfile
import threading
import time
from pathlib import Path

import openai

from srt_trainer.teachers import SamplingConfig, complete_all
from srt_trainer.teachers.openai_teacher import OpenAITeacher


class StubEndpoint:
    """A minimal HTTP/1.1 keep-alive server for ``POST /v1/chat/completions`` in its own thread and event loop.
    Request k of a prompt fails with 500 when a seeded draw for (prompt, k) is below ``error_rate``."""

    def __init__(self, latency: float, error_rate: float, seed: int = 0) -> None:
        self.latency, self.error_rate, self.seed = latency, error_rate, seed
        self.requests = 0
        self.errors = 0
        self.answered: dict[str, int] = {}
        self.seen: dict[str, int] = {}
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=1024))
        self.port = self.server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    def start(self) -> StubEndpoint:
        self._thread.start()
        self._ready.wait()
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = json.loads(await reader.readexactly(length)) if length else {}
                prompt = body.get("messages", [{}])[-1].get("content", "")
                self.requests += 1
                k = self.seen[prompt] = self.seen.get(prompt, 0) + 1
                await asyncio.sleep(self.latency)
                if random.Random(f"{self.seed}:{prompt}:{k}").random() < self.error_rate:
                    self.errors += 1
                    status, payload = "500 Internal Server Error", {"error": {"message": "injected"}}
                else:
                    self.answered[prompt] = self.answered.get(prompt, 0) + 1
                    payload = {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body.get("model"),
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": "stop",
                                "message": {"role": "assistant", "content": f"answer to {prompt}"},
                            }
                        ],
                        "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25},
                    }
                    status = "200 OK"
                data = json.dumps(payload).encode()
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}"
                    f"\r\nConnection: keep-alive\r\n\r\n".encode()
                    + data
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def conversations(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"request {i}"}] for i in range(n)]


def run_release(base_url: str, convs: list, batch_size: int, error_sleep: float) -> dict:
    """Lock-step batches through asyncio.gather; any error: sleep, then send the whole batch again."""
    answers: list[str | None] = [None] * len(convs)

    async def batch(client: openai.AsyncOpenAI, part: list) -> list:
        return await asyncio.gather(
            *(client.chat.completions.create(model="stub", messages=m, temperature=0.0, max_tokens=64) for m in part)
        )

    async def main() -> int:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=60)
        sleeps = 0
        for start in range(0, len(convs), batch_size):
            part = convs[start : start + batch_size]
            while True:
                try:
                    out = await batch(client, part)
                    break
                except openai.APIError:
                    sleeps += 1
                    time.sleep(error_sleep)  # the release slept in its (synchronous) retry loop
            for j, r in enumerate(out):
                answers[start + j] = r.choices[0].message.content
        await client.close()
        return sleeps

    sleeps = asyncio.run(main())
    return {"answered": sum(a is not None for a in answers), "sleeps": sleeps}


def run_ours(base_url: str, convs: list, concurrency: int, cache_dir: Path) -> dict:
    teacher = OpenAITeacher(model="stub", base_url=base_url, concurrency=concurrency, max_retries=8, timeout=60)
    results, counts = complete_all(
        teacher, convs, SamplingConfig(max_tokens=64), cache_dir / "cache.jsonl", progress=False
    )
    return {"answered": sum(r.text is not None for r in results), "retried": counts.retried}


def measure(name: str, fn, args: argparse.Namespace, **kw) -> dict:
    stub = StubEndpoint(args.latency, args.error_rate, seed=args.seed).start()
    try:
        start = time.perf_counter()
        info = fn(stub.base_url, conversations(args.n), **kw)
        seconds = time.perf_counter() - start
    finally:
        stub.stop()
    paid_twice = sum(c - 1 for c in stub.answered.values())
    return {
        "method": name,
        "seconds": seconds,
        "rows_per_s": info["answered"] / seconds,
        "requests": stub.requests,
        "errors": stub.errors,
        "paid_twice": paid_twice,
        **info,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500, help="requests (distinct prompts)")
    parser.add_argument("--latency", type=float, default=0.2, help="the endpoint's seconds per request")
    parser.add_argument("--error-rate", type=float, default=0.02, help="share of requests answered with HTTP 500")
    parser.add_argument("--error-sleep", type=float, default=1.0, help="release pattern: seconds slept on an error")
    parser.add_argument("--batch-size", type=int, default=10, help="release pattern: requests per lock-step batch")
    parser.add_argument("--concurrency", type=int, default=64, help="ours: requests in flight")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"openai {openai.__version__}; {args.n} requests, latency {args.latency * 1000:.0f} ms, "
        f"error rate {args.error_rate:.0%}"
    )
    release = measure(
        "release (batches of 10, gather, sleep on error)",
        run_release,
        args,
        batch_size=args.batch_size,
        error_sleep=args.error_sleep,
    )
    with tempfile.TemporaryDirectory() as tmp:
        ours = measure(
            f"ours (complete_all, concurrency {args.concurrency}, fsync'd cache)",
            run_ours,
            args,
            concurrency=args.concurrency,
            cache_dir=Path(tmp),
        )
    print("\n| method | rows/s | wall s | requests sent | 500s | answers paid twice | × release |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in (release, ours):
        print(
            f"| {r['method']} | {r['rows_per_s']:.1f} | {r['seconds']:.2f} | {r['requests']} | {r['errors']} | "
            f"{r['paid_twice']} | {r['rows_per_s'] / release['rows_per_s']:.2f}× |"
        )
    assert release["answered"] == ours["answered"] == args.n, "some requests were never answered"


if __name__ == "__main__":
    main()
