"""Write-then-rename: a reader (or a resumed run) sees the old file or the new one, never
half of one. The temporary file is hidden, per process, and beside the target, so the rename
stays on one file system. No fsync: the recorder rewrites small files often, and an SD card
should not pay for it."""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: str | Path, text: str, newline: str | None = None,
                      make_folder: bool = False) -> Path:
    """Replace `path` with `text` (UTF-8) atomically; returns the path. `newline=""` writes
    line endings exactly as given (the csv module's CRLF). `make_folder` creates missing
    folders; without it a missing folder is an OSError (the health file's folder is the
    user's setting, not ours to invent)."""
    path = Path(path)
    if make_folder:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8", newline=newline)
    os.replace(tmp, path)
    return path
