"""What can go wrong, and the one exit-code convention of every ``srt`` command.

- ``0``: done.
- ``2``: a user error, something the user can fix (a file that cannot be read, a missing option, settings that
  contradict each other, an endpoint that refuses the key): one line ``PROG: message`` on stderr, naming the file
  or option, no traceback. Library code raises ``SRTUserError`` (or a subclass) for these; argparse's own usage
  errors exit 2 as well.
- ``1``: anything else is a bug: Python prints the traceback and exits 1.

Besides ``SRTUserError``, two kinds of errors are the user's to fix and get the one line too: a file the system
refuses (no such file, permission denied, a folder where a file was expected, a read-only or full disk), named
with its path, and an unusable ``--config`` file (missing, not YAML, unknown keys). ``srt --debug ...`` (or
``SRT_DEBUG=1``) prints the traceback of a user error as well.

Library functions never print and never exit; only the ``cli`` modules do, through ``run_cli``.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator

EXIT_OK = 0
EXIT_USER_ERROR = 2


class SRTUserError(Exception):
    """An error the user can fix; its message names the file, row or option at fault."""


def one_line(error: BaseException) -> str:
    """The error's message on one line."""
    return " ".join(part.strip() for part in str(error).splitlines() if part.strip()) or type(error).__name__


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the closest of ``choices`` to a misspelled ``word``, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def invalid_choice(kind: str, word: str, choices: Iterable[str]) -> str:
    """``invalid KIND 'WORD' (did you mean X?); choose from A, B``: a dispatcher's one line for a mistyped name."""
    choices = list(choices)
    return f"invalid {kind} {word!r}{did_you_mean(word, choices)}; choose from {', '.join(choices)}"


def setup_logging() -> None:
    """What the commands show: this package's progress at INFO on stderr; HTTP clients only when something is wrong
    (they log a line per request otherwise)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in ("httpx", "httpx2", "openai"):
        logging.getLogger(name).setLevel(logging.WARNING)


DEBUG_ENV = "SRT_DEBUG"
# errors of the file system that the user fixes (a path, a permission, a disk), whatever code met them
_USER_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
_USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG, errno.ELOOP}
# the modules that parse a command's options and its --config file
_CONFIG_PARSERS = ("trl.scripts.utils", "transformers.hf_argparser", "yaml")


_debug = False


@contextlib.contextmanager
def debugging(on: bool = True) -> Iterator[None]:
    """``--debug`` for the commands run inside: user errors print their traceback too."""
    global _debug
    before, _debug = _debug, on or _debug
    try:
        yield
    finally:
        _debug = before


def debug_enabled() -> bool:
    return _debug or os.environ.get(DEBUG_ENV, "") not in ("", "0", "false", "False")


def _raised_in(error: BaseException, modules: tuple[str, ...]) -> bool:
    tb = error.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_globals.get("__name__", "")
        if name.startswith(modules):
            return True
        tb = tb.tb_next
    return False


def user_error_message(error: BaseException) -> str | None:
    """The one line for an error the user can fix, or None for a bug."""
    if isinstance(error, SRTUserError):
        return one_line(error)
    if isinstance(error, OSError) and (isinstance(error, _USER_OS_ERRORS) or error.errno in _USER_ERRNOS):
        names = [str(n) for n in (error.filename, error.filename2) if n is not None]
        what = error.strerror or one_line(error)
        return f"{' -> '.join(names)}: {what}" if names else what
    parse_error = isinstance(error, (ValueError, TypeError, LookupError)) or type(error).__module__.startswith("yaml")
    if parse_error and _raised_in(error, _CONFIG_PARSERS):
        return f"invalid options or --config file: {one_line(error)}"
    return None


def run_cli(prog: str, command: Callable[[], object]) -> int:
    """Run a command's body (parsing included) under the convention: a user error (``SRTUserError``, a file the
    system refuses, an unusable --config) becomes one line on stderr and exit 2; other exceptions propagate (the
    console script prints their traceback and exits 1). With ``--debug`` a user error's traceback is printed too."""
    setup_logging()
    try:
        command()
    except Exception as e:
        message = user_error_message(e)
        if message is None:
            raise
        if debug_enabled():
            traceback.print_exc()
        print(f"{prog}: {message}", file=sys.stderr)
        return _leave_launch(EXIT_USER_ERROR)
    return _leave_launch(EXIT_OK)


def _leave_launch(code: int) -> int:
    """``code``; in a process of a multi-process launch (``accelerate launch``, ``torchrun``), the process ends here
    with it, once its output is flushed, without the interpreter's shutdown. A gloo worker thread may still be
    releasing the tensors of the last collective, which needs the interpreter; when shutdown has begun, that thread
    aborts the process (SIGABRT, "terminate called without an active exception"), failing a run whose work is done
    and saved. Everything the command wrote is closed by then; the process group was destroyed by the training."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return code
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
