"""edge_runtime.outbox: durable, ordered, deduplicated, bounded loudly."""

import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edge_runtime.contract.errors import UserError
from edge_runtime.outbox import DUPLICATE, FULL, ROW_OVERHEAD, STORED, Outbox


def payload(i: int, size: int = 50) -> str:
    return json.dumps({"event_id": f"id{i}", "pad": "x" * size})


def test_rows_come_back_in_order_and_leave_only_on_ack(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    for i in range(5):
        assert box.add(f"id{i}", "t", payload(i)) == STORED
    rows = box.pending(limit=3)
    assert [json.loads(p)["event_id"] for _, _, p in rows] == ["id0", "id1", "id2"]
    assert [json.loads(p)["event_id"] for _, _, p in box.pending(rows[-1][0])] == ["id3", "id4"]
    box.ack(rows[1][0])
    assert box.depth == 4
    assert [json.loads(p)["event_id"] for _, _, p in box.pending()] == ["id0", "id2", "id3", "id4"]


def test_survives_reopen_and_remembers_acknowledged_ids(tmp_path):
    path = tmp_path / "o.sqlite"
    box = Outbox(path)
    for i in range(3):
        box.add(f"id{i}", "t", payload(i))
    box.ack(box.pending()[0][0])
    box.close()
    again = Outbox(path)
    assert again.depth == 2 and again.bytes_used == sum(
        len(payload(i)) + ROW_OVERHEAD for i in (1, 2))
    assert again.add("id0", "t", payload(0)) == DUPLICATE  # acknowledged before the restart
    assert again.add("id1", "t", payload(1)) == DUPLICATE  # still waiting: kept once
    assert again.depth == 2


def test_kill_9_right_after_add_loses_nothing(tmp_path):
    path = tmp_path / "o.sqlite"
    code = (f"import os, signal\nfrom edge_runtime.outbox import Outbox\n"
            f"b = Outbox({str(path)!r})\n"
            "for i in range(20): b.add(f'id{i}', 't', '{\"i\": %d}' % i)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -9
    assert Outbox(path).depth == 20


def test_full_outbox_refuses_new_detections_loudly_and_keeps_the_backlog(tmp_path, caplog):
    one = len(payload(0)) + ROW_OVERHEAD
    box = Outbox(tmp_path / "o.sqlite", max_bytes=3 * one)
    with caplog.at_level(logging.ERROR):
        results = [box.add(f"id{i}", "t", payload(i)) for i in range(5)]
    assert results == [STORED] * 3 + [FULL] * 2
    assert box.full and box.lost == 2 and box.depth == 3
    assert "OUTBOX FULL" in caplog.text and "id3 LOST" in caplog.text and "id4 LOST" in caplog.text
    assert [json.loads(p)["event_id"] for _, _, p in box.pending()] == ["id0", "id1", "id2"]
    box.ack(box.pending()[0][0])
    assert not box.full and box.add("id5", "t", payload(5)) == STORED


def test_corrupt_outbox_file_is_a_clear_error(tmp_path):
    path = tmp_path / "o.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(UserError, match="cannot open .* move the file aside"):
        Outbox(path)


def test_uses_wal(tmp_path):
    path = tmp_path / "o.sqlite"
    Outbox(path).add("a", "t", "{}")
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_new_outbox_and_its_folders_are_private_whatever_the_umask(tmp_path):
    old = os.umask(0o022)  # what a shell outside systemd typically has
    try:
        path = tmp_path / "state" / "edge" / "o.sqlite"
        box = Outbox(path)
        box.add("a", "t", "{}")
        for folder in (tmp_path / "state", tmp_path / "state" / "edge"):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
        for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
        box.close()
    finally:
        os.umask(old)
