"""Real servers for teacher tests: ``transformers serve`` with the embedded model, and a fault-injecting proxy.

The proxy stands in front of the real server and, by a seeded per-prompt schedule, answers 429 with
``Retry-After``, 500, stalls past the client's time-out, drops the connection, or returns a truncated JSON body;
every other request is forwarded to the server. It logs every request by prompt, so a test can check that no
prompt was sent more often than its retries allow and that the client's own accounting is exact.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import http.server
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

FAULTS = ("429", "500", "stall", "drop", "badjson")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


@dataclass
class ServeProcess:
    """A running ``transformers serve``; ``base_url`` ends in ``/v1``, ``model`` is the name requests must use."""

    process: subprocess.Popen
    port: int
    model: str
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=15)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_transformers_serve(model_dir: str | Path, log_path: str | Path, timeout: float = 240.0) -> ServeProcess:
    """Start ``transformers serve MODEL_DIR`` on a free loopback port (CPU) and wait until ``/health`` answers;
    raises with the server's log tail when it exits or does not come up in ``timeout`` seconds."""
    exe = Path(sys.executable).parent / "transformers"
    port = free_port()
    log_path = Path(log_path)
    log = log_path.open("w")
    cmd = [
        str(exe),
        "serve",
        str(model_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
        "--log-level",
        "warning",
    ]
    # one thread: the server shares the cores with the tests, and idle-spinning torch threads slow both many times
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    log.close()
    server = ServeProcess(process, port, str(model_dir), log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"transformers serve exited with {process.returncode}:\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"transformers serve did not answer /health within {timeout:.0f} s:\n{_tail(log_path)}")


def prompt_hash(messages: list[dict]) -> str:
    """The proxy's name of a prompt (the request's messages)."""
    return hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


@dataclass
class Hit:
    time: float
    outcome: str  # "ok" (forwarded) or the fault injected
    temperature: float | None = None
    status: int | None = None


@dataclass
class FaultPlan:
    """Which fault the ``n``-th request of a prompt gets (n from 1), decided per prompt so that thread timing
    cannot change it. ``rates``: chance of each fault on a prompt's requests up to ``max_faults_per_prompt``;
    ``always``: prompts (by a predicate on the user message) that get 500 on every request."""

    rates: dict[str, float] = field(default_factory=dict)
    max_faults_per_prompt: int = 2
    seed: int = 0
    retry_after: str = "1"
    stall_seconds: float = 5.0
    always: Callable[[str], bool] | None = None
    forced: dict[str, list[str]] = field(default_factory=dict)  # prompt hash -> faults of its first requests

    def fault(self, key: str, user_text: str, n: int) -> str | None:
        if self.always is not None and self.always(user_text):
            return "500"
        if key in self.forced:
            seq = self.forced[key]
            return seq[n - 1] if n <= len(seq) else None
        if n > self.max_faults_per_prompt:
            return None
        rng = random.Random(f"{self.seed}:{key}:{n}")
        x = rng.random()
        for name in FAULTS:
            x -= self.rates.get(name, 0.0)
            if x < 0:
                return name
        return None


class FaultProxy:
    """A threaded HTTP proxy to ``upstream`` (``http://127.0.0.1:PORT``) that injects the faults of ``plan``."""

    def __init__(self, upstream_port: int, plan: FaultPlan | None = None) -> None:
        self.upstream_port = upstream_port
        self.plan = plan or FaultPlan()
        self.hits: dict[str, list[Hit]] = defaultdict(list)
        self.lock = threading.Lock()
        self.authorizations: set[str] = set()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()

            def do_GET(self) -> None:
                self._forward(b"", record=None)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    request = json.loads(body)
                    messages = request["messages"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    self._forward(body, record=None)
                    return
                key = prompt_hash(messages)
                user = next((m["content"] for m in messages if m.get("role") == "user"), "")
                with proxy.lock:
                    proxy.authorizations.add(self.headers.get("Authorization", ""))
                    n = len(proxy.hits[key]) + 1
                    fault = proxy.plan.fault(key, user, n)
                    hit = Hit(time.monotonic(), fault or "ok", request.get("temperature"))
                    proxy.hits[key].append(hit)
                if fault == "429":
                    self._send(
                        429,
                        b'{"error": {"message": "rate limited", "type": "rate_limit"}}',
                        {"Retry-After": proxy.plan.retry_after},
                    )
                elif fault == "500":
                    self._send(500, b'{"error": {"message": "injected server error", "type": "server_error"}}')
                elif fault == "stall":
                    time.sleep(proxy.plan.stall_seconds)
                    self.close_connection = True
                elif fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                elif fault == "badjson":
                    self._send(200, b'{"id": "chatcmpl-injected", "object": "chat.completion", "choices": [{"ind')
                else:
                    hit.status = self._forward(body, record=hit)

            def _forward(self, body: bytes, record: Hit | None) -> int:
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=600)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                finally:
                    conn.close()
                self._send(response.status, data)
                return response.status

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request: object, client_address: object) -> None:
                # a client that timed out, or the server stopping under a forwarded request: expected here
                exc = sys.exc_info()[1]
                if not isinstance(exc, (ConnectionError, http.client.HTTPException, TimeoutError)):
                    super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="fault-proxy", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {k: len(v) for k, v in self.hits.items()}

    def outcomes(self) -> dict[str, int]:
        with self.lock:
            out: dict[str, int] = defaultdict(int)
            for hits in self.hits.values():
                for h in hits:
                    out[h.outcome] += 1
            return dict(out)

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _reflection_reply(prompt: str) -> str:
    """A usable answer of the kind the prompt asks for, different for every prompt."""
    tag = hashlib.sha256(prompt.encode()).hexdigest()[:8]
    if "[New Instruction]" in prompt:
        return (
            f"[New Instruction] Explain, step by step and with one worked example, topic {tag}. [End]\n"
            f"[New Answer] Topic {tag} comes in three steps: first the idea, then the example, then a check. [End]"
        )
    return f"[Better Answer] A fuller answer ({tag}): it states the point, gives a reason and an example. [End]"


class SlowTeacher:
    """An OpenAI-compatible endpoint that takes ``seconds`` per answer and counts the requests it gets: a loaded
    server, which a real one cannot be made into on demand. ``reply`` makes the answer from the user message
    (default "Done."); ``reflection_reply`` gives tagged rewrites that reflection accepts."""

    def __init__(self, seconds: float, reply: Callable[[str], str] = lambda _: "Done.") -> None:
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                server.requests.append(prompt)
                time.sleep(seconds)
                message = {"role": "assistant", "content": reply(prompt)}
                payload = {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
                }
                data = json.dumps(payload).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up waiting
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    reflection_reply = staticmethod(_reflection_reply)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _completion(model: str, text: str) -> dict:
    message = {"role": "assistant", "content": text}
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


class BatchService:
    """The files and batches endpoints of the OpenAI protocol on loopback, plus chat completions answered at once:
    no batch service runs offline, so this one stands in for a provider's.

    A batch stays ``in_progress`` until ``release`` is set; the next look at it then answers every request with
    ``reply(user message)``, except that ``fail(k, n)`` fails the k-th request of the n-th batch (0-based k, 1-based
    n) with a per-item error, and a batch whose number is in ``expire`` expires after answering its first half. It
    records every upload, batch and chat request it gets."""

    def __init__(
        self,
        reply: Callable[[str], str],
        fail: Callable[[int, int], bool] = lambda k, n: False,
        expire: frozenset[int] = frozenset(),
    ) -> None:
        import email.parser

        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.chats: list[str] = []
        self.uploaded: list[str] = []  # the files clients uploaded (not the output files the service made)
        self.release = threading.Event()
        self.release.set()
        self._lock = threading.Lock()
        service = self

        def process(batch: dict) -> None:
            n = list(service.batches).index(batch["id"]) + 1
            lines = [json.loads(x) for x in service.files[batch["input_file_id"]].decode().splitlines()]
            answered = len(lines) // 2 if n in expire else len(lines)
            out, errors = [], []
            for k, line in enumerate(lines[:answered]):
                if fail(k, n):
                    err = {"code": "server_error", "message": "the model failed on this request"}
                    errors.append({"id": f"r{k}", "custom_id": line["custom_id"], "response": None, "error": err})
                    continue
                body = _completion(line["body"]["model"], reply(line["body"]["messages"][-1]["content"]))
                response = {"status_code": 200, "request_id": f"q{k}", "body": body}
                out.append({"id": f"r{k}", "custom_id": line["custom_id"], "response": response, "error": None})
            for key, items in (("output_file_id", out), ("error_file_id", errors)):
                if items:
                    file_id = f"file-{len(service.files) + 1}"
                    service.files[file_id] = "".join(json.dumps(x) + "\n" for x in items).encode()
                    batch[key] = file_id
            batch["status"] = "expired" if n in expire else "completed"
            batch["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(errors)}

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _json(self, status: int, payload: object) -> None:
                self._send(status, json.dumps(payload).encode(), "application/json")

            def _send(self, status: int, data: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers["Content-Length"]))

            def do_POST(self) -> None:
                path = self.path.split("?")[0]
                with service._lock:
                    if path == "/v1/chat/completions":
                        body = json.loads(self._body())
                        service.chats.append(body["messages"][-1]["content"])
                        return self._json(200, _completion(body["model"], reply(body["messages"][-1]["content"])))
                    if path == "/v1/files":
                        head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
                        form = email.parser.BytesParser().parsebytes(head + self._body())
                        parts = {p.get_param("name", header="content-disposition"): p for p in form.get_payload()}
                        assert parts["purpose"].get_payload(decode=True) == b"batch"
                        file_id = f"file-{len(service.files) + 1}"
                        data = parts["file"].get_payload(decode=True)
                        service.files[file_id] = data
                        service.uploaded.append(file_id)
                        name = parts["file"].get_filename()
                        return self._json(200, _file_object(file_id, name, len(data)))
                    if path == "/v1/batches":
                        req = json.loads(self._body())
                        assert req["endpoint"] == "/v1/chat/completions" and req["completion_window"] == "24h"
                        assert req["input_file_id"] in service.files
                        batch_id = f"batch_{len(service.batches) + 1}"
                        n = len(service.files[req["input_file_id"]].splitlines())
                        service.batches[batch_id] = {
                            "id": batch_id,
                            "object": "batch",
                            "endpoint": req["endpoint"],
                            "input_file_id": req["input_file_id"],
                            "completion_window": "24h",
                            "status": "in_progress",
                            "created_at": 0,
                            "metadata": req.get("metadata"),
                            "request_counts": {"total": n, "completed": 0, "failed": 0},
                        }
                        return self._json(200, service.batches[batch_id])
                return self._json(404, {"error": {"message": f"no route {path}"}})

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                with service._lock:
                    if path == "/v1/batches":
                        data = list(reversed(service.batches.values()))  # newest first, as the API lists them
                        return self._json(200, {"object": "list", "data": data, "has_more": False})
                    if path.startswith("/v1/batches/"):
                        batch = service.batches.get(path.rsplit("/", 1)[1])
                        if batch is None:
                            return self._json(404, {"error": {"message": f"No batch found with id {path}"}})
                        if batch["status"] == "in_progress" and service.release.is_set():
                            process(batch)
                        return self._json(200, batch)
                    if path.startswith("/v1/files/") and path.endswith("/content"):
                        return self._send(200, service.files[path.split("/")[3]], "application/octet-stream")
                return self._json(404, {"error": {"message": f"no route {path}"}})

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def requests_of(self, batch_id: str) -> int:
        return len(self.files[self.batches[batch_id]["input_file_id"]].splitlines())

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _file_object(file_id: str, name: str | None, size: int) -> dict:
    return {
        "id": file_id,
        "object": "file",
        "bytes": size,
        "created_at": 0,
        "filename": name or "input.jsonl",
        "purpose": "batch",
        "status": "processed",
    }


class Misbehaving:
    """An HTTP endpoint on loopback that is wrong in one way a real server cannot be made to be on demand, on every
    route, counting the requests it gets:

    - ``html``: HTTP 200 with an HTML page (a gateway's error page) instead of a JSON chat completion;
    - ``hang``: accepts connections and reads the requests, and never answers anything;
    - ``echo_key``: HTTP 401 whose message echoes the API key it was sent (some gateways do)."""

    def __init__(self, mode: str) -> None:
        assert mode in ("html", "hang", "echo_key")
        self.mode = mode
        self.requests = 0
        self.paths: list[str] = []
        self._hanging: list[threading.Event] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.requests += 1
                server.paths.append(self.path)
                if server.mode == "hang":
                    done = threading.Event()
                    server._hanging.append(done)
                    done.wait()  # until the server closes: the client sees an open connection and no byte
                    self.close_connection = True
                    return
                if server.mode == "html":
                    status, kind = 200, "text/html"
                    data = b"<html><body><h1>502 Bad Gateway</h1><p>upstream unavailable</p></body></html>"
                else:
                    key = self.headers.get("Authorization", "").removeprefix("Bearer ")
                    status, kind = 401, "application/json"
                    message = f"Incorrect API key provided: {key}. You can find your API key at the dashboard."
                    data = json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client that gave up on a hanging request

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        for done in self._hanging:
            done.set()
        self.httpd.shutdown()
        self.httpd.server_close()
