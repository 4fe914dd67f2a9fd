import numpy as np
import pytest

from edge_runtime.contract.windows import WindowedStream, WindowGeometry, track


def fake_model(geometry: WindowGeometry):
    """A deterministic 'model': per frame, the mean |x| of its samples, plus a window-position
    channel so the test can see which window each frame came from."""
    spf = geometry.window // geometry.frames

    def fn(windows: np.ndarray) -> np.ndarray:
        energy = np.abs(windows).reshape(len(windows), geometry.frames, spf).mean(-1)
        position = np.broadcast_to(np.arange(geometry.frames, dtype=np.float32),
                                   energy.shape)
        return np.stack([energy, position], -1).astype(np.float32)

    return fn


GEOMETRIES = [WindowGeometry(1600, 800, 50, 25, 16000), WindowGeometry(1600, 1600, 50, 50, 16000),
              WindowGeometry(1600, 320, 50, 10, 16000), WindowGeometry(960, 640, 30, 20, 16000),
              # bounded lookahead (lower latency): 5 frames of right context, and none
              WindowGeometry(1600, 320, 50, 10, 16000, lead_frames=35),
              WindowGeometry(1600, 800, 50, 25, 16000, lead_frames=25)]


@pytest.mark.parametrize("g", GEOMETRIES, ids=str)
@pytest.mark.parametrize("n", [0, 1, 100, 1599, 1600, 1601, 2400, 5000, 16000])
def test_track_covers_every_frame_with_the_most_central_window(g, n):
    rng = np.random.default_rng(n)
    audio = rng.standard_normal(n).astype(np.float32)
    out = track(audio, g, fake_model(g))
    total = g.total_frames(n)
    assert len(out) == total
    if total == 0:
        return
    # The energy channel equals the frame's own samples wherever a real window saw them.
    spf = g.window // g.frames
    padded = np.zeros(total * spf + g.window, np.float32)
    padded[:n] = audio
    expected = np.abs(padded[: total * spf]).reshape(total, spf).mean(-1)
    np.testing.assert_allclose(out[:, 0], expected, rtol=1e-6, atol=1e-7)
    # Interior frames come from the central part of a window, never from its edges.
    positions = out[:, 1]
    interior = slice(g.lead, max(g.lead, total - (g.frames - g.lead - g.hop_frames)))
    assert np.all(positions[interior] >= g.lead)
    assert np.all(positions[interior] < g.lead + g.hop_frames) or g.hop_frames == g.frames


@pytest.mark.parametrize("g", GEOMETRIES, ids=str)
def test_streaming_equals_batch_for_any_chunking(g):
    rng = np.random.default_rng(1)
    for trial in range(20):
        n = int(rng.integers(0, 12000))
        audio = rng.standard_normal(n).astype(np.float32)
        batch = track(audio, g, fake_model(g))
        stream = WindowedStream(g, fake_model(g), batch=int(rng.integers(1, 4)))
        parts, pos = [], 0
        while pos < n:
            step = int(rng.integers(1, 3000))
            parts.append(stream.push(audio[pos : pos + step]))
            pos += step
        parts.append(stream.flush())
        streamed = np.concatenate([p for p in parts if p.size] or [np.zeros((0, 2))])
        assert streamed.shape[0] == batch.shape[0], trial
        if len(batch):
            np.testing.assert_array_equal(streamed, batch)


def test_hop_must_be_whole_frames():
    with pytest.raises(ValueError, match="whole number of frames"):
        WindowGeometry(1600, 810, 50, 25, 16000)


@pytest.mark.parametrize("lead", [None, 35, 40])
def test_a_frame_is_final_hop_plus_lookahead_after_it_is_heard(lead):
    """Fed one frame of samples at a time, every frame is returned at most H + lookahead
    frames after its own end (centred: (F + H) / 2), and never before F - lead - H."""
    g = WindowGeometry(1600, 320, 50, 10, 16000, lead_frames=lead)
    assert g.lookahead_frames == (20 if lead is None else 50 - lead - 10)
    spf = g.window // g.frames
    stream, lags = WindowedStream(g, fake_model(g)), []
    audio = np.random.default_rng(0).standard_normal(200 * spf).astype(np.float32)
    for i in range(200):
        out = stream.push(audio[i * spf : (i + 1) * spf])
        heard = i + 1  # frames of audio pushed so far
        lags += [heard - (stream.frames_emitted - len(out) + j + 1) for j in range(len(out))]
    steady = lags[g.frames:]  # after the first window, which also owns its leading frames
    assert max(steady) <= g.hop_frames + g.lookahead_frames
    assert min(steady) >= g.lookahead_frames


def test_lead_frames_must_leave_a_whole_hop():
    with pytest.raises(ValueError, match="lead_frames"):
        WindowGeometry(1600, 320, 50, 10, 16000, lead_frames=41)
