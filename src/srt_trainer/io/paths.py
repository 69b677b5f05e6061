"""Where a stage writes, checked before any work: its output's name and side files, outputs that would destroy an
input, a folder that cannot be written, and the lock a stage holds on its output.

- ``sidecar_path(output, suffix)``: a file beside a stage's output (``scores.jsonl`` → ``scores.summary.json``).
- ``check_distinct_paths`` refuses a stage's outputs that are one of its inputs (links and ``..`` resolved);
  ``check_writable`` tries the output's folder; ``output_lock`` is the advisory lock a stage holds on its output, so
  a second run on the same output stops with a message instead of racing the first.
- ``format_of(path)``: ``json``, ``jsonl`` or ``parquet`` by the file's name.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from srt_trainer.errors import SRTUserError

logger = logging.getLogger(__name__)

OUTPUT_SUFFIXES = (".jsonl", ".parquet")
# what ``flock`` raises on a file system without locks (some network mounts)
_NO_FLOCK = {errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK}
JSONL_SUFFIXES = (".jsonl", ".ndjson")


class OutputPathError(SRTUserError, ValueError):
    """A stage's output file has a name the stage cannot write."""


def sidecar_path(output: str | Path, suffix: str) -> Path:
    """A file that belongs beside a stage's output: ``scores.jsonl`` → ``scores.<suffix>``."""
    output = Path(output)
    name = output.name
    for ext in (*OUTPUT_SUFFIXES, ".json"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return output.with_name(f"{name}.{suffix}")


def check_output_path(path: str | Path) -> Path:
    """A stage's output: JSONL or Parquet."""
    path = Path(path)
    if not path.name.endswith(OUTPUT_SUFFIXES):
        raise OutputPathError(f"{path}: the output must end in .jsonl or .parquet")
    return path


class OutputLockedError(SRTUserError, RuntimeError):
    """Another run holds the lock of a stage's output."""


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same path once links and ``..`` are resolved, or hard links."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def check_distinct_paths(inputs: Mapping[str, str | Path | None], outputs: Mapping[str, str | Path | None]) -> None:
    """Refuse, before any work, an output that is one of the inputs or another output (paths resolved, symbolic and
    hard links included): writing it would destroy the input. Keys are what the user typed (``--data``,
    ``--output``); None values are skipped."""
    named_in = [(k, Path(v)) for k, v in inputs.items() if v is not None and str(v)]
    named_out = [(k, Path(v)) for k, v in outputs.items() if v is not None and str(v)]
    for out_name, out in named_out:
        for in_name, src in named_in:
            if same_file(out, src):
                raise OutputPathError(
                    f"{out}: {out_name} is the same file as {in_name} {src}; writing it would destroy the input, "
                    f"choose another {out_name}"
                )
    for i, (name_a, a) in enumerate(named_out):
        for name_b, b in named_out[i + 1 :]:
            if same_file(a, b):
                raise OutputPathError(f"{a}: {name_a} and {name_b} are the same file; choose different names")


def check_writable(path: str | Path) -> Path:
    """Create the folder of an output file and try a temporary file there, so that a path that cannot be written
    fails before any work is done (``OutputPathError`` naming it)."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{path}: is a folder, not a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise OutputPathError(f"{path}: cannot be written: {e.strerror or e}") from e
    return path


@contextlib.contextmanager
def output_lock(output: str | Path, what: str = "output") -> Iterator[Path]:
    """Hold the advisory lock of ``output`` (``<stem>.lock`` beside it) for the duration: a second run on the same
    output stops at once with ``OutputLockedError`` instead of racing this one over its files. The lock is the
    operating system's (``flock``): a killed run never leaves it held, so the next run can always resume. A run that
    ends, finished or refused, removes the lock file it created, leaving no lock file beside its outputs (a file
    it found there, an older run's, is left as it was)."""
    lock_path = sidecar_path(output, "lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd, created = _take_lock(lock_path)
    except BlockingIOError:
        raise OutputLockedError(
            f"{output}: another run is writing this {what} (it holds {lock_path}); wait for it to finish or choose "
            f"another output"
        ) from None
    except OSError as e:
        raise OutputPathError(f"{lock_path}: cannot be created: {e.strerror or e}") from e
    try:
        yield lock_path
    finally:
        if created:  # removed while still held: a run that opens it now finds another file (see ``_take_lock``)
            lock_path.unlink(missing_ok=True)
        os.close(fd)  # releases the lock


def _take_lock(path: Path) -> tuple[int, bool]:
    """The descriptor of ``path`` with its ``flock`` held, and whether this call created the file; raises
    ``BlockingIOError`` when another process holds it. filelock keeps a lock file for good (its waiters share the
    inode); a lock file that may be removed needs the check below: the file locked must still be the one at
    ``path``, or a run that removed it since was its holder, and the lock is taken again on the new file."""
    import fcntl

    while True:
        try:
            fd, created = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), True
        except FileExistsError:
            try:
                fd, created = os.open(path, os.O_RDWR), False
            except FileNotFoundError:  # removed between the two opens
                continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd, created
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno not in _NO_FLOCK:
                os.close(fd)
                raise
            logger.warning("%s: this file system has no file locks; two runs on one output are not kept apart", path)
            return fd, created
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the file was removed by the run that held it: lock the one there now


def format_of(path: str | Path) -> str | None:
    """``json``, ``jsonl`` or ``parquet`` from the file's extension; None for any other name."""
    name = Path(path).name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(".json"):
        return "json"
    if name.endswith(".parquet"):
        return "parquet"
    return None
