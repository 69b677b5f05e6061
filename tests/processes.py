"""Killing a real run part-way, the way a crash or a pre-empted job would; or stopping an in-process run between
two shards, the state such a kill leaves, where the process is not the point."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence


def kill_when(
    cmd: Sequence[str],
    ready: Callable[[], bool],
    timeout: float,
    poll: float = 0.1,
    env: Mapping[str, str] | None = None,
) -> str:
    """Start ``cmd`` in its own process group, SIGKILL the whole group as soon as ``ready()`` holds (or after
    ``timeout`` seconds), and return what it printed. Fails if the run ends by itself before that."""
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a chatty run never blocks on a full pipe
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not ready():
            if proc.poll() is not None:
                log.seek(0)
                raise AssertionError(f"the run ended before it could be killed:\n{log.read().decode()[-3000:]}")
            time.sleep(poll)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.seek(0)
        return log.read().decode()


class Interrupted(BaseException):
    """Stands in for a kill in this process: a BaseException, so no ``except Exception`` on the way catches it."""


@contextlib.contextmanager
def interrupted_after_shards(n: int) -> Iterator[None]:
    """Run the body as a run stopped dead right after its ``n``-th finished shard (``ShardStore.write``), the state
    a SIGKILL between two shards leaves; expects the body to be stopped that way."""
    import pytest

    from srt_trainer.io import ShardStore

    write, written = ShardStore.write, []

    def write_then_stop(self, k, rows) -> None:
        write(self, k, rows)
        written.append(k)
        if len(written) == n:
            raise Interrupted(f"stopped after {n} shards")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ShardStore, "write", write_then_stop)
        with pytest.raises(Interrupted):
            yield
