"""The teacher through a provider's Batch API: OpenAI's, or any server that implements its files and batches
endpoints.

The requests the cache lacks are written as batch input files (the format ``offline.py`` exports), uploaded with
the ``openai`` client's files API and submitted as batches, split at the provider's per-batch limits. The
submitted batches are recorded in a state file beside the teacher cache before anything waits on them, so a
killed run started again with the same command picks them up instead of paying for them twice. Answers go through
``on_answer`` into the same durable cache as online ones; items that failed, or that an expired or cancelled batch
left unanswered, are submitted again (``resubmits`` times), then reported as failed requests.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from srt_trainer.io import write_text_atomic
from srt_trainer.teachers.base import Answer, Conversation, OnAnswer, SamplingConfig, Teacher, TeacherError
from srt_trainer.teachers.offline import CHAT_URL, custom_id, request_body, result_answer
from srt_trainer.teachers.openai_teacher import OpenAITeacher

logger = logging.getLogger(__name__)

# OpenAI's limits per batch (other providers' are the same or larger)
MAX_REQUESTS = 50_000
MAX_BYTES = 200 * 2**20
COMPLETION_WINDOW = "24h"  # the one window the Batch API accepts
ENDED = ("completed", "expired", "cancelled", "failed")
STATE_VERSION = 1


@dataclass
class SubmittedBatch:
    """One batch as recorded: the requests it carries (their ``custom_id``s) and, once known, its input file and
    batch ids at the provider."""

    custom_ids: list[str]
    input_file_id: str | None = None
    batch_id: str | None = None
    submission: int = 1  # 1: first submission of these requests, 2: their first re-submission, ...

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join(sorted(self.custom_ids)).encode()).hexdigest()[:32]


@dataclass
class BatchState:
    """The submitted batches that have not been read back yet, persisted (atomically) at ``path``."""

    path: Path
    batches: list[SubmittedBatch] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path) -> BatchState:
        path = Path(path)
        if not path.is_file():
            return cls(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            batches = [SubmittedBatch(**b) for b in data["batches"]]
        except (ValueError, KeyError, TypeError) as e:
            raise TeacherError(f"{path}: not a batch state file ({e}); move it away to submit afresh") from e
        return cls(path, batches)

    def save(self) -> None:
        if not self.batches:
            self.path.unlink(missing_ok=True)
            return
        data = {"version": STATE_VERSION, "batches": [asdict(b) for b in self.batches]}
        write_text_atomic(json.dumps(data, indent=1) + "\n", self.path)

    def add(self, batch: SubmittedBatch) -> None:
        self.batches.append(batch)
        self.save()

    def remove(self, batch: SubmittedBatch) -> None:
        self.batches.remove(batch)
        self.save()


def split_requests(
    lines: dict[str, bytes], max_requests: int = MAX_REQUESTS, max_bytes: int = MAX_BYTES
) -> Iterator[list[str]]:
    """The ``custom_id``s of ``lines`` (each a batch input line) in groups within the per-batch limits."""
    group: list[str] = []
    size = 0
    for name, line in lines.items():
        if len(line) > max_bytes:
            raise TeacherError(f"request {name} is {len(line)} bytes, more than a whole batch may hold ({max_bytes})")
        if group and (len(group) >= max_requests or size + len(line) > max_bytes):
            yield group
            group, size = [], 0
        group.append(name)
        size += len(line)
    if group:
        yield group


def read_output(text: str, where: str) -> dict[str, Answer]:
    """Answers by ``custom_id`` from the text of a batch's output or error file."""
    answers = {}
    for k, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise TeacherError(f"{where} line {k}: invalid JSON: {e.msg}") from None
        if not isinstance(item, dict) or not item.get("custom_id"):
            raise TeacherError(f"{where} line {k}: not a batch result (no custom_id)")
        answers[item["custom_id"]] = result_answer(item, f"{where} line {k}")
    return answers


class BatchTeacher(Teacher):
    """An OpenAI-compatible teacher answered through the provider's Batch API (see the module's description).

    Args:
        teacher: the online teacher: its endpoint, key, model and request bodies.
        state_path: the state file of submitted batches (``batch_state_path`` of the teacher cache).
        poll_seconds: seconds between two looks at the batches' status.
        max_requests, max_bytes: the provider's limits per batch.
        resubmits: times an item that failed or was left unanswered is submitted again.
        progress: show a progress bar of the provider's completed requests while waiting.
        sleep: how to wait between polls (tests pass a faster one).
    """

    def __init__(
        self,
        teacher: OpenAITeacher,
        state_path: str | Path,
        poll_seconds: float = 60.0,
        max_requests: int = MAX_REQUESTS,
        max_bytes: int = MAX_BYTES,
        resubmits: int = 1,
        progress: bool = True,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.teacher = teacher
        self.kind, self.model_name = teacher.kind, teacher.model_name
        self.state_path = Path(state_path)
        self.poll_seconds = poll_seconds
        self.max_requests, self.max_bytes = max_requests, max_bytes
        self.resubmits = max(0, resubmits)
        self.progress = progress
        self.sleep = sleep
        self.submitted = 0  # batches this teacher created
        self.resubmitted = 0  # items it submitted again
        self.adopted = 0  # batches of an earlier run it picked up
        self._client: Any = None

    def identity(self) -> dict[str, Any]:
        return self.teacher.identity()

    def count_prompt_tokens(self, conversation: Conversation) -> int:
        return self.teacher.count_prompt_tokens(conversation)

    def __repr__(self) -> str:
        return f"BatchTeacher({self.teacher!r}, state={self.state_path})"

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self.teacher.sync_client()
        return self._client

    def generate(self, conversations: Sequence[Conversation], sampling: SamplingConfig, on_answer: OnAnswer) -> None:
        lines: dict[str, bytes] = {}
        positions: dict[str, list[int]] = {}
        for j, messages in enumerate(conversations):
            body = request_body(self.teacher, messages, sampling)
            name = custom_id(body)
            positions.setdefault(name, []).append(j)
            line = {"custom_id": name, "method": "POST", "url": CHAT_URL, "body": body}
            lines[name] = (json.dumps(line, ensure_ascii=False) + "\n").encode()
        state = BatchState.load(self.state_path)
        tries = dict.fromkeys(lines, 0)

        def deliver(name: str, answer: Answer) -> None:
            answer.attempts = tries[name]
            for j in positions.pop(name):
                on_answer(j, answer)
            del lines[name]

        while lines:
            mine = [b for b in state.batches if not lines.keys().isdisjoint(b.custom_ids)]
            if mine:
                logger.info("picking up %d batches submitted before (%s)", len(mine), self.state_path)
                self.adopted += len(mine)
            covered = {name for b in mine for name in b.custom_ids}
            for group in split_requests({n: v for n, v in lines.items() if n not in covered}, **self._limits()):
                submission = 1 + max(tries[n] for n in group)
                batch = SubmittedBatch(group, submission=submission)
                self._submit(batch, lines, state)
                mine.append(batch)
            for b in mine:  # a request's tries: the submission that carries it
                for name in b.custom_ids:
                    if name in tries:
                        tries[name] = max(tries[name], b.submission)
            for batch, answers, why in self._wait(mine, state):
                for name in batch.custom_ids:
                    if name not in lines:
                        continue  # answered by another batch, or not asked in this call
                    answer = answers.get(name)
                    if answer is not None and answer.text is not None:
                        deliver(name, answer)
                    elif tries[name] > self.resubmits:
                        reason = answer.error if answer is not None else why
                        deliver(name, Answer(None, reason, attempts=tries[name]))
                    else:
                        self.resubmitted += 1
                state.remove(batch)  # its answers are in the cache now
        if self.resubmitted:
            logger.warning("%d batch items failed or were left unanswered and were submitted again", self.resubmitted)

    def _limits(self) -> dict[str, int]:
        return {"max_requests": self.max_requests, "max_bytes": self.max_bytes}

    def _submit(self, batch: SubmittedBatch, lines: dict[str, bytes], state: BatchState) -> None:
        """Upload the batch's input file and create the batch, recording each id the moment it exists."""
        data = b"".join(lines[n] for n in batch.custom_ids)
        uploaded = self.client.files.create(file=(f"srt-{batch.fingerprint}.jsonl", data), purpose="batch")
        batch.input_file_id = uploaded.id
        state.add(batch)  # a kill from here on finds the file, and the batch made from it
        self._create(batch, state)

    def _create(self, batch: SubmittedBatch, state: BatchState) -> None:
        created = self.client.batches.create(
            input_file_id=batch.input_file_id,
            endpoint=CHAT_URL,
            completion_window=COMPLETION_WINDOW,
            metadata={"srt_requests": batch.fingerprint, "srt_submission": str(batch.submission)},
        )
        batch.batch_id = created.id
        state.save()
        self.submitted += 1
        logger.info(
            "submitted batch %s: %d requests (%s); waiting for it, and a killed run picks it up again from %s",
            created.id,
            len(batch.custom_ids),
            "first submission" if batch.submission == 1 else f"submission {batch.submission}",
            self.state_path,
        )

    def _adopt(self, batch: SubmittedBatch, state: BatchState) -> None:
        """A recorded batch whose creation was not recorded (killed in between): the provider's, if it made one
        from the uploaded file, else a new one from that file."""
        for made in self.client.batches.list(limit=100):
            if made.input_file_id == batch.input_file_id:
                batch.batch_id = made.id
                state.save()
                return
        self._create(batch, state)

    def _wait(
        self, batches: list[SubmittedBatch], state: BatchState
    ) -> Iterator[tuple[SubmittedBatch, dict[str, Answer], str]]:
        """Each batch with its answers and, for the requests it left unanswered, why, as each one ends."""
        for batch in batches:
            if batch.batch_id is None:
                self._adopt(batch, state)
        total = sum(len(b.custom_ids) for b in batches)
        bar = tqdm(total=total, desc="Teacher batches", unit="req", disable=not self.progress, dynamic_ncols=True)
        waiting = list(batches)
        done: dict[str, int] = {}
        try:
            while waiting:
                for batch in list(waiting):
                    remote = self.client.batches.retrieve(batch.batch_id)
                    counts = remote.request_counts
                    done[batch.batch_id] = (counts.completed + counts.failed) if counts is not None else 0
                    if remote.status not in ENDED:
                        continue
                    waiting.remove(batch)
                    done[batch.batch_id] = len(batch.custom_ids)
                    if remote.status == "failed":
                        state.remove(batch)
                        raise TeacherError(f"batch {remote.id} failed: {_errors(remote)}")
                    answers = {}
                    for file_id in (remote.error_file_id, remote.output_file_id):
                        if file_id:
                            text = self.client.files.content(file_id).text
                            answers.update(read_output(text, f"batch {remote.id} file {file_id}"))
                    yield batch, answers, f"batch {remote.status} before answering it"
                bar.n = sum(done.values())
                bar.refresh()
                if waiting:
                    self.sleep(self.poll_seconds)
        finally:
            bar.close()


def _errors(remote: Any) -> str:
    errors = getattr(getattr(remote, "errors", None), "data", None) or []
    return "; ".join(f"{e.code}: {e.message}" + (f" (line {e.line})" if e.line else "") for e in errors) or "no reason"
