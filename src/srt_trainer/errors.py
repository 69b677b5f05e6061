"""What can go wrong, and the one exit-code convention of every ``srt`` command.

- ``0``: done.
- ``2``: a user error, something the user can fix (a file that cannot be read, a missing option, settings that
  contradict each other, an endpoint that refuses the key): one line ``PROG: message`` on stderr, naming the file
  or option, no traceback. Library code raises ``SRTUserError`` (or a subclass) for these; argparse's own usage
  errors exit 2 as well.
- ``1``: anything else is a bug: Python prints the traceback and exits 1.

Library functions never print and never exit; only the ``cli`` modules do, through ``run_cli``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

EXIT_OK = 0
EXIT_USER_ERROR = 2


class SRTUserError(Exception):
    """An error the user can fix; its message names the file, row or option at fault."""


def one_line(error: BaseException) -> str:
    """The error's message on one line."""
    return " ".join(part.strip() for part in str(error).splitlines() if part.strip()) or type(error).__name__


def setup_logging() -> None:
    """What the commands show: this package's progress at INFO on stderr; HTTP clients only when something is wrong
    (they log a line per request otherwise)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in ("httpx", "httpx2", "openai"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_cli(prog: str, command: Callable[[], object]) -> int:
    """Run a command's body (parsing included) under the convention: ``SRTUserError`` becomes one line on stderr and
    exit 2; other exceptions propagate (the console script prints their traceback and exits 1)."""
    setup_logging()
    try:
        command()
    except SRTUserError as e:
        print(f"{prog}: {one_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    return EXIT_OK
