"""The one exception type for mistakes a user can fix (bad file, bad flag, bad config).

CLIs catch `UserError`, print its message and exit non-zero without a traceback; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator


class UserError(Exception):
    """A problem with the user's input, described well enough to fix it."""

    exit_code = 2


def location(path: object, row: int | None = None) -> str:
    """`path` or `path:row` (row is 1-based as a user counts lines, header included)."""
    return f"{path}:{row}" if row is not None else str(path)


def run_handler(handler: Callable[[argparse.Namespace], int | None], args: argparse.Namespace,
                prog: str = "meerkit") -> int:
    """Call a command handler: its exit code, or one line on stderr for a `UserError` (its
    exit code) or Ctrl-C (130). Any other exception is a bug and keeps its traceback."""
    try:
        return int(handler(args) or 0)
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


BROKEN_PIPE_EXIT = 141  # 128 + SIGPIPE: what the shell reports for `yes | head`


@contextlib.contextmanager
def quiet_broken_pipe() -> Iterator[None]:
    """End quietly with exit status 141 (as coreutils do) when the reader of stdout goes away
    (`meerkit ... | head`), instead of a BrokenPipeError traceback. Usable as `with` or as a
    decorator on `main`; stdout is flushed inside, so a pipe closed before the final flush is
    caught here too rather than reported by the interpreter at exit."""
    try:
        try:
            yield
        finally:  # also after SystemExit (argparse's --help): the output may sit in the buffer
            sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes stdout again at exit: point it at /dev/null so that flush is silent.
        devnull = os.open(os.devnull, os.O_WRONLY)
        with contextlib.suppress(OSError, ValueError):
            os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        raise SystemExit(BROKEN_PIPE_EXIT) from None
