"""The log-mel front end of student models, in numpy: what the field runtime computes before it
calls the int8 backbone (the front end stays float; see notes/export-toolchain.md).
`export/student.py` mirrors it in torch for training; a test holds the two to 1e-4.

Definition (all parameters from the card's `Frontend`):
* frames: frame k covers samples [k * hop, (k + 1) * hop) of its window, so a window of n
  samples gives n // hop frames (the teacher's convention). With `center` the analysis
  window of length n_fft is centred on the middle of that span (zero padding at both ends,
  never reflection: a frame must not depend on audio that is not there); without it, it
  starts at k * hop.
* spectrum: periodic Hann window of `win_length` samples, centred inside `n_fft` (as
  torch.stft does), power |DFT|^2 of the first n_fft // 2 + 1 bins.
* mel: HTK mel scale (2595 log10(1 + f / 700)), `n_mels` triangular filters between fmin
  and fmax with peak 1 (no Slaney area normalisation: the power keeps its scale, which
  keeps `log_offset` meaningful as an absolute floor).
* log(mel + log_offset), then (x - mean) / std with the card's scalar statistics.

`logmel` computes in float64 and returns float32: the reference, used by training, export
and calibration. `StreamingLogMel` is what the runtime runs: the same features for the
windows of one stream, each frame computed once, into preallocated buffers (its docstring
states the precision).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from edge_runtime.contract.card import Frontend
from edge_runtime.contract.errors import UserError
from edge_runtime.contract.windows import WindowStarts


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def check_frontend(frontend: Frontend, sample_rate: int) -> None:
    """UserError for parameters the front end cannot honour."""
    f = frontend
    problems = []
    if f.kind != "logmel":
        problems.append(f"kind is {f.kind!r}, not 'logmel'")
    if not 0 < f.win_length <= f.n_fft:
        problems.append(f"need 0 < win_length ({f.win_length}) <= n_fft ({f.n_fft})")
    if f.hop_length <= 0 or f.n_mels <= 0:
        problems.append("hop_length and n_mels must be > 0")
    if not 0 <= f.fmin < f.fmax <= sample_rate / 2:
        problems.append(f"need 0 <= fmin ({f.fmin}) < fmax ({f.fmax}) <= {sample_rate / 2:g} Hz")
    if f.log_offset <= 0 or f.std <= 0:
        problems.append("log_offset and std must be > 0")
    if problems:
        raise UserError("log-mel front end: " + "; ".join(problems))


@lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float
                   ) -> np.ndarray:
    """(n_fft // 2 + 1, n_mels) float64 triangular HTK filters, peak 1."""
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (freqs[:, None] - lower) / (centre - lower)
    falling = (upper - freqs[:, None]) / (upper - centre)
    bank = np.maximum(0.0, np.minimum(rising, falling))
    bank.setflags(write=False)
    return bank


@lru_cache(maxsize=8)
def analysis_window(n_fft: int, win_length: int) -> np.ndarray:
    """Periodic Hann of win_length, zero-padded to n_fft and centred (torch.stft's layout)."""
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win_length) / win_length)
    window = np.zeros(n_fft)
    start = (n_fft - win_length) // 2
    window[start : start + win_length] = hann
    window.setflags(write=False)
    return window


def padding(frontend: Frontend, n_samples: int) -> tuple[int, int]:
    """Zeros added (left, right) so that exactly n_samples // hop analysis frames fit."""
    f = frontend
    frames = n_samples // f.hop_length
    left = (f.n_fft - f.hop_length) // 2 if f.center else 0
    needed = f.n_fft + max(frames - 1, 0) * f.hop_length
    return left, max(needed - left - n_samples, 0)


def n_frames(frontend: Frontend, n_samples: int) -> int:
    return n_samples // frontend.hop_length


def power_spectrogram(audio: np.ndarray, frontend: Frontend) -> np.ndarray:
    """(batch, samples) -> (batch, frames, n_fft // 2 + 1) float64 power."""
    f = frontend
    x = np.asarray(audio, dtype=np.float64)
    frames = x.shape[-1] // f.hop_length
    left, right = padding(f, x.shape[-1])
    x = np.pad(x, ((0, 0), (left, right)))
    starts = np.arange(frames) * f.hop_length
    index = starts[:, None] + np.arange(f.n_fft)[None, :]  # (frames, n_fft)
    framed = x[:, index] * analysis_window(f.n_fft, f.win_length)  # (batch, frames, n_fft)
    spectrum = np.fft.rfft(framed, n=f.n_fft, axis=-1)
    return spectrum.real**2 + spectrum.imag**2


def logmel(audio: np.ndarray, frontend: Frontend, sample_rate: int) -> np.ndarray:
    """Normalised log-mel features: (batch, samples) -> (batch, samples // hop, n_mels) float32."""
    f = frontend
    audio = np.asarray(audio)
    if audio.ndim != 2:
        raise ValueError(f"audio must be (batch, samples), got shape {audio.shape}")
    if audio.shape[-1] < f.hop_length:
        raise ValueError(f"a window of {audio.shape[-1]} samples is shorter than one hop "
                         f"({f.hop_length} samples)")
    bank = mel_filterbank(sample_rate, f.n_fft, f.n_mels, float(f.fmin), float(f.fmax))
    mel = power_spectrogram(audio, f) @ bank  # (batch, frames, n_mels)
    return ((np.log(mel + f.log_offset) - f.mean) / f.std).astype(np.float32)


# ---------------------------------------------------------------- streaming, float32 output
class StreamingLogMel:
    """`logmel` for windows of one stream, each frame computed once: what the runtime runs.

    Overlapping windows of a stream share most frames. An *interior* frame of a window (its
    n_fft analysis span lies inside the window) depends only on the stream's samples there,
    so it is the same in every window that holds it: it is computed once, kept in a small
    cache keyed by its frame index in the stream, and copied into each window. The few *edge*
    frames, whose span reaches past the window and so sees its zero padding, are recomputed
    for every window, exactly as `logmel` pads them. Without `starts` (or when window starts
    are not whole hops) every frame of every window is computed, still without padding copies.

    Precision: float64 up to the float32 result, the same operations as `logmel` (numpy's
    float32 FFT is both slower here and ~1e-4 off in the log of quiet bins, and a float32
    mel/log step already flips ~5 in 10^6 int8 inputs by one step). Features match `logmel`
    to float32 rounding (tests hold them to 1e-5) and the int8 interpreter input is
    bit-identical on realistic audio (tested at three quantisation scales).

    Buffers are allocated once and grow only when a call brings more windows than before.
    """

    def __init__(self, frontend: Frontend, sample_rate: int, window_samples: int):
        check_frontend(frontend, sample_rate)
        f = self.frontend = frontend
        self.window_samples = window_samples
        self.frames = n_frames(f, window_samples)  # F per window
        if self.frames < 1:
            raise ValueError(f"a window of {window_samples} samples is shorter than one hop "
                             f"({f.hop_length} samples)")
        self.left = padding(f, window_samples)[0]
        h = f.hop_length
        # interior frames k: k * h - left >= 0 and k * h - left + n_fft <= window_samples
        self.k_lo = -(-self.left // h)
        self.k_hi = max(self.k_lo, min(self.frames, (window_samples + self.left - f.n_fft) // h + 1))
        self._window = analysis_window(f.n_fft, f.win_length)  # float64
        bank = mel_filterbank(sample_rate, f.n_fft, f.n_mels, float(f.fmin), float(f.fmax))
        self._bank = np.ascontiguousarray(bank)
        self._rows = 0
        self._grow_rows(self.frames)
        self._cache = np.empty((0, f.n_mels), np.float32)  # frames [_lo, _hi) of one stream
        self._stream: object = None
        self._lo = self._hi = 0
        self.frames_computed = 0  # analysis frames through the FFT so far (tests count them)

    def _grow_rows(self, rows: int) -> None:
        if rows <= self._rows:
            return
        rows = max(rows, 2 * self._rows)
        f, bins = self.frontend, self.frontend.n_fft // 2 + 1
        self._framed = np.zeros((rows, f.n_fft))  # float64 FFT input
        self._spectrum = np.empty((rows, bins), np.complex128)
        self._power = np.empty((rows, bins))
        self._mel64 = np.empty((rows, f.n_mels))
        self._mel = np.empty((rows, f.n_mels), np.float32)
        self._rows = rows

    def _grow_cache(self, frames: int) -> None:
        if frames > len(self._cache):
            grown = np.empty((max(frames, 2 * len(self._cache)), self.frontend.n_mels), np.float32)
            grown[: self._hi - self._lo] = self._cache[: self._hi - self._lo]
            self._cache = grown

    def reset(self) -> None:
        """Forget cached frames (the next call starts a new stream)."""
        self._stream, self._lo, self._hi = None, 0, 0

    def __call__(self, windows: np.ndarray, starts: WindowStarts | None = None,
                 out: np.ndarray | None = None) -> np.ndarray:
        """(batch, window samples) float32 -> (batch, F, n_mels) float32 features.

        `starts`: where these windows lie in their stream (consecutive windows `hop` apart);
        frames shared with earlier calls of the same stream are then taken from the cache.
        `out`: an optional (>= batch, F, n_mels) float32 array to write into."""
        windows = np.ascontiguousarray(windows, np.float32)  # framing views need it
        if windows.ndim != 2 or windows.shape[1] != self.window_samples:
            raise ValueError(f"windows must be (batch, {self.window_samples}), got "
                             f"{windows.shape}")
        f, n = self.frontend, len(windows)
        out = (np.empty((n, self.frames, f.n_mels), np.float32) if out is None else out[:n])
        h = f.hop_length
        if starts is not None and starts.first % h == 0 and starts.hop % h == 0:
            first, step = starts.first // h, starts.hop // h  # in frames
            self._prepare_cache(starts.stream, first + self.k_lo,
                                first + (n - 1) * step + self.k_hi)
        else:
            first, step = None, 0
        plan, row = [], 0  # per window: (first edge row, first new interior row, new frames)
        self._grow_rows(n * self.frames)
        for i, window in enumerate(windows):
            edge_row = row
            row = self._frame_edges(window, row)
            # the interior frames not cached yet (all of them without starts)
            new_from = self.k_lo if first is None else max(self.k_lo, self._hi - (first + i * step))
            count = max(self.k_hi - new_from, 0)
            if count:
                self._frame_span(window, new_from, count, row)
            plan.append((edge_row, row, new_from, count))
            row += count
            if first is not None:
                self._hi = max(self._hi, first + i * step + self.k_hi)
        mel = self._logmel_rows(row)
        n_head, k_lo, k_hi = self.k_lo, self.k_lo, self.k_hi
        for i, (edge_row, new_row, new_from, count) in enumerate(plan):
            out[i, :n_head] = mel[edge_row : edge_row + n_head]
            out[i, k_hi:] = mel[edge_row + n_head : new_row]
            if first is None:
                out[i, k_lo:k_hi] = mel[new_row : new_row + count]
                continue
            at = first + i * step - self._lo  # window's frame 0 in cache coordinates
            self._cache[at + new_from : at + k_hi] = mel[new_row : new_row + count]
            out[i, k_lo:k_hi] = self._cache[at + k_lo : at + k_hi]
        return out

    def _prepare_cache(self, stream: object, needed_from: int, needed_to: int) -> None:
        """Keep the cached frames still needed (from `needed_from` on) at the cache's start."""
        if stream != self._stream or not self._lo <= needed_from <= self._hi:
            self._stream, self._lo, self._hi = stream, needed_from, needed_from
        elif needed_from > self._lo:
            keep = self._hi - needed_from
            self._cache[:keep] = self._cache[needed_from - self._lo : self._hi - self._lo]
            self._lo = needed_from
        self._grow_cache(needed_to - self._lo)

    def _frame_span(self, window: np.ndarray, k: int, count: int, row: int) -> None:
        """Interior frames k .. k + count - 1 of `window`, windowed, into FFT rows (no padding)."""
        f = self.frontend
        start, size = k * f.hop_length - self.left, window.itemsize
        view = np.ndarray((count, f.n_fft), window.dtype, buffer=window, offset=start * size,
                          strides=(f.hop_length * size, size))  # C-level: as_strided is slow
        np.multiply(view, self._window, out=self._framed[row : row + count])

    def _frame_edges(self, window: np.ndarray, row: int) -> int:
        """The window's zero-padded edge frames (before k_lo, from k_hi on) into FFT rows."""
        f, framed = self.frontend, self._framed
        for k in (*range(self.k_lo), *range(self.k_hi, self.frames)):
            a = k * f.hop_length - self.left  # span [a, a + n_fft) in window samples
            lo, hi = max(a, 0), min(a + f.n_fft, self.window_samples)
            framed[row] = 0.0
            np.multiply(window[lo:hi], self._window[lo - a : hi - a], out=framed[row, lo - a : hi - a])
            row += 1
        return row

    def _logmel_rows(self, rows: int) -> np.ndarray:
        """FFT rows [0, rows) -> normalised log-mel (rows, n_mels) float32 (a buffer view)."""
        self.frames_computed += rows
        spectrum, mel, out = self._spectrum[:rows], self._mel64[:rows], self._mel[:rows]
        if rows == 0:
            return out
        np.fft.rfft(self._framed[:rows], axis=-1, out=spectrum)
        parts = spectrum.view(np.float64)  # (rows, 2 * bins): re, im interleaved
        np.multiply(parts, parts, out=parts)
        power = self._power[:rows]
        np.add(parts[:, 0::2], parts[:, 1::2], out=power)
        np.matmul(power, self._bank, out=mel)
        np.add(mel, self.frontend.log_offset, out=mel)
        np.log(mel, out=mel)
        np.subtract(mel, self.frontend.mean, out=mel)
        np.divide(mel, self.frontend.std, out=mel)
        out[...] = mel
        return out
