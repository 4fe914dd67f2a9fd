"""audio.stdin_pace: stdin that is a file or a pipe waits for inference (nothing lost); stdin
that is live drops and counts what inference cannot take (issue 12: `cat rec | edge-runtime -i -`
lost 25 of 72 detections)."""

import io
import os
import socket
import subprocess
import threading
import time

import numpy as np
import pytest

from edge_runtime.audio import StdinSource, stdin_pace_for
from edge_runtime.contract.errors import UserError
from edge_runtime.detect import RingBuffer

RATE = 16000


def test_auto_pace_follows_what_stdin_is(tmp_path):
    regular = tmp_path / "rec.raw"
    regular.write_bytes(b"\0" * 64)
    with open(regular, "rb") as fh:
        assert stdin_pace_for(fh) == "block"  # edge-runtime -i - < rec.raw
    r, w = os.pipe()
    with os.fdopen(r, "rb") as reader, os.fdopen(w, "wb"):
        assert stdin_pace_for(reader) == "block"  # cat rec.raw | edge-runtime -i -
    a, b = socket.socketpair()
    with a, b, a.makefile("rb") as stream:
        assert stdin_pace_for(stream) == "realtime"  # a network stream is live
    with open(os.devnull, "rb") as dev:
        assert stdin_pace_for(dev) == "realtime"  # a character device (terminal, sound node)
    assert stdin_pace_for(io.BytesIO(b"")) == "realtime"  # no descriptor: the old behaviour


def test_pace_sets_liveness_and_bad_values_are_user_errors():
    stream = io.BytesIO(b"")
    assert not StdinSource("s16le", RATE, 1, stream=stream, pace="block").live
    live = StdinSource("s16le", RATE, 1, stream=stream, pace="realtime")
    assert live.live and "realtime" in live.description
    with pytest.raises(UserError, match="audio.stdin_pace 'fast' is not one of auto, block"):
        StdinSource("s16le", RATE, 1, stream=stream, pace="fast")


@pytest.fixture
def recording(tmp_path):
    """20 s of s16le mono with a ramp, so that every sample says where it came from."""
    samples = (np.arange(20 * RATE) % 30000 - 15000).astype("<i2")
    path = tmp_path / "rec.raw"
    path.write_bytes(samples.tobytes())
    return path, samples.astype(np.float32) / 32768.0


def cat(path):
    """A real pipe from a process much faster than real time."""
    proc = subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE)
    return proc, proc.stdout


def wait_until(predicate, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


def test_block_through_a_pipe_loses_nothing_to_a_slow_consumer(recording):
    path, expected = recording
    proc, stream = cat(path)
    source = StdinSource("s16le", RATE, 1, block_s=0.1, stream=stream, pace="auto")
    assert source.pace == "block" and not source.live
    ring = RingBuffer(RATE // 2, wait_when_full=not source.live)  # 0.5 s: 40x less than sent

    def capture_main():  # as detect.Pipeline runs a source
        source.run(ring.put, threading.Event())
        ring.close()

    capture = threading.Thread(target=capture_main)
    capture.start()
    # the consumer starts only once the writer is a whole buffer ahead and held back...
    block_frames = source.block_bytes // source.frame_bytes
    wait_until(lambda: ring.fill > ring.capacity - block_frames, "the ring is full")
    got, starts = [], []
    while (item := ring.get(timeout=30)) is not None:  # ...then takes block by block, slowly
        starts.append(item[0])
        got.append(item[1][:, 0])
        time.sleep(0.001)
    capture.join(10)
    proc.wait(10)
    received = np.concatenate(got)
    assert (ring.overruns, ring.dropped_frames) == (0, 0)
    assert len(received) == len(expected)
    np.testing.assert_array_equal(received, expected)
    assert starts == sorted(starts) and starts[0] == 0


def test_realtime_through_a_pipe_drops_and_counts_what_it_cannot_hold(recording):
    path, expected = recording
    proc, stream = cat(path)
    source = StdinSource("s16le", RATE, 1, block_s=0.1, stream=stream, pace="realtime")
    ring = RingBuffer(RATE // 2, wait_when_full=not source.live)
    source.run(ring.put, threading.Event())  # nobody consumes: a live source never waits
    proc.wait(10)
    ring.close()
    assert ring.overruns > 0
    assert ring.fill + ring.dropped_frames == len(expected)  # every sample kept or counted
    while (item := ring.get(timeout=1)) is not None:  # what was kept is what was sent there
        start, block, _ = item
        np.testing.assert_array_equal(block[:, 0], expected[start : start + len(block)])
