"""The teacher through a provider's Batch API: OpenAI's, or any server that implements its files and batches
endpoints.

The requests the cache lacks are written as batch input files (the format ``offline.py`` exports), uploaded with
the ``openai`` client's files API and submitted as batches, split at the provider's per-batch limits. The
submitted batches are recorded in a state file beside the teacher cache before anything waits on them, so a
killed run started again with the same command picks them up instead of paying for them twice; should that record
be lost, each batch's metadata carries a fingerprint of its requests, by which the provider's list of batches finds
it again before anything is submitted. Answers go through ``on_answer`` into the same durable cache as online
ones; items that failed, or that an expired or cancelled batch left unanswered, are submitted again (``resubmits``
times), then reported as failed requests. The provider's refusals are one line without the key.
"""

from __future__ import annotations

import contextlib
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
from srt_trainer.teachers.base import Answer, Conversation, DelegatingTeacher, OnAnswer, SamplingConfig, TeacherError
from srt_trainer.teachers.offline import CHAT_URL, Results, custom_id, request_body, result_answer
from srt_trainer.teachers.openai_teacher import API_KEY_ENV, OpenAITeacher, status_message

logger = logging.getLogger(__name__)

# OpenAI's limits per batch (other providers' are the same or larger)
MAX_REQUESTS = 50_000
MAX_BYTES = 200 * 2**20
COMPLETION_WINDOW = "24h"  # the one window the Batch API accepts
ENDED = ("completed", "expired", "cancelled", "failed")
ACTIVE = ("validating", "in_progress", "finalizing")
# how far back the provider's batches are looked through for ones a lost state file recorded (newest first)
LOOKBACK_SECONDS = 7 * 24 * 3600
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
            # its batches are not lost: the provider lists them, each with the fingerprint of its requests
            kept = path.with_name(path.name + ".corrupt")
            path.replace(kept)
            logger.warning(
                "%s: not a batch state file (%s); kept as %s, and the batches it recorded are looked for at the "
                "provider by their requests instead of being submitted again",
                path,
                e,
                kept,
            )
            return cls(path)
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


def read_output(results: Results, text: str, where: str) -> Results:
    """``results`` with the answers of a batch's output or error file added (see ``Results``)."""
    for k, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise TeacherError(f"{where} line {k}: invalid JSON: {e.msg}") from None
        if not isinstance(item, dict) or not item.get("custom_id"):
            raise TeacherError(f"{where} line {k}: not a batch result (no custom_id)")
        results.add(item["custom_id"], result_answer(item, f"{where} line {k}"), f"{where} line {k}")
    return results


class BatchTeacher(DelegatingTeacher):
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

    teacher: OpenAITeacher

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
        super().__init__(teacher)
        self.state_path = Path(state_path)
        self.poll_seconds = poll_seconds
        self.max_requests, self.max_bytes = max_requests, max_bytes
        self.resubmits = max(0, resubmits)
        self.progress = progress
        self.sleep = sleep
        self.submitted = 0  # batches this teacher created
        self.resubmitted = 0  # items it submitted again
        self.adopted = 0  # batches of an earlier run it picked up
        self.recovered = 0  # batches found at the provider that the state file did not record
        self._client: Any = None

    def describe(self) -> str:
        return f"state={self.state_path}"

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
        with self._provider("read the batches"):
            self._generate(lines, positions, on_answer)

    def _generate(self, lines: dict[str, bytes], positions: dict[str, list[int]], on_answer: OnAnswer) -> None:
        state = BatchState.load(self.state_path)
        tries = dict.fromkeys(lines, 0)
        looked_up: set[str] = set()  # the provider's batches already taken up in this call

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
            groups = list(split_requests({n: v for n, v in lines.items() if n not in covered}, **self._limits()))
            if groups:  # before paying for them: a batch of these requests the state does not record (lost, or
                # the state file was removed) is found at the provider by its requests' fingerprint
                found = self._find_unrecorded(groups, lines, state, looked_up)
                if found:
                    mine += found
                    covered |= {name for b in found for name in b.custom_ids}
                    groups = list(
                        split_requests({n: v for n, v in lines.items() if n not in covered}, **self._limits())
                    )
            for group in groups:
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

    @contextlib.contextmanager
    def _provider(self, what: str) -> Iterator[None]:
        """The provider's refusals and an unreachable endpoint as one line that names the endpoint and what to do,
        never the key (some gateways echo it) and never the client's traceback."""
        import openai

        where = self.teacher.base_url or "api.openai.com"
        try:
            yield
        except openai.APIStatusError as e:
            detail = self.teacher.scrub(f"HTTP {e.status_code}: {status_message(e)}")
            hint = {
                401: f"check {API_KEY_ENV}",
                403: f"check {API_KEY_ENV} and the project's access to the Batch API",
                404: "does this endpoint serve the Batch API (its files and batches endpoints)?",
            }.get(
                e.status_code,
                f"run the same command again later: the batches submitted are recorded in {self.state_path}",
            )
            raise TeacherError(f"{where} refused to {what}: {detail}; {hint}") from None
        except openai.APIConnectionError as e:
            detail = self.teacher.scrub(str(e.__cause__ or e))[:300]
            raise TeacherError(
                f"{where}: cannot reach the Batch API to {what} ({detail}); the batches submitted so far are recorded "
                f"in {self.state_path}: run the same command again to pick them up"
            ) from None

    def _find_unrecorded(
        self, groups: list[list[str]], lines: dict[str, bytes], state: BatchState, looked_up: set[str]
    ) -> list[SubmittedBatch]:
        """Batches at the provider, made by a run of these requests, that ``state`` does not record: one whose
        requests are one of ``groups`` (the same command splits the same requests alike), or one still running
        whose input file holds any of ``lines``. A batch that ended is taken only if it answered something (an
        answer paid for and not yet read): otherwise its requests are simply submitted again. Each is recorded in
        ``state`` before it is waited on."""
        wanted = {SubmittedBatch(g).fingerprint: g for g in groups}
        known = {b.batch_id for b in state.batches} | {b.input_file_id for b in state.batches} | looked_up
        cutoff = time.time() - LOOKBACK_SECONDS
        found = []
        with self._provider("list the batches"):
            for made in self.client.batches.list(limit=100):
                if made.created_at and made.created_at < cutoff:
                    break  # listed newest first
                meta = made.metadata or {}
                fingerprint = meta.get("srt_requests")
                if not fingerprint or made.id in known or made.input_file_id in known or made.status == "failed":
                    continue
                counts = made.request_counts
                if fingerprint in wanted and (made.status not in ENDED or (counts is not None and counts.completed)):
                    names = wanted.pop(fingerprint)
                elif made.status in ACTIVE:
                    text = self.client.files.content(made.input_file_id).text
                    names = [json.loads(x)["custom_id"] for x in text.splitlines() if x.strip()]
                    if lines.keys().isdisjoint(names):
                        continue
                else:
                    continue
                batch = SubmittedBatch(names, input_file_id=made.input_file_id, batch_id=made.id)
                looked_up.add(made.id)
                state.add(batch)
                found.append(batch)
                self.recovered += 1
                logger.warning(
                    "batch %s (%s, %d requests) carries requests of this run but %s did not record it: waiting for it "
                    "instead of submitting them again",
                    made.id,
                    made.status,
                    len(names),
                    self.state_path,
                )
        return found

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

    def _retrieve(self, batch: SubmittedBatch) -> Any:
        import openai

        try:
            return self.client.batches.retrieve(batch.batch_id)
        except openai.NotFoundError:
            raise TeacherError(
                f"{self.teacher.base_url or 'api.openai.com'} does not know batch {batch.batch_id}, which "
                f"{self.state_path} records (made with another key or endpoint?): run with that key and endpoint, or "
                f"remove {self.state_path} to submit its {len(batch.custom_ids)} requests again (paid again if it ran)"
            ) from None

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
                    remote = self._retrieve(batch)
                    counts = remote.request_counts
                    done[batch.batch_id] = (counts.completed + counts.failed) if counts is not None else 0
                    if remote.status not in ENDED:
                        continue
                    waiting.remove(batch)
                    done[batch.batch_id] = len(batch.custom_ids)
                    if remote.status == "failed":
                        state.remove(batch)
                        raise TeacherError(f"batch {remote.id} failed: {_errors(remote)}")
                    results = Results()
                    for file_id in (remote.error_file_id, remote.output_file_id):
                        if file_id:
                            text = self.client.files.content(file_id).text
                            read_output(results, text, f"batch {remote.id} file {file_id}")
                    yield batch, results.answers, f"batch {remote.status} before answering it"
                bar.n = sum(done.values())
                bar.refresh()
                if waiting:
                    self.sleep(self.poll_seconds)
        finally:
            bar.close()


def _errors(remote: Any) -> str:
    errors = getattr(getattr(remote, "errors", None), "data", None) or []
    return "; ".join(f"{e.code}: {e.message}" + (f" (line {e.line})" if e.line else "") for e in errors) or "no reason"
