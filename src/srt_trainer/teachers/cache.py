"""The durable response cache: every finished answer is appended and flushed before it is used, then fsync'd.

One JSON line per answer, keyed by the sha256 of the teacher, model, messages, sampling settings and ask number.
Appending and flushing puts the line in the operating system's hands at once, so a killed process loses nothing.
The fsync that also protects against a power loss costs milliseconds on most disks, which would cap a fast
endpoint at a few hundred answers per second if every answer waited for its own: by default ("group") a
background thread fsyncs whatever was appended since its last fsync, so lines reach the disk within one fsync's
time of each other, in batches; "always" fsyncs each answer in the caller before returning; ``close`` always
fsyncs. A run killed mid-write leaves at most a torn last line; it is cut off when the file is opened again, so
the next append starts on a clean line.

A cache never blocks a resume: a line that cannot be used (bytes that are not UTF-8, not JSON, an entry without a
key or without answer text) is skipped with a warning, and its prompt is asked again. The file is opened for
appending when the cache is created, so a cache that cannot be written fails before the first request is paid for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from srt_trainer.errors import SRTUserError
from srt_trainer.io import iter_raw_rows
from srt_trainer.teachers.base import Answer, Conversation, SamplingConfig

logger = logging.getLogger(__name__)


def cache_key(
    identity: Mapping[str, Any], messages: Sequence[Mapping[str, str]], sampling: SamplingConfig, ask: int = 0
) -> str:
    """sha256 of everything that decides an answer; ``ask`` > 0 names a re-ask, a distinct request."""
    return cache_keys(identity, [messages], sampling, ask)[0]


_KEY_ENCODER = json.JSONEncoder(sort_keys=True, ensure_ascii=False)


def cache_keys(
    identity: Mapping[str, Any],
    conversations: Iterable[Sequence[Mapping[str, str]]],
    sampling: SamplingConfig,
    ask: int = 0,
) -> list[str]:
    """``cache_key`` of each conversation, the settings they share turned into JSON once, not once per row."""
    identity, settings = dict(identity), sampling.as_dict()
    keys = []
    for messages in conversations:
        payload = {"identity": identity, "messages": [dict(m) for m in messages], "sampling": settings, "ask": ask}
        keys.append(hashlib.sha256(_KEY_ENCODER.encode(payload).encode()).hexdigest())
    return keys


def conversation_hash(messages: Sequence[Mapping[str, str]]) -> str:
    """A short name of a prompt, for logs and side files."""
    return hashlib.sha256(json.dumps([dict(m) for m in messages], ensure_ascii=False).encode()).hexdigest()[:16]


FSYNC_MODES = ("group", "always", "off")


class ResponseCache:
    """Answers by key, in memory, backed by an append-only JSONL file (``path`` None: memory only).

    ``fsync``: "group" (default: a background thread fsyncs batches of appended lines), "always" (each ``put``
    fsyncs before it returns) or "off" (flushed only; for throw-away runs)."""

    def __init__(self, path: str | Path | None, fsync: str = "group") -> None:
        if fsync not in FSYNC_MODES:
            raise ValueError(f"fsync must be one of {FSYNC_MODES}, not {fsync!r}")
        self.path = Path(path) if path is not None else None
        self.fsync = fsync
        self._entries: dict[str, dict[str, Any]] = {}
        self._file = None
        self._lock = threading.Lock()
        self._dirty = threading.Event()
        self._closing = False
        self._syncer: threading.Thread | None = None
        self.fsyncs = 0
        self.torn_lines = 0
        self.skipped = 0  # lines not used (unreadable or without an answer): their prompts are asked again
        if self.path is not None:
            try:
                self._load()
                self._file = self.path.open("a", encoding="utf-8")
            except OSError as e:
                raise TeacherCacheError(f"{self.path}: the teacher cache cannot be written: {e.strerror or e}") from e

    def _load(self) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a torn last line from a killed run: cut it off so appends stay line-aligned
            logger.warning(
                "%s: dropping a torn last line (%d bytes) left by an interrupted run", self.path, len(data) - end
            )
            self.torn_lines += 1
            with self.path.open("r+b") as f:
                f.truncate(end)
        for raw in iter_raw_rows(self.path, "jsonl"):
            entry = raw.value
            if raw.error is not None or not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
                self.torn_lines += 1
                self.skipped += 1
                logger.warning(
                    "%s: line %d skipped (%s); its prompt will be asked again",
                    self.path,
                    raw.line,
                    raw.error or "not a cache entry",
                )
                continue
            if not isinstance(entry.get("text"), str):
                self.skipped += 1
                logger.warning(
                    "%s: line %d skipped (an entry without answer text); its prompt will be asked again",
                    self.path,
                    raw.line,
                )
                continue
            self._entries[entry["key"]] = entry

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> dict[str, Any] | None:
        return self._entries.get(key)

    def put(self, key: str, answer: Answer, **meta: Any) -> None:
        """Store a finished answer durably (only answers with text are cached: failures are asked again)."""
        entry = {
            "key": key,
            "text": answer.text,
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "cut": answer.cut,
            "attempts": answer.attempts,
            "time": round(time.time(), 3),
            **meta,
        }
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        if self.path is not None:
            with self._lock:
                if self._file is None:
                    self._file = self.path.open("a", encoding="utf-8")
                self._file.write(line)
                self._file.flush()  # in the OS's hands: a killed process loses nothing
                if self.fsync == "always":
                    self._fsync_locked()
                elif self.fsync == "group":
                    self._start_syncer()
                    self._dirty.set()
        self._entries[key] = entry

    def _fsync_locked(self) -> None:
        if self._file is not None:
            os.fsync(self._file.fileno())
            self.fsyncs += 1

    def _start_syncer(self) -> None:
        if self._syncer is None:
            self._syncer = threading.Thread(target=self._sync_loop, name="srt-cache-fsync", daemon=True)
            self._syncer.start()

    def _sync_loop(self) -> None:
        while True:
            self._dirty.wait()
            self._dirty.clear()
            with self._lock:
                if self._file is None:
                    return
                fd = os.dup(self._file.fileno())  # fsync outside the lock, so appends never wait for the disk
            try:
                os.fsync(fd)
                self.fsyncs += 1
            finally:
                os.close(fd)
            if self._closing:
                return

    def close(self) -> None:
        """Fsync and close; every answer put so far is on disk when this returns."""
        syncer, self._syncer = self._syncer, None
        if syncer is not None:
            self._closing = True
            self._dirty.set()
            syncer.join()
        with self._lock:
            if self._file is not None:
                if self.fsync != "off":
                    self._fsync_locked()
                self._file.close()
                self._file = None
        self._closing = False

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def batch_state_path(cache: str | Path) -> Path:
    """Where the batches of the teacher cache ``cache`` are recorded (``--teacher_batch``): beside it."""
    cache = Path(cache)
    return cache.with_name(cache.name.removesuffix(".jsonl") + ".batches.json")


class TeacherCacheError(SRTUserError, OSError):
    """The teacher cache cannot be written (a read-only file or folder, a path under a file)."""


def check_cache_writable(path: str | Path | None) -> None:
    """Fail at once, naming the file, when a cache path cannot be appended to (nothing is written to it)."""
    if path is None:
        return
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8"):
            pass
    except OSError as e:
        raise TeacherCacheError(f"{path}: the teacher cache cannot be written: {e.strerror or e}") from e


def load_cache_entries(path: str | Path) -> list[dict[str, Any]]:
    """Every readable entry of a cache file, in the order written (for reports and tests)."""
    return [raw.value for raw in iter_raw_rows(path, "jsonl") if raw.error is None]


__all__ = [
    "Conversation",
    "ResponseCache",
    "TeacherCacheError",
    "cache_key",
    "cache_keys",
    "check_cache_writable",
    "conversation_hash",
    "load_cache_entries",
]
