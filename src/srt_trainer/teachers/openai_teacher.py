"""Any OpenAI-compatible chat endpoint (OpenAI, vLLM / SGLang / TGI servers, ``transformers serve``).

Requests go through the official ``openai`` async client with its own retries off: this module retries with
exponential backoff and jitter, honours ``Retry-After`` on 429, retries 5xx, time-outs, dropped connections and
unreadable bodies, and counts every request it sends. At most ``concurrency`` requests are in flight.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import threading
import time
from collections.abc import Coroutine, Sequence
from typing import Any

from srt_trainer.teachers.base import Answer, Conversation, OnAnswer, SamplingConfig, Teacher, TeacherError

logger = logging.getLogger(__name__)

API_KEY_ENV = "OPENAI_API_KEY"
# 4xx answers that mean the whole run is misconfigured, not that one prompt is bad
FATAL_STATUSES = (401, 403, 404)
RETRY_STATUSES = (408, 409, 425, 429)


class InvalidResponse(ValueError):
    """A 200 answer that is not a chat completion (truncated or garbled body)."""


def run_coroutine(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine from sync code, also when the caller already runs an event loop (a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=target, name="srt-teacher")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def retry_after_seconds(headers: Any) -> float | None:
    """The server's requested wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAITeacher(Teacher):
    """An OpenAI-compatible chat endpoint.

    Args:
        model: the model name the endpoint serves (``transformers serve`` wants the served folder's path).
        base_url: the endpoint, e.g. ``http://127.0.0.1:8000/v1`` (None: api.openai.com).
        api_key: normally None, read from ``OPENAI_API_KEY`` (a local server accepts any key: "EMPTY" is sent).
        concurrency: requests in flight at most.
        max_retries: transport retries per request (429, 5xx, time-out, dropped connection, unreadable body).
        timeout: seconds per request.
        backoff_base / backoff_max: exponential backoff (with jitter) bounds, in seconds.
        max_retry_after: the longest ``Retry-After`` honoured, in seconds.
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
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        max_retry_after: float = 120.0,
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
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self.extra_body = dict(extra_body or {})
        self.fatal_after = fatal_after
        self._rng = random.Random()

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

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: half fixed, half random, so synchronized clients spread out."""
        cap = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        return cap * (0.5 + 0.5 * self._rng.random())

    def generate(self, conversations: Sequence[Conversation], sampling: SamplingConfig, on_answer: OnAnswer) -> None:
        run_coroutine(self.agenerate(conversations, sampling, on_answer))

    async def agenerate(
        self, conversations: Sequence[Conversation], sampling: SamplingConfig, on_answer: OnAnswer
    ) -> None:
        import openai

        # the client's own retries are off: this teacher retries, so it can honour Retry-After and count requests;
        # a pool the size of the concurrency (the default holds 1000) keeps the pool's per-request scans short
        limits = type(openai.DEFAULT_CONNECTION_LIMITS)(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency
        )
        http_client = openai.DefaultAsyncHttpxClient(limits=limits, timeout=self.timeout)
        client = openai.AsyncOpenAI(
            base_url=self.base_url, api_key=self._api_key, max_retries=0, timeout=self.timeout, http_client=http_client
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
            "max_tokens": sampling.max_tokens,
        }
        if sampling.seed is not None:
            kwargs["seed"] = sampling.seed
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        return kwargs

    async def _ask(self, client: Any, messages: Conversation, sampling: SamplingConfig) -> tuple[Answer, int | None]:
        """One conversation, retried on transport errors. Returns the answer and, for a refusal that retrying
        cannot fix (a 4xx), its status."""
        import openai

        kwargs = self._request_kwargs(messages, sampling)
        error = "no request sent"
        for attempt in range(1, self.max_retries + 2):
            wait: float | None = None
            try:
                response = await client.chat.completions.create(**kwargs)
                text = _completion_text(response)
                usage = getattr(response, "usage", None)
                return Answer(
                    text=text,
                    prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                    completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
                    attempts=attempt,
                ), None
            except openai.APIStatusError as e:
                status = e.status_code
                error = self.scrub(f"HTTP {status}: {_status_message(e)}")
                if status in FATAL_STATUSES:
                    raise TeacherError(f"{self.base_url or 'api.openai.com'} refused the request: {error}") from None
                if status < 500 and status not in RETRY_STATUSES:
                    return Answer(text=None, error=error, attempts=attempt), status
                if status == 429:
                    wait = retry_after_seconds(e.response.headers)
                    if wait is not None:
                        wait = min(wait, self.max_retry_after) + self._rng.uniform(0, 0.1 * wait + 0.05)
            except openai.APITimeoutError:
                error = f"timed out after {self.timeout:g} s"
            except openai.APIConnectionError as e:
                error = self.scrub(f"connection error: {e.__cause__ or e}")
            except (json.JSONDecodeError, InvalidResponse, openai.APIResponseValidationError) as e:
                error = self.scrub(f"unreadable response: {type(e).__name__}: {e}")[:300]
            if attempt > self.max_retries:
                break
            delay = wait if wait is not None else self.backoff(attempt)
            logger.debug("attempt %d failed (%s); retrying in %.2f s", attempt, error, delay)
            await asyncio.sleep(delay)
        return Answer(
            text=None, error=f"{error} (after {self.max_retries + 1} attempts)", attempts=self.max_retries + 1
        ), None


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
