"""Files only their owner may read: the device's outbox and the server's database hold
detections (locations of protected species, sometimes) and are created 0600 in folders
created 0700, whatever the umask (outside systemd nobody sets one for us)."""

from __future__ import annotations

import os
from pathlib import Path


def private_folder(folder: str | Path) -> None:
    """Create `folder` and its missing parents, each 0700 (`mkdir(parents=True)` would give
    the parents the umask's mode). Existing folders are left as they are."""
    missing = []
    path = Path(folder)
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:  # another process made it meanwhile
            continue
        os.chmod(path, 0o700)


def private_file(path: str | Path) -> bool:
    """Create an empty file 0600 unless it exists (True if created). An empty file is a valid
    new SQLite database, and SQLite gives its -wal and -shm files the database's mode."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    os.chmod(path, 0o600)  # exact, whatever the umask
    return True
