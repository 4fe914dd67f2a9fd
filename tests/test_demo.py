"""The demo's wiring without its training: the same `edge-runtime` stage and `meerkit subscribe`
process the demo runs, against a real mosquitto, and the counts its summary is built from."""

import io
import time
from contextlib import redirect_stdout

import pytest

from meerkit.demo import (
    SubscriberProcess,
    _cmd,
    _Echo,
    quality_table,
    runtime_summary,
    stage,
    stages_side_by_side,
    stored_detections,
    subscriber_duplicates,
)


def test_published_equals_stored_through_the_real_subscriber(broker, energy_model, burst_wav,
                                                             tmp_path):
    wav, _ = burst_wav
    db = tmp_path / "detections.sqlite"
    sub = SubscriberProcess([_cmd("meerkit"), "subscribe", "--host", "127.0.0.1", "--port",
                             str(broker.port), "--db", f"sqlite:///{db}", "--print"])
    sub.start(timeout_s=30)
    try:
        lines = stage("edge-runtime", [_cmd("edge-runtime"), "--model", str(energy_model),
                                       "--input", str(wav), "--device-id", "demo-test",
                                       "--mqtt-host", "127.0.0.1", "--mqtt-port",
                                       str(broker.port), "--outbox-path",
                                       str(tmp_path / "outbox.sqlite"),
                                       "--audio-start-time", "2025-06-01T04:00:00Z"])
        stats = runtime_summary(lines)
        deadline = time.monotonic() + 10  # PUBACKed at the broker, maybe not yet delivered
        while len(stored_detections(db)) < stats["published"] and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        assert sub.stop() == 0  # SIGTERM is a clean stop
    stored = stored_detections(db)
    assert stats["published"] == stats["detections"] == 9  # the burst file's events (see
    assert len(stored) == 9                                 # test_runtime_mqtt), all stored
    assert {d["device_id"] for d in stored} == {"demo-test"}
    assert sum(" conf " in line for line in sub.lines) == 9  # --print: one line per event
    assert subscriber_duplicates(sub.lines) == 0


def test_a_subscriber_that_cannot_connect_is_given_up_with_its_cause(tmp_path):
    """The subscriber retries a broker that is down (a server must outlive its broker); the
    demo gives up after its timeout and shows the named cause, then stops the process."""
    from conftest import free_port

    from edge_runtime.contract.errors import UserError

    sub = SubscriberProcess([_cmd("meerkit"), "subscribe", "--mqtt-host", "127.0.0.1",
                             "--mqtt-port", str(free_port()),
                             "--db", f"sqlite:///{tmp_path / 'd.sqlite'}"])
    with pytest.raises(UserError, match="did not subscribe") as err:
        sub.start(timeout_s=5)
    assert "nothing listening" in str(err.value)
    assert sub.proc.poll() is not None  # stopped, not left retrying


def test_progress_bars_are_thinned_in_a_log_and_tensorflow_chatter_dropped():
    echo, out = _Echo(quiet_lines="noisy"), io.StringIO()
    with redirect_stdout(out):
        echo.tty = False
        for i in range(1, 100):
            echo(f"train:  {i}%|###      | {i}/100 [00:01<00:10, 9.0step/s]\n")
        echo("train: 100%|#########| 100/100 [00:11<00:00, 9.0step/s]\n")
        echo("INFO wrote model.pt\n")
        echo("a noisy line\n")
        echo("I0000 00:00:1795460301.456145    2962 port.cc:153] oneDNN custom operations\n")
    printed = out.getvalue().splitlines()
    assert printed[0].strip().startswith("train:  1%")  # the first bar line shows at once
    assert sum("%|" in line for line in printed) == 2  # then only the finished bar
    assert printed[-1] == "    INFO wrote model.pt"


def test_summary_parsers_read_the_real_closing_lines():
    line = ("2025-01-01 INFO edge_runtime.cli: done: 60.0 s of audio, 7 detection(s), "
            "real-time factor 0.0051, 0.0 s of audio dropped, 2 unsent in the outbox\n")
    assert runtime_summary(["x\n", line]) == {"detections": 7, "real_time_factor": 0.0051,
                                             "published": 5}
    assert runtime_summary(["nothing\n"]) == {}
    closing = ("INFO server.subscriber: subscriber stopped: received 9, stored 7, "
               "duplicates 2, rejected 0; 7 rows in the database\n")
    assert subscriber_duplicates([closing]) == 2
    assert subscriber_duplicates([]) is None


def test_quality_table_has_a_row_per_scored_model_and_recall_per_snr_bucket():
    def model(ap, f1, buckets):
        return {"frame_ap": {"macro": ap}, "event": {"micro": {"precision": f1, "recall": f1,
                                                                "f1": f1}},
                "event_recall_by_snr": {"buckets": buckets}}

    verify = {"models": {
        "artifact": model(0.61, 0.72, {"<0 dB": {"n": 4, "recall": 0.25},
                                       ">=10 dB": {"n": 10, "recall": 0.9}}),
        "teacher": model(0.55, 0.70, {"<0 dB": {"n": 4, "recall": float("nan")},
                                      ">=10 dB": {"n": 10, "recall": 1.0}}),
        "baseline": {**model(0.5, 0.6, {}), "event_recall_by_snr": None}}}
    lines = quality_table(verify, "from scratch", "distilled", "labels only").splitlines()
    assert "R <0 dB" in lines[0] and "R >=10 dB" in lines[0]
    rows = {line.split("|")[1].strip(): line for line in lines[2:]}
    assert list(rows) == ["teacher (from scratch)", "student int8 (distilled)",
                          "student fp32 (labels only)"]
    assert "0.610" in rows["student int8 (distilled)"]
    assert "0.90 (n=10)" in rows["student int8 (distilled)"]
    assert "n/a" in rows["teacher (from scratch)"]  # an empty bucket is not a number
    assert rows["student fp32 (labels only)"].count("n/a") == 2


def test_side_by_side_stages_run_together_tag_their_lines_and_fail_loudly(tmp_path):
    import sys

    from edge_runtime.contract.errors import UserError

    code = "import os, sys; print('threads', os.environ.get('OMP_NUM_THREADS')); sys.exit({})"
    done = tmp_path / "done"
    done.touch()
    out = io.StringIO()
    with redirect_stdout(out):
        stages_side_by_side([("first stage", "a", [sys.executable, "-c", code.format(0)], None),
                             ("second stage", "b", [sys.executable, "-c", code.format(0)], None),
                             ("third stage", "c", ["false"], done)])  # exists: skipped
    text = out.getvalue()
    assert "[a] threads 1" in text and "[b] threads 1" in text  # one core each
    assert "(exists:" in text and "[c]" not in text
    with pytest.raises(UserError, match="'bad' failed"), redirect_stdout(io.StringIO()):
        stages_side_by_side([("good", "g", [sys.executable, "-c", code.format(0)], None),
                             ("bad", "b", [sys.executable, "-c", code.format(3)], None)])


def test_the_stream_fades_each_recording_in_and_out():
    import numpy as np

    from meerkit.demo import faded

    audio = np.ones(1000, np.float32)
    out = faded(audio, 100)
    assert out[0] < 0.01 and out[-1] < 0.01 and np.all(out[100:900] == 1.0)
    assert np.all(np.diff(out[:100]) > 0) and audio[0] == 1.0  # a ramp, on a copy
    assert np.array_equal(faded(audio[:3], 100), faded(audio[:3], 1))  # short: at most half
