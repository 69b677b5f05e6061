"""Any OpenAI-compatible chat endpoint (OpenAI, vLLM / SGLang / TGI servers, ``transformers serve``).

Requests go through the official ``openai`` async client, which retries what a retry can fix: 408, 409, 429 and
5xx answers, time-outs and dropped connections, with exponential backoff and jitter (0.5 s doubling up to 8 s) and
the server's ``Retry-After`` (``retry-after-ms``, seconds or an HTTP date, up to two minutes). This teacher adds what
the client lacks: a 200 whose body is not a usable chat completion is sent again within the same budget of
``max_retries + 1`` requests; every request sent is counted (the client reports its retries); 401, 403 and 404
stop the run at once, as does the same 4xx refusing every request. At most ``concurrency`` requests are in flight.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from srt_trainer.teachers.base import Answer, Conversation, OnAnswer, SamplingConfig, Teacher, TeacherError

logger = logging.getLogger(__name__)

API_KEY_ENV = "OPENAI_API_KEY"
# 4xx answers that mean the whole run is misconfigured, not that one prompt is bad
FATAL_STATUSES = (401, 403, 404)
# 4xx answers the client retries itself (like every 5xx)
CLIENT_RETRIED = (408, 409, 429)
RETRY_COUNT_HEADER = "x-stainless-retry-count"  # the openai client numbers each request of a call's retries


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


def _requests_sent(error: Any, max_retries: int) -> int:
    """Requests the client sent for a call that raised ``error``: the retry number of its last request, plus one."""
    request = getattr(getattr(error, "response", None), "request", None) or getattr(error, "request", None)
    count = getattr(request, "headers", {}).get(RETRY_COUNT_HEADER) if request is not None else None
    return int(count) + 1 if count is not None and str(count).isdigit() else max_retries + 1


class OpenAITeacher(Teacher):
    """An OpenAI-compatible chat endpoint.

    Args:
        model: the model name the endpoint serves (``transformers serve`` wants the served folder's path).
        base_url: the endpoint, e.g. ``http://127.0.0.1:8000/v1`` (None: api.openai.com).
        api_key: normally None, read from ``OPENAI_API_KEY`` (a local server accepts any key: "EMPTY" is sent).
        concurrency: requests in flight at most.
        max_retries: requests sent again per conversation after the first (the client's retries of 408, 409, 429,
            5xx, time-outs and dropped connections, and this teacher's re-sends of an unusable body).
        timeout: seconds per request.
        extra_body: extra JSON fields of each request (e.g. vLLM's ``continue_final_message``).
        fatal_after: stop the run when this many requests in a row were refused with the same 4xx and none
            succeeded (a wrong model name refused as 400 would otherwise fail every row one by one).
    """

    kind = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        concurrency: int = 64,
        max_retries: int = 8,
        timeout: float = 120.0,
        extra_body: dict[str, Any] | None = None,
        fatal_after: int = 8,
    ) -> None:
        if not model:
            raise TeacherError("the openai teacher needs a model name (--teacher-model): the name the endpoint serves")
        self.model_name = model
        self.base_url = base_url
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        if not key and base_url is None:
            raise TeacherError(f"set {API_KEY_ENV} to use api.openai.com (or pass --base-url for a local server)")
        self._api_key = key or "EMPTY"  # local servers accept anything; never stored or logged
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max(0, int(max_retries))
        self.timeout = float(timeout)
        self.extra_body = dict(extra_body or {})
        self.fatal_after = fatal_after

    def identity(self) -> dict[str, Any]:
        return {
            "teacher": self.kind,
            "model": self.model_name,
            "base_url": self.base_url,
            **({"extra_body": self.extra_body} if self.extra_body else {}),
        }

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAITeacher(model={self.model_name!r}, base_url={self.base_url!r})"

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
        http_client = openai.DefaultAsyncHttpxClient(limits=limits, timeout=self.timeout)
        client = openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=self._api_key,
            max_retries=self.max_retries,
            timeout=self.timeout,
            http_client=http_client,
        )
        semaphore = asyncio.Semaphore(self.concurrency)
        refusals = {"streak": 0, "status": None, "ok": 0}

        async def one(j: int) -> None:
            async with semaphore:
                answer, status = await self._ask(client, conversations[j], sampling)
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

        try:
            tasks = [asyncio.ensure_future(one(j)) for j in range(len(conversations))]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        finally:
            await client.close()

    def _request_kwargs(self, messages: Conversation, sampling: SamplingConfig) -> dict[str, Any]:
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
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        return kwargs

    async def _ask(self, client: Any, messages: Conversation, sampling: SamplingConfig) -> tuple[Answer, int | None]:
        """One conversation, through the client's retries; a 200 without a usable completion is sent again while the
        budget of ``max_retries + 1`` requests lasts. Returns the answer and, for a refusal that retrying cannot fix
        (a 4xx the client does not retry), its status."""
        import openai

        kwargs = self._request_kwargs(messages, sampling)
        budget = self.max_retries + 1
        sent = 0
        while True:
            retries = budget - sent - 1
            caller = client if sent == 0 else client.with_options(max_retries=retries)
            try:
                raw = await caller.chat.completions.with_raw_response.create(**kwargs)
            except openai.APIStatusError as e:
                sent += _requests_sent(e, retries)
                error = self.scrub(f"HTTP {e.status_code}: {_status_message(e)}")
                if e.status_code in FATAL_STATUSES:
                    raise TeacherError(f"{self.base_url or 'api.openai.com'} refused the request: {error}") from None
                if e.status_code < 500 and e.status_code not in CLIENT_RETRIED:
                    return Answer(text=None, error=error, attempts=sent), e.status_code
                return Answer(text=None, error=f"{error} (after {sent} attempts)", attempts=sent), None
            except openai.APIConnectionError as e:  # time-outs included
                sent += _requests_sent(e, retries)
                if isinstance(e, openai.APITimeoutError):
                    error = f"timed out after {self.timeout:g} s"
                else:
                    error = self.scrub(f"connection error: {e.__cause__ or e}")
                return Answer(text=None, error=f"{error} (after {sent} attempts)", attempts=sent), None
            sent += raw.retries_taken + 1
            try:
                response = raw.parse()
                text = _completion_text(response)
            except (json.JSONDecodeError, InvalidResponse, openai.APIResponseValidationError) as e:
                error = self.scrub(f"unreadable response: {type(e).__name__}: {e}")[:300]
                if sent < budget:
                    logger.debug("request %d: %s; sending it again", sent, error)
                    continue
                return Answer(text=None, error=f"{error} (after {sent} attempts)", attempts=sent), None
            usage = getattr(response, "usage", None)
            answer = Answer(
                text=text,
                prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
                attempts=sent,
            )
            return answer, None


def _completion_text(response: Any) -> str:
    choices = getattr(response, "choices", None)
    if not choices:
        raise InvalidResponse(f"no choices in the response: {str(response)[:200]}")
    message = getattr(choices[0], "message", None)
    if message is None:
        raise InvalidResponse("a choice without a message")
    return message.content or ""


def _status_message(e: Any) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        detail = body.get("message") or body.get("detail") or body.get("error") or body
        return str(detail)[:300]
    return str(getattr(e, "message", e))[:300]
