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

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import weakref
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


# Room kept free beside the cache for the answers already in flight when its disk fills up: they are paid for, so
# they are written into it before the run stops (64 answers of 2,048 tokens of any script fit in 4 MiB).
RESERVE_BYTES = 4 * 2**20

_OPEN: weakref.WeakValueDictionary[str, ResponseCache] = weakref.WeakValueDictionary()


class ResponseCache:
    """Answers by key, in memory, backed by an append-only JSONL file (``path`` None: memory only).

    ``fsync``: "group" (default: a background thread fsyncs batches of appended lines), "always" (each ``put``
    fsyncs before it returns) or "off" (flushed only; for throw-away runs).

    One run at a time uses a cache file: a second run (another process) opening it waits until the first closes it,
    then reads the answers the first received and asks only for the rest, so that two runs sharing a cache never
    pay twice for one prompt. When the cache's disk fills up, a reserve kept beside it (``<cache>.reserve``, removed
    on close) is given up so that the answers already on their way are still kept; every ``put`` from then on
    raises ``TeacherCacheError`` naming the file, after keeping its answer when it can, so the run stops asking."""

    def __init__(self, path: str | Path | None, fsync: str = "group") -> None:
        if fsync not in FSYNC_MODES:
            raise ValueError(f"fsync must be one of {FSYNC_MODES}, not {fsync!r}")
        self.path = Path(path) if path is not None else None
        self.fsync = fsync
        self._entries: dict[str, dict[str, Any]] = {}
        self._file: Any = None
        self._lock = threading.Lock()
        self._dirty = threading.Event()
        self._closing = False
        self._syncer: threading.Thread | None = None
        self._reserve: Path | None = None
        self._full: OSError | None = None  # the disk filled up: the run must stop
        self._sync_error: OSError | None = None
        self.fsyncs = 0
        self.torn_lines = 0
        self.skipped = 0  # lines not used (unreadable or without an answer): their prompts are asked again
        self.lost = 0  # answers that could not be written
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("ab", buffering=0)
            except OSError as e:
                raise self._error(e) from None
            self._take()
            try:
                self._load()
            except OSError as e:
                raise self._error(e) from None
            self._reserve = self._make_reserve()

    def _error(self, e: OSError, what: str = "") -> TeacherCacheError:
        return TeacherCacheError(f"{self.path}: the teacher cache cannot be written: {e.strerror or e}{what}")

    def _take(self) -> None:
        """Hold the cache file's lock (waiting for another run that holds it); the operating system's, so a
        killed run never leaves it held."""
        assert self.path is not None and self._file is not None
        name = str(self.path.resolve())
        holder = _OPEN.get(name)
        if holder is not None and holder._thread == threading.get_ident():  # waiting for itself would never end
            self._file.close()
            raise TeacherCacheError(f"{self.path}: this teacher cache is open already (close it first)")
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.warning(
                "%s: another run is using this teacher cache; waiting for it to finish, then its answers are used "
                "here instead of being asked again",
                self.path,
            )
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
            logger.info("%s: the other run is done; going on", self.path)
        except OSError as e:  # a file system without locks: the run goes on unguarded
            logger.debug("%s: not locked (%s)", self.path, e)
        self._thread = threading.get_ident()
        _OPEN[name] = self

    def _make_reserve(self) -> Path | None:
        assert self.path is not None
        reserve = self.path.with_name(self.path.name + ".reserve")
        try:
            free = shutil.disk_usage(self.path.parent).free
            reserve.write_bytes(b"\0" * min(RESERVE_BYTES, free // 4))
        except OSError:
            reserve.unlink(missing_ok=True)
            return None
        return reserve

    def _release_reserve(self) -> bool:
        reserve, self._reserve = self._reserve, None
        if reserve is None:
            return False
        reserve.unlink(missing_ok=True)
        return True

    def _load(self) -> None:
        assert self.path is not None
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a torn last line from a killed run: cut it off so appends stay line-aligned
            logger.warning(
                "%s: dropping a torn last line (%d bytes) left by an interrupted run", self.path, len(data) - end
            )
            self.torn_lines += 1
            with self.path.open("r+b") as f:
                f.truncate(end)
        if not data:
            return
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
        """Store a finished answer durably (only answers with text are cached: failures are asked again).

        Raises ``TeacherCacheError`` when the file cannot be written, and after a full disk (the answer kept when
        the reserve had room for it): the run must stop asking."""
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
        data = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
        if self.path is not None:
            with self._lock:
                if self._file is None:
                    self._file = self.path.open("ab", buffering=0)
                try:
                    self._append(data)  # in the OS's hands at once: a killed process loses nothing
                except OSError as e:
                    self.lost += 1
                    raise self._error(e, self._stopped()) from None
                if self.fsync == "always":
                    self._fsync_locked()
                elif self.fsync == "group":
                    self._start_syncer()
                    self._dirty.set()
        self._entries[key] = entry
        trouble = self._full or self._sync_error
        if trouble is not None:  # kept, but the disk is full (or failed): nothing more may be asked
            raise self._error(trouble, self._stopped())

    def _stopped(self) -> str:
        kept = f"{len(self._entries)} answers are kept in it"
        lost = f", {self.lost} received since could not be" if self.lost else ""
        return f" ({kept}{lost}): make room and run the same command again; what it holds is not asked again"

    def _append(self, data: bytes) -> None:
        """Write one whole line, or none: a full disk first gives up the reserve; a line that still cannot be
        written is cut off again, so the file stays line-aligned."""
        fd = self._file.fileno()
        start = os.fstat(fd).st_size
        done = 0
        while done < len(data):
            try:
                done += os.write(fd, data[done:])
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    self._full = self._full or e
                    if self._release_reserve():
                        logger.warning(
                            "%s: the disk is full; the reserve beside the cache is given up for the answers already "
                            "on their way, and nothing more is asked",
                            self.path,
                        )
                        continue
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise

    def _fsync_locked(self) -> None:
        if self._file is not None:
            try:
                os.fsync(self._file.fileno())
            except OSError as e:
                raise self._error(e, self._stopped()) from None
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
            except OSError as e:  # reported by the next put, and by close
                self._sync_error = e
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
        try:
            with self._lock:
                if self._file is not None:
                    try:
                        if self.fsync != "off":
                            self._fsync_locked()
                    finally:
                        self._file.close()
                        self._file = None
            if self._sync_error is not None:
                raise self._error(self._sync_error, self._stopped())
        finally:
            self._release_reserve()
            if self.path is not None and _OPEN.get(str(self.path.resolve())) is self:
                del _OPEN[str(self.path.resolve())]
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
