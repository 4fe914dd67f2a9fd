"""Time and number formatting shared by the wire format, batch tables and datasets."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np


def iso_utc(t: float) -> str:
    """Unix time -> ISO 8601 UTC with millisecond precision, e.g. 2024-01-31T23:59:59.123Z."""
    when = datetime.fromtimestamp(round(t, 3), timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_number(x: float) -> str:
    """Shortest text that reads back to the same float, never in scientific notation."""
    return np.format_float_positional(float(x), trim="-")
