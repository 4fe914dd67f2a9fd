"""Silencing native libraries that write straight to file descriptor 2."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_stderr(logger: logging.Logger | None = None) -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the duration, unless `logger` (default: the
    edge_runtime logger) is at debug level.

    Native libraries print to fd 2 directly: PortAudio's start-up and format probing make
    ALSA and JACK print dozens of lines ("ALSA lib pcm.c: Unknown PCM cards.pcm.rear",
    "jack server is not running"), and LiteRT announces its XNNPACK delegate, at every
    start of a recorder; they bury the journal's real messages.
    Only the file descriptor can silence C code; anything another thread logs meanwhile is
    lost too, so keep the block short (device set-up happens before the threads start)."""
    logger = logger or logging.getLogger("edge_runtime")
    if logger.isEnabledFor(logging.DEBUG):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
