"""Killing a real run part-way, the way a crash or a pre-empted job would; or stopping an in-process run between
two shards, the state such a kill leaves, where the process is not the point."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid``'s process group and every process below it: torchrun starts each worker in a session of
    its own, which a kill of the launcher's group alone would leave running."""
    import psutil

    try:
        below = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        below = []
    os.killpg(pid, signal.SIGKILL)
    for child in below:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def kill_when(
    cmd: Sequence[str],
    ready: Callable[[], bool],
    timeout: float,
    poll: float = 0.1,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> str:
    """Start ``cmd`` in its own process group, SIGKILL the whole group as soon as ``ready()`` holds (or after
    ``timeout`` seconds), and return what it printed. Fails if the run ends by itself before that."""
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a chatty run never blocks on a full pipe
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not ready():
            if proc.poll() is not None:
                log.seek(0)
                raise AssertionError(f"the run ended before it could be killed:\n{log.read().decode()[-3000:]}")
            time.sleep(poll)
        _kill_tree(proc.pid)
        proc.wait()
        log.seek(0)
        return log.read().decode()


@contextlib.contextmanager
def lock_held_elsewhere(output: str | Path) -> Iterator[None]:
    """Another process holds ``output``'s lock (as a concurrent run of a stage would) until the block ends; the lock
    is the operating system's, so a lock taken in this process would not show how a second run is refused."""
    code = "import time\nfrom srt_trainer.io import output_lock\n"
    code += f"with output_lock({str(output)!r}):\n    print('held', flush=True)\n    time.sleep(60)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()


class Interrupted(BaseException):
    """Stands in for a kill in this process: a BaseException, so no ``except Exception`` on the way catches it."""


@contextlib.contextmanager
def interrupted_after(owner: type, method: str, n: int, what: str) -> Iterator[None]:
    """Run the body as a run stopped dead right after the ``n``-th call of ``owner.method`` returned (its durable
    write done), the state a SIGKILL at that moment leaves; expects the body to be stopped that way."""
    import pytest

    original, calls = getattr(owner, method), []

    def call_then_stop(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        calls.append(args)
        if len(calls) == n:
            raise Interrupted(f"stopped after {n} {what}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(owner, method, call_then_stop)
        with pytest.raises(Interrupted):
            yield


def interrupted_after_shards(n: int) -> contextlib.AbstractContextManager[None]:
    """Stopped right after the ``n``-th finished shard (``ShardStore.write``): a SIGKILL between two shards."""
    from srt_trainer.io import ShardStore

    return interrupted_after(ShardStore, "write", n, "shards")
