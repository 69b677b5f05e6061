"""Any OpenAI-compatible chat endpoint (OpenAI, vLLM / SGLang / TGI servers, ``transformers serve``).

Requests go through the official ``openai`` async client; this teacher does the retrying itself, so that each kind
of fault gets what fits it:

- 408, 409, 429 and 5xx answers and dropped connections are sent again after an exponential back-off with jitter
  (0.5 s doubling up to 8 s), or after the server's ``Retry-After`` (``retry-after-ms``, seconds or an HTTP date, up
  to a minute), within a budget of ``max_retries + 1`` requests per conversation;
- a 200 whose body is not a usable chat completion is sent again within the same budget;
- a time-out is different: the server is most likely still generating the answer (a loaded local server queues
  requests), so sending the same request again at once would only add to its work. A timed-out request is sent
  again at most ``timeout_retries`` times (default once), each time with twice the time-out and after a back-off,
  and from the first time-out on this teacher halves the requests it keeps in flight (down to one): the queue
  that made requests wait shrinks instead of growing. The time-out defaults to 120 s for a remote API and to
  30 minutes for a server on this machine or its network (``localhost``, loopback and private addresses), where
  waiting in a queue is normal. Time-outs are counted and reported;
- 401, 403 and 404 stop the run at once, as does the same 4xx refusing every request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from srt_trainer.teachers.base import (
    Answer,
    Conversation,
    OnAnswer,
    SamplingConfig,
    Teacher,
    TeacherError,
    prefilled,
)
from srt_trainer.teachers.config import normalize_base_url, split_base_urls

logger = logging.getLogger(__name__)

API_KEY_ENV = "OPENAI_API_KEY"
# 4xx answers that mean the whole run is misconfigured, not that one prompt is bad
FATAL_STATUSES = (401, 403, 404)
# 4xx answers the client retries itself (like every 5xx)
CLIENT_RETRIED = (408, 409, 429)
REMOTE_TIMEOUT = 120.0  # seconds per request to a remote API
LOCAL_TIMEOUT = 1800.0  # seconds per request to a server on this machine or network: requests wait in its queue
MAX_RETRY_AFTER = 60.0


class InvalidResponse(ValueError):
    """A 200 answer that is not a chat completion (truncated or garbled body)."""


def run_coroutine(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine from sync code. Inside a running event loop (a notebook) ``asyncio.run`` cannot nest, so the
    coroutine gets a loop of its own in a worker thread there."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1, thread_name_prefix="srt-teacher") as pool:
        return pool.submit(asyncio.run, coro).result()


def is_local_url(base_url: str | None) -> bool:
    """True for an endpoint on this machine or a private network (a server one runs oneself)."""
    if not base_url:
        return False
    import ipaddress
    from urllib.parse import urlparse

    host = (urlparse(base_url).hostname or "").lower()
    if host in ("localhost", "0.0.0.0") or host.endswith((".local", ".localhost", ".internal")) or "." not in host:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_link_local


def default_timeout(base_url: str | None) -> float:
    """Seconds per request when none is given: long for a local server (requests queue there), 120 s otherwise."""
    return LOCAL_TIMEOUT if is_local_url(base_url) else REMOTE_TIMEOUT


def retry_after_seconds(headers: Any) -> float | None:
    """The server's ``Retry-After`` (``retry-after-ms``, seconds or an HTTP date) in seconds, when it is usable
    (0 to a minute)."""
    import email.utils
    import time

    if headers is None:
        return None
    value: float | None = None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            value = float(ms) / 1000
        else:
            text = headers.get("retry-after")
            if text is not None:
                try:
                    value = float(text)
                except ValueError:
                    date = email.utils.parsedate_to_datetime(text)
                    value = date.timestamp() - time.time()
    except (TypeError, ValueError, IndexError):
        return None
    return value if value is not None and 0 <= value <= MAX_RETRY_AFTER else None


def backoff_seconds(retry: int, headers: Any = None) -> float:
    """Seconds to wait before the ``retry``-th retry (1-based): the server's Retry-After, else 0.5 s doubling up to
    8 s, less up to a quarter of jitter."""
    import random

    after = retry_after_seconds(headers)
    if after is not None:
        return after
    return min(0.5 * 2 ** (retry - 1), 8.0) * (1 - 0.25 * random.random())


class InFlight:
    """At most ``limit`` requests in flight; ``shrink`` halves the limit (down to 1) for the rest of the run."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.active = 0
        self._cond = asyncio.Condition()

    async def __aenter__(self) -> InFlight:
        async with self._cond:
            await self._cond.wait_for(lambda: self.active < self.limit)
            self.active += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        async with self._cond:
            self.active -= 1
            self._cond.notify_all()

    def shrink(self) -> int:
        self.limit = max(1, self.limit // 2)
        return self.limit


REST_SECONDS = 5.0  # a failed replica's first rest; doubled per failure in a row, up to MAX_REST_SECONDS
MAX_REST_SECONDS = 300.0


def split_urls(base_url: str | None) -> list[str | None]:
    """The endpoints of ``--base_url`` (see ``split_base_urls``); ``[None]`` for the provider's default host."""
    return list(split_base_urls(base_url)) or [None]


class Replica:
    """One endpoint of the teacher: its client, the requests in flight to it, and its rest after failures."""

    def __init__(self, url: str | None, client: Any) -> None:
        self.url, self.client = url, client
        self.active = 0
        self.failures = 0  # in a row
        self.rest_until = 0.0
        self.answered = 0
        self.calls: dict[asyncio.Future[Any], float] = {}  # requests in flight to it -> when each was sent
        self.heard = 0.0  # when it last answered anything (a request, or a look at its models)
        self.probing = False


# A replica is looked at when it has kept a request without answering anything for STALL_FACTOR times the longest
# answer seen so far (at least the teacher's stall_seconds): long enough that a slow answer is not taken for a hung
# server, since the measure grows with the machines' own speed.
STALL_FACTOR = 4.0
STALL_SECONDS = 10.0
WATCH_SECONDS = 0.5


class Replicas:
    """Data-parallel copies of one teacher: each request goes to the replica with the fewest requests in flight
    among those not resting (the one that failed least recently, among equals). A replica that fails (dropped
    connection, 5xx, time-out, a body that is no chat completion) rests, 5 s doubling per failure in a row up to 5
    minutes, and the requests go to the others; when every replica rests, the one whose rest ends first is tried.

    A replica that takes requests and answers none (a hung server still accepting connections) is found by
    ``watch``: when it has kept a request longer than ``stall_limit`` without answering anything, it is asked for
    its models (a request any live server answers at once, busy or not); no answer within the same limit, and its
    requests are taken back and sent to the others, which they would otherwise wait for up to the request
    time-out. A replica that answers the look keeps its requests: it is slow, not hung."""

    def __init__(self, replicas: Sequence[Replica], stall_seconds: float = STALL_SECONDS) -> None:
        self.replicas = list(replicas)
        self.stall_seconds = stall_seconds
        self.longest = 0.0  # the longest answer seen, in seconds
        self.moved = 0  # requests taken back from hung replicas

    def pick(self) -> Replica:
        now = time.monotonic()
        ready = [r for r in self.replicas if r.rest_until <= now]
        if not ready:
            return min(self.replicas, key=lambda r: r.rest_until)
        return min(ready, key=lambda r: (r.active, r.failures))

    def any_ready(self) -> bool:
        now = time.monotonic()
        return any(r.rest_until <= now for r in self.replicas)

    def failed(self, replica: Replica, error: str) -> None:
        if len(self.replicas) == 1:
            return  # nothing to send to instead: the retry's back-off is the rest
        replica.failures += 1
        seconds = min(REST_SECONDS * 2 ** (replica.failures - 1), MAX_REST_SECONDS)
        replica.rest_until = time.monotonic() + seconds
        logger.warning(
            "teacher replica %s failed (%s): resting it %g s, its requests go to the others",
            replica.url,
            error,
            seconds,
        )

    def answered(self, replica: Replica, seconds: float = 0.0) -> None:
        replica.failures = 0
        replica.answered += 1
        replica.heard = time.monotonic()
        self.longest = max(self.longest, seconds)

    def stall_limit(self) -> float:
        return max(self.stall_seconds, STALL_FACTOR * self.longest)

    async def watch(self, probe: Callable[[Replica, float], Awaitable[bool]]) -> None:
        """Look, every half second, for replicas that keep requests and answer nothing (see the class)."""
        looks: set[asyncio.Task[None]] = set()
        try:
            while True:
                await asyncio.sleep(WATCH_SECONDS)
                now, limit = time.monotonic(), self.stall_limit()
                for r in self.replicas:
                    if r.probing or not r.calls or now - max(min(r.calls.values()), r.heard) < limit:
                        continue
                    if not any(o is not r and o.rest_until <= now for o in self.replicas):
                        continue  # nowhere else to send its requests: they wait for it
                    r.probing = True
                    task = asyncio.ensure_future(self._look(r, limit, probe))
                    looks.add(task)
                    task.add_done_callback(looks.discard)
        finally:
            for task in looks:
                task.cancel()

    async def _look(self, r: Replica, limit: float, probe: Callable[[Replica, float], Awaitable[bool]]) -> None:
        try:
            alive = await probe(r, limit)
        finally:
            r.probing = False
        if alive:
            r.heard = time.monotonic()
            return
        calls = list(r.calls)
        self.failed(r, f"it kept {len(calls)} request(s) {limit:g} s without answering, nor a look at its models")
        for call in calls:  # the asking coroutines see them cancelled and send them elsewhere
            call.cancel()
        self.moved += len(calls)


class OpenAITeacher(Teacher):
    """An OpenAI-compatible chat endpoint.

    Args:
        model: the model name the endpoint serves (``transformers serve`` wants the served folder's path).
        base_url: the endpoint, e.g. ``http://127.0.0.1:8000/v1`` (None: api.openai.com).
        api_key: normally None, read from ``OPENAI_API_KEY`` (a local server accepts any key: "EMPTY" is sent).
        concurrency: requests in flight at most.
        max_retries: requests sent again per conversation after the first (after 408, 409, 429, 5xx, a dropped
            connection, an unusable body or a time-out).
        timeout: seconds per request (None: 30 minutes for a local server, 120 s for a remote API).
        timeout_retries: times a timed-out request is sent again (each time with twice the time-out), within
            ``max_retries``.
        extra_body: extra JSON fields of each request (e.g. vLLM's ``continue_final_message``).
        fatal_after: stop the run when this many requests in a row were refused with the same 4xx and none
            succeeded (a wrong model name refused as 400 would otherwise fail every row one by one).
        stall_seconds: with several replicas, the least time a replica may keep a request without answering
            anything before it is looked at (see ``Replicas``; the limit grows with the longest answer seen).
    """

    kind = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        concurrency: int = 64,
        max_retries: int = 8,
        timeout: float | None = None,
        extra_body: dict[str, Any] | None = None,
        fatal_after: int = 8,
        timeout_retries: int = 1,
        stall_seconds: float = STALL_SECONDS,
    ) -> None:
        if not model:
            raise TeacherError("the openai teacher needs a model name (--teacher-model): the name the endpoint serves")
        self.model_name = model
        self.base_url = normalize_base_url(base_url)  # one spelling: a stray space or slash is not another cache key
        self.base_urls = split_urls(base_url)
        base_url = self.base_url
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        if not key and base_url is None:
            raise TeacherError(f"set {API_KEY_ENV} to use api.openai.com (or pass --base-url for a local server)")
        self._api_key = key or "EMPTY"  # local servers accept anything; never stored or logged
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max(0, int(max_retries))
        local = all(is_local_url(u) for u in self.base_urls)
        self.timeout = float(timeout) if timeout else (LOCAL_TIMEOUT if local else REMOTE_TIMEOUT)
        self.timeout_retries = max(0, int(timeout_retries))
        self.timeouts = 0  # requests that timed out, over the teacher's life
        self.extra_body = dict(extra_body or {})
        self.fatal_after = fatal_after
        self.stall_seconds = stall_seconds

    def identity(self) -> dict[str, Any]:
        # replicas serve the same answers: with several, which one answered (or how many there are) is no part of
        # the cache key, so a run resumes from the cache whatever replicas it has
        where = {"base_url": self.base_url} if len(self.base_urls) == 1 else {}
        return {
            "teacher": self.kind,
            "model": self.model_name,
            **where,
            **({"extra_body": self.extra_body} if self.extra_body else {}),
        }

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAITeacher(model={self.model_name!r}, base_url={self.base_url!r})"

    def sync_client(self) -> Any:
        """A blocking ``openai.OpenAI`` client of this endpoint and key, for its files and batches APIs (which
        retry on their own, ``max_retries`` times)."""
        import openai

        if len(self.base_urls) > 1:
            raise TeacherError("the Batch API is one provider's: give --base_url one endpoint with --teacher_batch")
        return openai.OpenAI(
            api_key=self._api_key, base_url=self.base_url, max_retries=self.max_retries, timeout=REMOTE_TIMEOUT
        )

    def scrub(self, text: str) -> str:
        """An error message safe to print or save: the key, if a server echoed it, is masked."""
        if self._api_key and self._api_key != "EMPTY" and len(self._api_key) >= 4:
            text = text.replace(self._api_key, "***")
        return text

    def generate(self, conversations: Sequence[Conversation], sampling: SamplingConfig, on_answer: OnAnswer) -> None:
        run_coroutine(self.agenerate(conversations, sampling, on_answer))

    async def agenerate(
        self, conversations: Sequence[Conversation], sampling: SamplingConfig, on_answer: OnAnswer
    ) -> None:
        import openai

        # a pool the size of the concurrency (the default holds 1000) keeps the pool's per-request scans short
        limits = type(openai.DEFAULT_CONNECTION_LIMITS)(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency
        )
        replicas = Replicas(
            [
                Replica(
                    url,
                    openai.AsyncOpenAI(
                        base_url=url,
                        api_key=self._api_key,
                        max_retries=0,  # retried here, each fault as it needs (see the module's docstring)
                        timeout=self.timeout,
                        http_client=openai.DefaultAsyncHttpxClient(limits=limits, timeout=self.timeout),
                    ),
                )
                for url in self.base_urls
            ],
            self.stall_seconds,
        )
        in_flight = InFlight(self.concurrency)
        refusals = {"streak": 0, "status": None, "ok": 0}
        stop: list[Exception] = []  # the error that ends the run: nothing new is sent, what is in flight is kept

        async def one(j: int) -> None:
            if stop:
                return
            async with in_flight:
                if stop:
                    return
                try:
                    answer, status = await self._ask(replicas, conversations[j], sampling, in_flight)
                except TeacherError as e:  # the endpoint refuses the run (a key, a model): no other request is sent
                    stop.append(e)
                    return
            try:
                if answer.text is not None:
                    refusals["ok"] += 1
                elif status is not None:
                    same = refusals["status"] == status
                    refusals["streak"], refusals["status"] = (refusals["streak"] + 1 if same else 1), status
                    if refusals["ok"] == 0 and refusals["streak"] >= min(self.fatal_after, len(conversations)):
                        raise TeacherError(
                            f"{self.base_url or 'api.openai.com'} refused {refusals['streak']} requests "
                            f"in a row and answered none: {answer.error}"
                        )
                on_answer(j, answer)
            except Exception as e:
                # e.g. the cache's disk is full: the answers of the requests already sent are paid for, so they are
                # still received and kept (as far as they can be) before the run stops; nothing new is sent
                stop.append(e)

        watch = asyncio.ensure_future(replicas.watch(self._probe)) if len(replicas.replicas) > 1 else None
        try:
            tasks = [asyncio.ensure_future(one(j)) for j in range(len(conversations))]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
            if stop:
                raise stop[0]
        finally:
            if watch is not None:
                watch.cancel()
                await asyncio.gather(watch, return_exceptions=True)
            for replica in replicas.replicas:
                await replica.client.close()
            if len(replicas.replicas) > 1:
                moved = f"; {replicas.moved} requests taken back from hung replicas" if replicas.moved else ""
                answered = ", ".join(f"{r.url} {r.answered}" for r in replicas.replicas)
                logger.info("answers per replica: %s%s", answered, moved)

    async def _probe(self, replica: Replica, limit: float) -> bool:
        """Whether ``replica`` answers a look at its models within ``limit`` seconds (any HTTP answer counts: the
        server is alive). A client of its own, so that requests filling the replica's pool cannot delay it."""
        import openai

        client = openai.AsyncOpenAI(base_url=replica.url, api_key=self._api_key, max_retries=0, timeout=limit)
        try:
            await asyncio.wait_for(client.models.list(), limit)
        except openai.APIStatusError:
            return True
        except (openai.APIError, asyncio.TimeoutError, OSError):
            return False
        finally:
            await client.close()
        return True

    def request_kwargs(self, messages: Conversation, sampling: SamplingConfig) -> dict[str, Any]:
        """The keyword arguments of ``chat.completions.create`` for one conversation."""
        kwargs: dict[str, Any] = {
            "model": self.model_name,
            "messages": messages,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            # the release's per-request budget unless max_tokens is set; prompt tokens by the approximation
            "max_tokens": sampling.max_new_tokens(self.count_prompt_tokens(messages)),
        }
        if sampling.seed is not None:
            kwargs["seed"] = sampling.seed
        extra = dict(self.extra_body)
        if prefilled(messages):  # continue the started reply (vLLM, SGLang) instead of opening a new one after it
            extra = {"continue_final_message": True, "add_generation_prompt": False, **extra}
        if extra:
            kwargs["extra_body"] = extra
        return kwargs

    async def _ask(
        self, replicas: Replicas, messages: Conversation, sampling: SamplingConfig, in_flight: InFlight | None = None
    ) -> tuple[Answer, int | None]:
        """One conversation, with the retries of the module's docstring, within ``max_retries + 1`` requests.
        Returns the answer and, for a refusal that retrying cannot fix (a 4xx not retried), its status."""
        import openai

        kwargs = self.request_kwargs(messages, sampling)
        budget = self.max_retries + 1
        sent = timeouts = 0
        timeout = self.timeout
        error = "no answer"
        delay = 0.0
        while sent < budget:
            if delay > 0:
                await asyncio.sleep(delay)
            sent += 1
            replica = replicas.pick()
            replica.active += 1
            create = replica.client.with_options(timeout=timeout).chat.completions.with_raw_response.create
            call = asyncio.ensure_future(create(**kwargs))
            started = replica.calls[call] = time.monotonic()
            try:
                try:
                    await asyncio.wait([call])
                finally:
                    del replica.calls[call]
                    if not call.done():  # this coroutine was cancelled: so is its request
                        call.cancel()
                if call.cancelled():  # taken back from a hung replica (``Replicas.watch``): sent elsewhere at once
                    error = f"{replica.url} kept the request without answering"
                    delay = 0.0
                    continue
                raw = call.result()
            except openai.APIStatusError as e:
                error = self.scrub(f"HTTP {e.status_code}: {status_message(e)}")
                if e.status_code in FATAL_STATUSES:
                    raise TeacherError(f"{replica.url or 'api.openai.com'} refused the request: {error}") from None
                if e.status_code < 500 and e.status_code not in CLIENT_RETRIED:
                    return Answer(text=None, error=error, attempts=sent, timeouts=timeouts), e.status_code
                if e.status_code >= 500:
                    replicas.failed(replica, error)
                delay = backoff_seconds(sent, getattr(e.response, "headers", None))
                continue
            except openai.APITimeoutError:
                timeouts += 1
                error = f"timed out after {timeout:g} s"
                self._timed_out(timeout, in_flight)
                replicas.failed(replica, error)
                if timeouts > self.timeout_retries:
                    break
                timeout *= 2  # the server is slow: give the same request more time, not a twin
                delay = backoff_seconds(sent)
                continue
            except openai.APIConnectionError as e:
                error = self.scrub(f"connection error: {e.__cause__ or e}")
                replicas.failed(replica, error)
                # another replica takes it at once; a lone endpoint gets the back-off
                delay = 0.0 if replicas.any_ready() and len(replicas.replicas) > 1 else backoff_seconds(sent)
                continue
            finally:
                replica.active -= 1
            try:
                response = raw.parse()
                text = _completion_text(response)
            except (json.JSONDecodeError, InvalidResponse, openai.APIResponseValidationError) as e:
                error = self.scrub(f"unreadable response: {type(e).__name__}: {e}")[:300]
                logger.debug("request %d: %s; sending it again", sent, error)
                # a replica that answers with something else than a chat completion (a gateway's error page) rests
                # like one that fails, so the others take its requests
                replicas.failed(replica, error[:120])
                delay = 0.0
                continue
            replicas.answered(replica, time.monotonic() - started)
            usage = getattr(response, "usage", None)
            answer = Answer(
                text=text,
                prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
                attempts=sent,
                timeouts=timeouts,
                cut=getattr(response.choices[0], "finish_reason", None) == "length",
            )
            return answer, None
        return Answer(text=None, error=f"{error} (after {sent} attempts)", attempts=sent, timeouts=timeouts), None

    def _timed_out(self, timeout: float, in_flight: InFlight | None) -> None:
        self.timeouts += 1
        before = in_flight.limit if in_flight is not None else 1
        after = in_flight.shrink() if in_flight is not None else 1
        if after < before or self.timeouts == 1:
            logger.warning(
                "%s: a request timed out after %g s: the server is slow or busy; now at most %d request(s) in flight, "
                "a timed-out request is sent again at most %d time(s), with twice the time-out (set the request "
                "time-out higher for a slow server)",
                self.base_url or "api.openai.com",
                timeout,
                after,
                self.timeout_retries,
            )


def _completion_text(response: Any) -> str:
    choices = getattr(response, "choices", None)
    if not choices:
        raise InvalidResponse(f"no choices in the response: {str(response)[:200]}")
    message = getattr(choices[0], "message", None)
    if message is None:
        raise InvalidResponse("a choice without a message")
    return message.content or ""


def status_message(e: Any) -> str:
    """The readable part of an HTTP error from the client (not scrubbed: pass it through `scrub`)."""
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        detail = body.get("message") or body.get("detail") or body.get("error") or body
        return str(detail)[:300]
    return str(getattr(e, "message", e))[:300]
