"""Overlapping windows in, one frame-probability track out — identically for a whole file and
for a live stream.

A model sees `window` samples and returns `F` frames; windows start every `hop` samples
(`H` frames). Each frame of the track comes from the window in which it is most central:
window k contributes its frames [a, a + H) with a = (F - H) // 2, the first window also its
leading frames [0, a) and the last one its trailing frames. Edge frames, which saw
zero-padding or a cut call, are so never used where a better-centred window exists.

`WindowedStream.push()` returns the frames that are final (a window's frames are released as
soon as audio past its end arrives); `flush()` the rest.
`track()` runs the same object over a whole array, so streaming == batch by construction
(and by test).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# (batch, window samples) float32 -> (batch, F, classes) float32 probabilities
WindowFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class WindowGeometry:
    window: int  # samples per window
    hop: int  # samples between window starts
    frames: int  # F: frames per window
    hop_frames: int  # H: frames per hop
    sample_rate: int

    def __post_init__(self) -> None:
        if not (0 < self.hop <= self.window and 0 < self.hop_frames <= self.frames):
            raise ValueError(f"bad window geometry {self}")
        if self.hop * self.frames != self.hop_frames * self.window:
            raise ValueError(f"hop ({self.hop} samples) must be a whole number of frames "
                             f"({self.window / self.frames:g} samples each)")

    @property
    def lead(self) -> int:
        """a: the first central frame of a window."""
        return (self.frames - self.hop_frames) // 2

    def total_frames(self, n_samples: int) -> int:
        return round(n_samples * self.frames / self.window)


class WindowedStream:
    """Feed samples as they arrive; get final frame probabilities back."""

    def __init__(self, geometry: WindowGeometry, window_fn: WindowFn, batch: int = 1):
        self.g, self.fn, self.batch = geometry, window_fn, batch
        self._buffer = np.zeros(0, dtype=np.float32)  # samples from the next window start on
        self._samples_in = 0
        self._frames_out = 0
        self._windows = 0

    @property
    def frames_emitted(self) -> int:
        return self._frames_out

    def _emit(self, probs: np.ndarray, k: int, last: bool, total: int | None) -> np.ndarray:
        """The frames window k owns, in track coordinates [first, stop), as window-relative rows."""
        g = self.g
        first = 0 if k == 0 else k * g.hop_frames + g.lead
        stop = k * g.hop_frames + (g.frames if last else g.lead + g.hop_frames)
        if total is not None:
            stop = min(stop, total)
        out = probs[first - k * g.hop_frames : stop - k * g.hop_frames]
        self._frames_out += len(out)
        return out

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Append mono float32 samples; return the frames (n, classes) that became final."""
        g = self.g
        self._samples_in += len(samples)
        self._buffer = np.concatenate([self._buffer, np.asarray(samples, np.float32)])
        # Window k is final as soon as the track is known to extend past its end (so it is
        # not the last window, which would also own its trailing frames): that releases its
        # frames the moment it can be computed, not one hop later.
        total_now = g.total_frames(self._samples_in)
        ready = 0
        while (len(self._buffer) >= ready * g.hop + g.window
               and total_now > (self._windows + ready) * g.hop_frames + g.frames):
            ready += 1
        if ready == 0:
            return self._empty()
        pieces = []
        for start in range(0, ready, self.batch):
            n = min(self.batch, ready - start)
            windows = np.stack([self._buffer[(start + i) * g.hop : (start + i) * g.hop + g.window]
                                for i in range(n)])
            for probs in self.fn(windows):
                pieces.append(self._emit(probs, self._windows, last=False, total=None))
                self._windows += 1
        self._buffer = self._buffer[ready * g.hop :]
        return np.concatenate(pieces)

    def flush(self) -> np.ndarray:
        """End of stream: run the remaining (zero-padded) windows and return every frame left."""
        g = self.g
        total = g.total_frames(self._samples_in)
        n_windows = max(1, -(-(total - g.frames) // g.hop_frames) + 1)  # last one reaches the end
        pieces = []
        for k in range(self._windows, n_windows):
            window = np.zeros(g.window, dtype=np.float32)
            chunk = self._buffer[(k - self._windows) * g.hop :][: g.window]
            window[: len(chunk)] = chunk
            pieces.append(self._emit(self.fn(window[None])[0], k, k == n_windows - 1, total))
        self._windows = n_windows
        self._buffer = np.zeros(0, dtype=np.float32)
        pieces = [p for p in pieces if len(p)]
        return np.concatenate(pieces) if pieces else self._empty()

    def _empty(self) -> np.ndarray:
        return np.zeros((0, 0), dtype=np.float32)


def track(audio: np.ndarray, geometry: WindowGeometry, window_fn: WindowFn,
          batch: int = 8) -> np.ndarray:
    """Frame probabilities (total_frames, classes) for a whole mono recording."""
    stream = WindowedStream(geometry, window_fn, batch)
    parts = [p for p in (stream.push(audio), stream.flush()) if p.size]
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
