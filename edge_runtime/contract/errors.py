"""The one exception type for mistakes a user can fix (bad file, bad flag, bad config).

CLIs catch `UserError`, print its message and exit non-zero without a traceback; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, described well enough to fix it."""

    exit_code = 2


def location(path: object, row: int | None = None) -> str:
    """`path` or `path:row` (row is 1-based as a user counts lines, header included)."""
    return f"{path}:{row}" if row is not None else str(path)
