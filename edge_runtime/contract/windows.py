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

Samples wait in a preallocated buffer (compacted in place, never concatenated), and windows
are copied into a preallocated batch array: the hop path allocates only its small outputs.
A window function that accepts a `starts` keyword also gets a `WindowStarts` saying where
the windows lie in their stream, so that it can reuse work overlapping windows share (the
log-mel front end computes each frame once that way).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# (batch, window samples) float32 -> (batch, F, classes) float32 probabilities
# (a `starts=WindowStarts` keyword is optional; the windows are valid only during the call)
WindowFn = Callable[[np.ndarray], np.ndarray]

_stream_ids = itertools.count(1)


@dataclass(frozen=True)
class WindowStarts:
    """Where a batch of windows lies in its stream: window i starts at sample
    `first + i * hop`. `stream` is unique per `WindowedStream`, so work cached for one
    stream is never reused for another."""

    stream: int
    first: int
    hop: int


def accepts_starts(window_fn: WindowFn) -> bool:
    """Whether `window_fn` takes the optional `starts` keyword."""
    try:
        return "starts" in inspect.signature(window_fn).parameters
    except (TypeError, ValueError):  # builtins and some callables have no signature
        return False


@dataclass(frozen=True)
class WindowGeometry:
    window: int  # samples per window
    hop: int  # samples between window starts
    frames: int  # F: frames per window
    hop_frames: int  # H: frames per hop
    sample_rate: int
    lead_frames: int | None = None  # a; None: centred, (F - H) // 2

    def __post_init__(self) -> None:
        if not (0 < self.hop <= self.window and 0 < self.hop_frames <= self.frames):
            raise ValueError(f"bad window geometry {self}")
        if self.hop * self.frames != self.hop_frames * self.window:
            raise ValueError(f"hop ({self.hop} samples) must be a whole number of frames "
                             f"({self.window / self.frames:g} samples each)")
        if self.lead_frames is not None and not 0 <= self.lead_frames <= self.frames - self.hop_frames:
            raise ValueError(f"lead_frames {self.lead_frames} must be in [0, F - H = "
                             f"{self.frames - self.hop_frames}]")

    @property
    def lead(self) -> int:
        """a: the first frame a window owns (centred unless `lead_frames` says otherwise)."""
        if self.lead_frames is not None:
            return self.lead_frames
        return (self.frames - self.hop_frames) // 2

    @property
    def lookahead_frames(self) -> int:
        """Right context of the last frame a window owns: F - a - H."""
        return self.frames - self.lead - self.hop_frames

    def total_frames(self, n_samples: int) -> int:
        return round(n_samples * self.frames / self.window)


class WindowedStream:
    """Feed samples as they arrive; get final frame probabilities back."""

    def __init__(self, geometry: WindowGeometry, window_fn: WindowFn, batch: int = 1):
        self.g, self.fn, self.batch = geometry, window_fn, max(1, batch)
        self._pass_starts = accepts_starts(window_fn)
        self._stream_id = next(_stream_ids)
        g = geometry
        # After each round of windows fewer than window + hop samples stay buffered, so every
        # round has room for at least window + (batch - 1) hops of new samples.
        self._buffer = np.zeros(2 * g.window + self.batch * g.hop, dtype=np.float32)
        self._head = self._tail = 0  # _buffer[_head:_tail]: samples from the next window start
        self._windows_in = np.zeros((self.batch, g.window), dtype=np.float32)
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

    def _run(self, windows: np.ndarray, first_window: int) -> np.ndarray:
        if self._pass_starts:
            starts = WindowStarts(self._stream_id, first_window * self.g.hop, self.g.hop)
            return self.fn(windows, starts=starts)
        return self.fn(windows)

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Append mono float32 samples; return the frames (n, classes) that became final."""
        samples = np.asarray(samples, np.float32)
        pieces: list[np.ndarray] = []
        pos = 0
        while pos < len(samples):
            if self._tail == len(self._buffer):  # compact: move the kept samples to the front
                kept = self._tail - self._head
                self._buffer[:kept] = self._buffer[self._head : self._tail]
                self._head, self._tail = 0, kept
            take = min(len(self._buffer) - self._tail, len(samples) - pos)
            self._buffer[self._tail : self._tail + take] = samples[pos : pos + take]
            self._tail += take
            self._samples_in += take
            pos += take
            self._run_ready(pieces)
        return np.concatenate(pieces) if pieces else self._empty()

    def _run_ready(self, pieces: list[np.ndarray]) -> None:
        g = self.g
        # Window k is final as soon as the track is known to extend past its end (so it is
        # not the last window, which would also own its trailing frames): that releases its
        # frames the moment it can be computed, not one hop later.
        total_now = g.total_frames(self._samples_in)
        buffered = self._tail - self._head
        ready = 0
        while (buffered >= ready * g.hop + g.window
               and total_now > (self._windows + ready) * g.hop_frames + g.frames):
            ready += 1
        for start in range(0, ready, self.batch):
            n = min(self.batch, ready - start)
            windows = self._windows_in[:n]
            for i in range(n):
                at = self._head + (start + i) * g.hop
                windows[i] = self._buffer[at : at + g.window]
            for probs in self._run(windows, self._windows):
                pieces.append(self._emit(probs, self._windows, last=False, total=None))
                self._windows += 1
        self._head += ready * g.hop

    def flush(self) -> np.ndarray:
        """End of stream: run the remaining (zero-padded) windows and return every frame left."""
        g = self.g
        total = g.total_frames(self._samples_in)
        n_windows = max(1, -(-(total - g.frames) // g.hop_frames) + 1)  # last one reaches the end
        pieces = []
        window = self._windows_in[:1]
        for k in range(self._windows, n_windows):
            at = self._head + (k - self._windows) * g.hop
            chunk = self._buffer[min(at, self._tail) : min(at + g.window, self._tail)]
            window[0, : len(chunk)] = chunk
            window[0, len(chunk) :] = 0.0
            pieces.append(self._emit(self._run(window, k)[0], k, k == n_windows - 1, total))
        self._windows = n_windows
        self._head = self._tail = 0
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
