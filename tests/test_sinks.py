"""edge_runtime.sinks: the fan-out hands every detection to every sink once and audio to the
taps; a failing clips sink never stops MQTT delivery (real broker, real outbox); a failing
delivery sink stops the runtime after the other sinks were served."""

import io
import json
import logging

import numpy as np
import pytest
from conftest import Collector

from edge_runtime.config import RuntimeConfig
from edge_runtime.contract.card import read_card
from edge_runtime.detect import Detection
from edge_runtime.message import event_id, message_builder
from edge_runtime.sinks import AudioTap, FanOut
from edge_runtime.sinks.clips import ClipRecorder
from edge_runtime.sinks.mqtt import open_mqtt_sink
from edge_runtime.sinks.print import PrintSink

T0 = 1704067200.0
SR = 16000


def detection(i: int, label: str = "loud") -> Detection:
    start = 0.5 + i
    onset = round((T0 + start) * SR)
    return Detection(event_id("dev", "sha", label, onset), label, T0 + start, T0 + start + 0.3,
                     0.9, 0.8, onset, start, start + 0.3)


class Keep:
    """A sink that records every call."""

    essential = True

    def __init__(self):
        self.handled: list[Detection] = []
        self.stats: list[dict] = []
        self.closed = 0

    def handle(self, detections):
        self.handled.extend(detections)

    def status(self, stats):
        self.stats.append(stats)

    def close(self, timeout_s):
        self.closed += 1
        return 2


class Tap(Keep):
    def __init__(self):
        super().__init__()
        self.fed: list[tuple[int, int]] = []

    def feed(self, mono, at):
        self.fed.append((at, len(mono)))


class Broken(Keep):
    """A sink whose every call fails (a full disk, a bug)."""

    def __init__(self, essential: bool):
        super().__init__()
        self.essential = essential

    def handle(self, detections):
        raise OSError(28, "No space left on device")

    def feed(self, mono, at):
        raise OSError(28, "No space left on device")

    def close(self, timeout_s):
        return 0


def test_every_detection_reaches_every_sink_once_and_audio_only_the_taps(caplog):
    a, tap, b = Keep(), Tap(), Keep()
    fan = FanOut([a, tap, b])
    assert fan.taps == [tap] and isinstance(tap, AudioTap) and not isinstance(a, AudioTap)
    batches = [[detection(0)], [detection(1), detection(1, "very_loud")], [detection(2)]]
    with caplog.at_level(logging.INFO, logger="edge_runtime.sinks"):
        for i, batch in enumerate(batches):
            fan.feed(np.zeros(1600, np.float32), i * 1600)
            fan.handle(batch)
    every = [d for batch in batches for d in batch]
    assert a.handled == tap.handled == b.handled == every
    assert tap.fed == [(0, 1600), (1600, 1600), (3200, 1600)]
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("detected")]
    assert logged == [f"detected {d.label} {d.stream_start_s:.3f}-{d.stream_end_s:.3f} s "
                      f"(max 0.90) id {d.event_id}" for d in every]  # once per detection
    fan.status({"audio_s": 1.0})
    assert a.stats == b.stats == [{"audio_s": 1.0}]
    assert fan.close(1.0) == 6 and a.closed == b.closed == tap.closed == 1


def test_a_failing_delivery_sink_is_raised_after_the_others_were_served():
    before, after = Keep(), Keep()
    fan = FanOut([before, Broken(essential=True), after])
    with pytest.raises(OSError, match="No space left"):
        fan.handle([detection(0)])
    assert before.handled == after.handled == [detection(0)]
    assert fan.errors == {"Broken": 1}


def test_a_failing_clips_sink_does_not_stop_mqtt_delivery(broker, energy_model, tmp_path,
                                                          caplog):
    cfg = RuntimeConfig()
    cfg.device.id = "dev"
    cfg.mqtt.host, cfg.mqtt.port = "127.0.0.1", broker.port
    cfg.outbox.path = str(tmp_path / "outbox.sqlite")
    card = read_card(energy_model)
    sub = Collector(broker)
    mqtt = open_mqtt_sink(cfg, message_builder(card, "dev", site="s"))
    clips_dir = tmp_path / "clips"
    clips = ClipRecorder(clips_dir, SR, pre_s=0.1, post_s=0.1)
    clips_dir.rmdir()
    clips_dir.write_text("not a folder any more")  # every clip write fails
    broken = Broken(essential=False)  # and a tap that raises
    fan = FanOut([mqtt, clips, broken])
    sent = [detection(i) for i in range(5)]
    with caplog.at_level(logging.ERROR):
        for i, d in enumerate(sent):
            fan.feed(np.zeros(SR, np.float32), i * SR)
            fan.handle([d])  # no exception: clips are not essential
        assert fan.close(10.0) == 0  # everything acknowledged
    assert sub.wait_for(lambda s: len(s.detections()) >= len(sent))
    assert sorted(m["event_id"] for m in sub.detections()) == sorted(d.event_id for d in sent)
    assert fan.errors == {"Broken": 10}
    assert "clip" in caplog.text and "not written" in caplog.text
    assert not list(tmp_path.glob("*.wav"))
    sub.close()


def test_print_sink_writes_stamped_json_lines(energy_model):
    out = io.StringIO()
    card = read_card(energy_model)
    sink = PrintSink(message_builder(card, "dev"), out, clock=lambda: T0 + 1)
    sink.handle([detection(0), detection(1)])
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [m["event_id"] for m in lines] == [detection(0).event_id, detection(1).event_id]
    assert {m["published_at"] for m in lines} == {"2024-01-01T00:00:01.000Z"}
    assert sink.close(1.0) == 0
