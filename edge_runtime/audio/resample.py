"""Conversion to the model's format: channel select or mix, non-finite samples counted and
zeroed, then resampling with soxr, only when the input rate differs from the model's (at the
model's rate the conformer hands on a view of the block: no copy, no resampler).

soxr runs at quality "HQ" (20-bit precision, passband to ~91% of the lower Nyquist rate,
no aliasing into it): the one resampler for every ratio. It is also the cheapest: an
integer-ratio polyphase FIR decimator in numpy (48 kHz -> 16 kHz, 309 taps for 100 dB, or
a 123-tap one with a 2 kHz transition) measured 1.2-2.7 ms per audio second on one thread,
against soxr HQ's 0.36 (32 kHz), 0.50 (44.1 kHz) and 0.55 (48 kHz): soxr already takes the
integer-ratio shortcut internally, in SIMD C. `benchmarks/runtime_bench.py` measures these
per audio second (the "resampling" rows).

soxr is part of the `edge` extra and publishes wheels for every supported recorder (x86-64
and aarch64: Raspberry Pi OS 64-bit, JetPack); the numpy windowed-sinc fallback that served
installs without it is gone. `audio.resampler = "numpy"` is still accepted (old configs) and
resamples with soxr after a warning.
"""

from __future__ import annotations

import importlib
import logging

import numpy as np

from edge_runtime.contract.errors import UserError

log = logging.getLogger(__name__)

RESAMPLERS = ("auto", "soxr", "numpy")  # "numpy": deprecated, means soxr


SOXR_QUALITY = "HQ"


class SoxrResampler:
    """Streaming soxr (`SOXR_QUALITY`): `process` blocks as they come, `flush` the tail."""

    def __init__(self, in_rate: int, out_rate: int):
        try:
            soxr = importlib.import_module("soxr")
        except ImportError:
            raise UserError(f"resampling {in_rate} -> {out_rate} Hz needs soxr, part of the "
                            "edge install: `pip install 'meerkit[edge]'` (or `pip install soxr`)"
                            ) from None
        self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=SOXR_QUALITY)

    def process(self, x: np.ndarray) -> np.ndarray:
        return self._stream.resample_chunk(np.asarray(x, np.float32), last=False)

    def flush(self) -> np.ndarray:
        return self._stream.resample_chunk(np.zeros(0, np.float32), last=True)


_warned_numpy = False


def make_resampler(in_rate: int, out_rate: int, kind: str = "auto") -> SoxrResampler | None:
    """None when the rates are equal (nothing to do)."""
    global _warned_numpy
    if kind not in RESAMPLERS:
        raise UserError(f"audio.resampler {kind!r} is not one of auto, soxr")
    if kind == "numpy" and not _warned_numpy:
        _warned_numpy = True
        log.warning("audio.resampler = \"numpy\" is deprecated (the numpy resampler was "
                    "removed): resampling with soxr; set resampler = \"auto\"")
    if in_rate == out_rate:
        return None
    return SoxrResampler(in_rate, out_rate)


class Conformer:
    """(frames, channels) blocks at any rate -> mono float32 at the model's rate."""

    def __init__(self, in_rate: int, in_channels: int, out_rate: int, channel: str = "mix",
                 resampler: str = "auto"):
        self.in_rate, self.out_rate = in_rate, out_rate
        if channel != "mix" and int(channel) >= in_channels:
            raise UserError(f"audio.channel {channel}: the input has only {in_channels} "
                            f"channel(s) (0-based index)")
        self.channel = None if channel == "mix" else int(channel)
        self.kind = resampler
        self._resampler = make_resampler(in_rate, out_rate, resampler)
        self.nonfinite = 0  # NaN/Inf samples seen (replaced by 0)

    def reset(self) -> None:
        """After a gap in the input: the resampler must not bridge it."""
        self._resampler = make_resampler(self.in_rate, self.out_rate, self.kind)

    def process(self, block: np.ndarray) -> np.ndarray:
        x = np.asarray(block, np.float32)
        if x.ndim == 1:
            x = x[:, None]
        # A sum is finite only when every sample is (NaN and Inf propagate through it): one
        # pass and no temporary array for a clean block; the exact mask only otherwise (a
        # non-finite sum may also be a mere overflow of finite samples).
        if not np.isfinite(x.sum(dtype=np.float32)):
            bad = ~np.isfinite(x)
            if bad.any():
                if not self.nonfinite:
                    log.warning("input audio contains NaN/Inf samples: replacing them with 0 "
                                "(counted in status as nonfinite_samples; warned once)")
                self.nonfinite += int(bad.sum())
                x = np.where(bad, np.float32(0), x)
        mono = x[:, self.channel] if self.channel is not None else (
            x[:, 0] if x.shape[1] == 1 else x.mean(axis=1, dtype=np.float32))
        return self._resampler.process(mono) if self._resampler else np.ascontiguousarray(mono)

    def flush(self) -> np.ndarray:
        return self._resampler.flush() if self._resampler else np.zeros(0, np.float32)
