"""The teacher's requests as an OpenAI batch file, and its answers read back from a batch output file.

For a self-hosted teacher run offline at full throughput (``vllm run-batch`` reads and writes these formats) or any
provider's batch service: ``export_requests`` writes one line per request the cache does not hold,
``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}``, and stops the run; answered, the output
file (``{"custom_id", "response": {"status_code", "body"}, "error"}`` per line) is read with ``import_results``, its
answers go into the same durable cache as online ones, and everything downstream is unchanged. Re-asks of answers
that failed their check are new requests: a run that imports results and still lacks answers exports those and
stops again, until nothing is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from srt_trainer.errors import SRTUserError
from srt_trainer.io import iter_raw_rows, write_text_atomic
from srt_trainer.teachers.base import Answer, Conversation, DelegatingTeacher, OnAnswer, SamplingConfig, TeacherError
from srt_trainer.teachers.openai_teacher import OpenAITeacher

logger = logging.getLogger(__name__)

CHAT_URL = "/v1/chat/completions"


class RequestsExported(SRTUserError):
    """The run stopped after writing the requests it needs answered (not a failure: the next step is the user's)."""

    def __init__(self, path: Path, count: int) -> None:
        self.path, self.count = path, count
        super().__init__(
            f"wrote {count} teacher requests to {path}; answer them (an OpenAI batch, or `vllm run-batch -i {path} "
            f"-o results.jsonl --model ...`) and run the same command with --import_results results.jsonl"
        )


def request_body(teacher: OpenAITeacher, messages: Conversation, sampling: SamplingConfig) -> dict[str, Any]:
    """The JSON body of one chat request, as the online client sends it (``extra_body`` merged in)."""
    kwargs = teacher.request_kwargs(messages, sampling)
    extra = kwargs.pop("extra_body", None) or {}
    return {**kwargs, "messages": [dict(m) for m in kwargs["messages"]], **extra}


def custom_id(body: dict[str, Any]) -> str:
    """A request's name in the batch files: the hash of its body, so the same request has the same name in every
    run, and an answer can never be matched to another request."""
    return "srt-" + hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:32]


def read_results(path: str | Path) -> dict[str, Answer]:
    """Answers by ``custom_id`` from a batch output file; a failed item is an answer without text and with its
    error. A line that is not a batch result raises, naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise TeacherError(f"{path}: no such results file")
    results = Results()
    for raw in iter_raw_rows(path):
        where = f"{path} line {raw.line or raw.row + 1}"
        if raw.error or not isinstance(raw.value, dict) or not raw.value.get("custom_id"):
            raise TeacherError(f"{where}: {raw.error or 'not a batch result (no custom_id)'}")
        results.add(raw.value["custom_id"], result_answer(raw.value, where), where)
    return results.answers


class Results:
    """Answers by ``custom_id``, gathered from result lines. A request can appear more than once (results of a
    retry appended to the first ones): an answer wins over a failure, the same answer twice is one, and two
    different answers to one request are refused, naming both lines (taking either would be a guess)."""

    def __init__(self) -> None:
        self.answers: dict[str, Answer] = {}
        self.where: dict[str, str] = {}

    def add(self, name: str, answer: Answer, where: str) -> None:
        before = self.answers.get(name)
        if before is not None and before.text is not None:
            if answer.text is not None and answer.text != before.text:
                raise TeacherError(
                    f"{where}: a second, different answer to request {name} (the first is at {self.where[name]}): "
                    "a request has one answer; keep the one to use"
                )
            return
        if before is None or answer.text is not None:
            self.answers[name], self.where[name] = answer, where


def result_answer(item: dict[str, Any], where: str) -> Answer:
    """The answer of one batch output item; a failed item (its error, or a status other than 200) is an answer
    without text and with the reason."""
    response, error = item.get("response") or {}, item.get("error")
    status, body = response.get("status_code"), response.get("body") or {}
    if error or status != 200:
        detail = (error or {}).get("message") if isinstance(error, dict) else error
        return Answer(None, f"batch item failed: {detail or f'HTTP {status}'}")
    try:
        choice = body["choices"][0]
        text = choice["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        raise TeacherError(f"{where}: a 200 response without choices[0].message.content") from None
    usage = body.get("usage") or {}
    return Answer(
        text,
        None,
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
        cut=choice.get("finish_reason") == "length",
    )


class OfflineTeacher(DelegatingTeacher):
    """An OpenAI-compatible teacher answered through files instead of requests: answers from ``results`` (a batch
    output file) where it holds them; the rest written to ``export`` (a batch input file), which stops the run.
    Without ``export``, a request the results lack fails with that reason (counted as any failed request).

    Its identity is the online teacher's, so cache keys, outputs and resumes are those of an online run.
    """

    teacher: OpenAITeacher

    def __init__(self, teacher: OpenAITeacher, results: str | Path | None, export: str | Path | None) -> None:
        if results is None and export is None:
            raise ValueError("an offline teacher needs a results file, an export file or both")
        super().__init__(teacher)
        self.results_path = Path(results) if results is not None else None
        self.export_path = Path(export) if export is not None else None
        self._results = read_results(results) if results is not None else {}
        self.imported = 0  # answers taken from the results file
        self.reexported = 0  # failed items of the results file written to the export file again

    def describe(self) -> str:
        return f"results={self.results_path}, export={self.export_path}"

    def generate(self, conversations: Sequence[Conversation], sampling: SamplingConfig, on_answer: OnAnswer) -> None:
        missing: list[tuple[str, dict[str, Any]]] = []
        for j, messages in enumerate(conversations):
            body = request_body(self.teacher, messages, sampling)
            name = custom_id(body)
            answer = self._results.get(name)
            if answer is not None and answer.text is not None:
                self.imported += 1
                on_answer(j, answer)
            elif self.export_path is not None:  # not answered yet, or a failed item: asked again in the next file
                self.reexported += answer is not None
                missing.append((name, body))
            else:
                why = answer.error if answer is not None else f"not in the results file {self.results_path}"
                on_answer(j, Answer(None, why, attempts=0))
        if missing:
            lines = {name: {"custom_id": name, "method": "POST", "url": CHAT_URL, "body": b} for name, b in missing}
            text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines.values())
            write_text_atomic(text, self.export_path)
            if self.reexported:
                logger.warning("%d failed items of %s asked again", self.reexported, self.results_path)
            raise RequestsExported(self.export_path, len(lines))
