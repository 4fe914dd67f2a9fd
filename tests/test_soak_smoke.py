"""benchmarks/soak.py in miniature (30 s of audio, two broker outages, one SIGKILL): the
benchmark runs end to end and its accounting holds. Correctness only; the real soak (an hour
of audio) is a benchmark, run by hand."""

import json
import subprocess
import sys

import pytest
from conftest import MOSQUITTO, REPO


@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")
def test_a_short_soak_loses_nothing_through_outages_and_a_kill(energy_model, tmp_path):
    out = tmp_path / "soak"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "soak.py"), "--audio-minutes", "0.5",
         "--flap-every-s", "10", "--outage-s", "5", "--model", str(energy_model),
         "--out", str(out)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "soak.json").read_text())
    events = report["events"]
    assert events["expected"] > 20
    assert events["lost"] == 0, events["lost_examples"]
    assert events["duplicates_after_dedup"] == 0 and events["conflicts"] == 0
    assert events["unexpected"] == 0, events["unexpected_examples"]
    assert events["left_in_outbox"] == 0
    assert events["received_distinct"] == events["published"] == events["expected"]
    assert events["delivered"] == events["received_distinct"] + events["redelivered"]
    # the kill hit a runtime with detections waiting (the broker was down), and the restarted
    # one delivered them
    assert report["kill"]["outbox_depth_at_kill"] >= 1
    assert [p["exit"] for p in report["rss"]] == [-9, 0]
    assert report["settings"]["outages"] == [[5, 10], [15, 20]]
    assert report["outbox_depth"]["max"] >= report["kill"]["outbox_depth_at_kill"]
    assert all(len(p) == 3 for p in report["rss_samples"])
    assert (out / "soak.png").stat().st_size > 0
    assert "lost" in done.stdout and "RSS" in done.stdout
