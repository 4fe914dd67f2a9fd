"""edge_runtime.detect: streaming detection == offline detection; gaps keep event times right;
messages (edge_runtime.message, printed by the print sink) match the schema."""

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import burst_audio, regular_bursts

from edge_runtime.audio import Conformer, Source, StdinSource, WavSource
from edge_runtime.contract.events import DecoderConfig, decode_events
from edge_runtime.contract.model import TFLiteModel, model_geometry
from edge_runtime.contract.times import iso_utc
from edge_runtime.contract.wav import write_wav
from edge_runtime.contract.windows import track
from edge_runtime.detect import Detector, Pipeline
from edge_runtime.message import detection_message, event_id, message_builder
from edge_runtime.sinks import FanOut
from edge_runtime.sinks.print import PrintSink

T0 = 1704067200.0  # 2024-01-01T00:00:00Z
SCHEMA = Path(__file__).resolve().parents[1] / "edge_runtime" / "contract" / "schemas" / "detection.schema.json"
DECODER = DecoderConfig(threshold=[0.5, 0.5], hysteresis=0.1, max_duration_s=30.0)


def offline(model, audio):
    probs = track(audio, model_geometry(model.card), model.window_fn)
    return decode_events(probs, model.card.labels, model.card.frame_rate_hz, DECODER)


def key(events):
    return sorted((e.label, round(e.start_s, 6), round(e.end_s, 6)) for e in events)


@pytest.fixture(scope="module")
def model(energy_model):
    return TFLiteModel(energy_model)


def test_streaming_in_any_chunking_equals_offline(model):
    audio = burst_audio(7.0, regular_bursts(7.0))
    expected = offline(model, audio)
    assert len(expected) == 10  # 7 bursts, 3 of them also very loud
    rng = np.random.default_rng(0)
    det = Detector(model.window_fn, model.card, model_geometry(model.card), DECODER, "dev", T0)
    got, pos = [], 0
    while pos < len(audio):
        n = int(rng.integers(1, 6000))
        got += det.push(audio[pos : pos + n])
        pos += n
    got += det.flush()
    assert [(d.label, d.stream_start_s, d.stream_end_s) for d in sorted(
        got, key=lambda d: (d.stream_start_s, d.label))] == [
        (e.label, e.start_s, e.end_s) for e in expected]
    for d, e in zip(sorted(got, key=lambda d: (d.stream_start_s, d.label)), expected, strict=True):
        assert d.confidence_max == pytest.approx(e.confidence_max, abs=1e-9)
        assert d.start == T0 + e.start_s


def test_event_ids_are_deterministic(model):
    audio = burst_audio(3.0, [(1.0, 0.3, 0.3)])

    def ids(device, t0):
        det = Detector(model.window_fn, model.card, model_geometry(model.card), DECODER, device, t0)
        return [d.event_id for d in det.push(audio) + det.flush()]

    assert ids("a", T0) == ids("a", T0)
    assert ids("a", T0) != ids("b", T0) and ids("a", T0) != ids("a", T0 + 1)
    onset = round(T0 * 16000) + 16000
    assert ids("a", T0) == [event_id("a", model.card.sha256, "loud", onset)]


def test_a_gap_closes_the_segment_and_keeps_later_times_right(model):
    det = Detector(model.window_fn, model.card, model_geometry(model.card), DECODER, "d", T0)
    first = burst_audio(2.0, [(1.7, 0.5, 0.3)])  # the burst is cut by the gap
    second = burst_audio(2.0, [(0.5, 0.3, 0.3)])
    out = det.push(first, at=0) + det.push(second, at=16000 * 5) + det.flush()
    times = sorted((d.stream_start_s, d.stream_end_s) for d in out)
    assert times == [(1.7, 2.0), (5.5, 5.8)]
    assert det.segments == 2


def test_message_matches_schema(model):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    det = Detector(model.window_fn, model.card, model_geometry(model.card), DECODER, "pi-7", T0)
    d = (det.push(burst_audio(2.0, [(0.5, 0.3, 0.95)])) + det.flush())[0]
    msg = detection_message(d, model.card, "pi-7", site="kalahari-3", lat=-26.9, lon=21.8)
    out = io.StringIO()
    to_message = message_builder(model.card, "pi-7", site="kalahari-3", lat=-26.9, lon=21.8)
    PrintSink(to_message, out, clock=lambda: T0 + 5).handle([d])
    printed = json.loads(out.getvalue())
    assert printed == {**msg, "published_at": "2024-01-01T00:00:05.000Z"}
    jsonschema.validate(printed, schema)
    assert printed["start"] == "2024-01-01T00:00:00.500Z" and printed["duration_s"] == 0.3
    assert printed["location"] == {"lat": -26.9, "lon": 21.8} and printed["site"] == "kalahari-3"
    jsonschema.validate({**printed, "published_at": iso_utc(T0)}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**printed, "unexpected": 1}, schema)


class Collect(list):
    """A sink that keeps what it is handed."""

    essential = True

    def handle(self, detections):
        self.extend(detections)

    def status(self, stats):
        pass

    def close(self, timeout_s):
        return 0


def run_pipeline(model, source, buffer_s=30.0):
    conformer = Conformer(source.sample_rate, source.channels, 16000)
    det = Detector(model.window_fn, model.card, model_geometry(model.card), DECODER, "d", T0)
    got = Collect()
    pipe = Pipeline(source, conformer, det, FanOut([got]), buffer_s=buffer_s)
    pipe.start()
    assert pipe.join(30)
    assert pipe.error is None
    return got, pipe.stats()


def test_pipeline_on_a_file_equals_offline(model, tmp_path):
    audio = burst_audio(6.0, regular_bursts(6.0))
    path = tmp_path / "a.wav"
    write_wav(path, audio, 16000)
    got, stats = run_pipeline(model, WavSource(path, block_s=0.05))
    from edge_runtime.contract.wav import read_wav

    expected = offline(model, read_wav(path)[0][:, 0])  # the 16-bit file, as offline tools read it
    assert key([_event(d) for d in got]) == key(expected)
    assert stats["audio_s"] == 6.0 and stats["dropped_audio_s"] == 0 and stats["overruns"] == 0


def test_a_file_runs_inline_and_a_realtime_file_through_the_ring_with_the_same_events(
        model, tmp_path):
    """A file read as fast as possible is processed in the inference thread itself, in
    blocks of at least BATCH_BLOCK_S (no capture thread, no hand-off); paced to real time it
    is live and goes through the ring buffer. Same events, same ids, either way."""
    from edge_runtime.audio.sources import BATCH_BLOCK_S

    audio = burst_audio(6.0, regular_bursts(6.0))
    path = tmp_path / "a.wav"
    write_wav(path, audio, 16000)
    fast = WavSource(path, block_s=0.05)
    assert not fast.live and fast.block == round(BATCH_BLOCK_S * 16000)
    live = WavSource(path, block_s=0.5, realtime=True)
    assert live.live and live.block == 8000  # live audio keeps its block (latency)
    live.realtime = False  # ... but is not paced here: the test needs no 6 s of wall time
    conformer = Conformer(16000, 1, 16000)
    det = Detector(model.window_fn, model.card, model_geometry(model.card), DECODER, "d", T0)
    inline = Pipeline(fast, conformer, det, FanOut([Collect()]))
    assert inline.inline and not Pipeline(live, conformer, det, FanOut([Collect()])).inline
    got_fast, stats_fast = run_pipeline(model, fast)
    got_live, stats_live = run_pipeline(model, live)
    assert got_fast and [(d.event_id, d.start, d.end) for d in got_fast] == \
        [(d.event_id, d.start, d.end) for d in got_live]
    assert stats_fast["audio_s"] == stats_live["audio_s"] == 6.0


def test_inline_pipeline_stops_when_asked_and_reports_a_source_error_after_finishing(
        model, tmp_path):
    class Failing(Source):
        sample_rate, channels, live, description = 16000, 1, False, "fails after 2 s"

        def run(self, put, stop):
            audio = burst_audio(2.0, [(0.5, 0.3, 0.95)])
            put(audio[:, None])
            raise OSError("disk gone")

    got, det = Collect(), Detector(model.window_fn, model.card, model_geometry(model.card),
                                   DECODER, "d", T0)
    pipe = Pipeline(Failing(), Conformer(16000, 1, 16000), det, FanOut([got]))
    pipe.start()
    assert pipe.join(30)
    assert isinstance(pipe.error, OSError)  # what was read is still finished:
    assert any(d.label == "loud" and d.stream_start_s == 0.5 for d in got)
    assert pipe.stats()["audio_s"] == 2.0

    class Endless(Source):
        sample_rate, channels, live, description = 16000, 1, False, "never ends"

        def run(self, put, stop):
            while not stop.is_set():
                put(np.zeros((1600, 1), np.float32))

    det = Detector(model.window_fn, model.card, model_geometry(model.card), DECODER, "d", T0)
    pipe = Pipeline(Endless(), Conformer(16000, 1, 16000), det, FanOut([Collect()]))
    pipe.start()
    pipe.stop()
    assert pipe.join(30) and pipe.error is None


def test_pipeline_resamples_stereo_48k(model, tmp_path):
    bursts = regular_bursts(4.0)
    mono = burst_audio(4.0, bursts, sample_rate=48000)
    path = tmp_path / "stereo48k.wav"
    write_wav(path, np.stack([mono, 0.9 * mono], 1), 48000, bits=24)
    got, stats = run_pipeline(model, WavSource(path))
    expected = offline(model, burst_audio(4.0, bursts))
    g, e = key([_event(d) for d in got]), key(expected)
    assert [x[0] for x in g] == [x[0] for x in e]
    assert np.allclose([x[1:] for x in g], [x[1:] for x in e], atol=0.021)  # within a frame
    assert stats["audio_s"] == pytest.approx(4.0, abs=1e-3)


class FastPipe:
    """A producer that delivers audio 50x faster than real time (a pipe from a fast process)."""

    def __init__(self, data: bytes):
        self.buf = io.BytesIO(data)

    def read(self, n: int) -> bytes:
        time.sleep(0.002)
        return self.buf.read(n)


class SlowModel:
    """The test model on a device 10 ms slower per window (a weak CPU)."""

    def __init__(self, model):
        self.model, self.card = model, model.card

    def window_fn(self, windows):
        time.sleep(0.01 * len(windows))
        return self.model.window_fn(windows)


def test_overruns_are_counted_and_times_stay_true(model):
    """A live source faster than inference into a 0.3 s buffer: audio is dropped, the drops
    are reported, and every detection still lies on a real burst."""
    bursts = regular_bursts(20.0, every_s=0.5, length_s=0.2)
    audio = burst_audio(20.0, bursts)
    source = StdinSource("f32le", 16000, 1, block_s=0.1, stream=FastPipe(audio.tobytes()))
    got, stats = run_pipeline(SlowModel(model), source, buffer_s=0.3)
    assert stats["overruns"] > 0 and stats["dropped_audio_s"] > 0 and stats["segments"] > 1
    assert stats["audio_s"] + stats["dropped_audio_s"] == pytest.approx(20.0, abs=1e-6)
    assert got  # short segments between drops still detect
    for d in got:
        assert any(d.stream_start_s < s + n + 0.02 and d.stream_end_s > s - 0.02
                   for s, n, _ in bursts), d


def _event(d):
    from edge_runtime.contract.events import Event

    return Event(d.label, d.stream_start_s, d.stream_end_s, d.confidence_max, d.confidence_mean)


class SkewedSoundCard(Source):
    """A sound card whose clock runs 10 % fast: 1 s of samples every 0.9 s of wall time.
    Wall time is simulated (`now`, the pipeline's injected clock): no sleeping, so a busy
    machine cannot shift the arrival times the drift correction sees."""

    sample_rate, channels, live, clocked, description = 16000, 1, True, True, "skewed card"

    def __init__(self, audio, skew=0.1, block_s=0.05, t0=1_700_000_000.0):
        self.audio, self.skew, self.block = audio, skew, round(block_s * 16000)
        self.t0 = self.now = t0

    def run(self, put, stop):
        for i in range(0, len(self.audio), self.block):
            x = self.audio[i : i + self.block]
            self.now = self.t0 + (i + len(x)) / 16000 * (1 - self.skew)  # block complete
            put(x[:, None])

    def wall(self, seconds):
        return self.t0 + seconds * (1 - self.skew)


def test_event_times_follow_the_wall_clock_when_the_sound_card_drifts(model):
    bursts = regular_bursts(3.0, every_s=0.5, length_s=0.2)
    card = SkewedSoundCard(burst_audio(3.0, bursts))
    det = Detector(model.window_fn, model.card, model_geometry(model.card), DECODER, "d",
                   card.t0)
    got = Collect()
    pipe = Pipeline(card, Conformer(16000, 1, 16000), det, FanOut([got]), max_clock_drift_s=0.04,
                    drift_blocks=4, clock=lambda: card.now)
    pipe.start()
    assert pipe.join(30) and pipe.error is None
    assert pipe.reanchors >= 2
    late = [d for d in got if d.stream_start_s > 2.0]
    assert late
    onsets: dict[float, float] = {}  # burst -> its earliest detection (a re-anchoring inside
    for d in late:  # a burst starts a new segment, whose first event is not an onset)
        burst = min(bursts, key=lambda b: abs(b[0] - d.stream_start_s))[0]
        onsets[burst] = min(onsets.get(burst, d.start), d.start)
    for burst, start in onsets.items():  # without re-anchoring these would be >= 0.2 s early
        # The simulated clock leaves only the re-anchoring granularity (drift is corrected
        # once it exceeds max_clock_drift_s) and the decoder's frame.
        assert abs(start - card.wall(burst)) < 0.06, (burst, start - card.wall(burst))
