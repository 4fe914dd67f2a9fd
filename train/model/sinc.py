"""Learnable SincNet filterbank on the raw waveform: the parameters ARE the band edges.

Each band [low, high] (Hz) is a Hamming-windowed ideal band-pass, recomputed from its edges
in every forward pass, so gradients move the edges themselves. Unlike plain SincNet each
band also gets its quadrature partner (the Hilbert transform of the same band-pass, an odd
kernel), and the output is the log of the analytic envelope:

    y = 0.5 * log(re^2 + im^2 + floor^2)        (a learnable log-spectrogram, in nepers)

Why: |band-pass| alone drops to 0 at every zero crossing, so its log is spiky; the analytic
envelope is smooth and the log compresses bioacoustics' huge dynamic range like a log-mel
front end would. Everything is conv1d + elementwise (no torch.stft), so it exports to ONNX.

The edges are stored in kHz, not Hz: Adam moves a parameter by about lr per step whatever its
gradient's scale, so in Hz (SincNet's newer code) the edges could drift ~0.5 mHz per step at
lr 5e-4, i.e. stay frozen; in kHz they can move up to ~0.5 Hz per step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def hz_to_mel(hz: float) -> float:
    return 2595.0 * math.log10(1 + hz / 700.0)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10 ** (mel / 2595.0) - 1)


class SincFilterbank(nn.Module):
    """(batch, samples) -> (batch, n_filters, frames) log band envelopes."""

    def __init__(self, n_filters: int, kernel_size: int, sample_rate: int, stride: int = 1,
                 min_low_hz: float = 50.0, min_band_hz: float = 50.0, log_floor: float = 1e-5):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.n_filters, self.kernel_size, self.stride = n_filters, kernel_size, stride
        self.sample_rate, self.min_low_hz, self.min_band_hz = sample_rate, min_low_hz, min_band_hz
        self.log_floor = log_floor

        # Mel-spaced initial edges between min_low_hz and Nyquist (as SincNet).
        top = sample_rate / 2 - (min_low_hz + min_band_hz)
        edges = mel_to_hz(torch.linspace(hz_to_mel(30.0), hz_to_mel(top), n_filters + 1))
        self.low_khz = nn.Parameter((edges[:-1] - min_low_hz) / 1000)  # (filters,)
        self.band_khz = nn.Parameter(edges.diff() / 1000)  # (filters,)

        half = (kernel_size - 1) // 2
        self.register_buffer("n", torch.arange(1, half + 1, dtype=torch.float32), persistent=False)
        window = torch.hamming_window(kernel_size, periodic=False)
        self.register_buffer("window_right", window[half + 1:].clone(), persistent=False)

    def band_edges(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(low, high) in Hz, each (filters,), kept inside [min_low_hz, Nyquist]."""
        low = self.min_low_hz + 1000 * self.low_khz.abs()
        high = torch.clamp(low + self.min_band_hz + 1000 * self.band_khz.abs(),
                           self.min_low_hz, self.sample_rate / 2)
        return low, high

    def filters(self) -> torch.Tensor:
        """(2 * filters, 1, kernel): in-phase band-passes, then their quadrature partners."""
        low, high = self.band_edges()
        f1 = (low / self.sample_rate)[:, None]  # (filters, 1) cycles per sample
        f2 = (high / self.sample_rate)[:, None]
        n, w = self.n[None, :], self.window_right[None, :]  # (1, half)
        # Only n > 0 is computed (no 0/0 anywhere, so no NaN gradients); the left half mirrors.
        real = (torch.sin(2 * math.pi * f2 * n) - torch.sin(2 * math.pi * f1 * n)) / (math.pi * n) * w
        imag = (torch.cos(2 * math.pi * f1 * n) - torch.cos(2 * math.pi * f2 * n)) / (math.pi * n) * w
        centre = 2 * (f2 - f1)  # unit pass-band gain
        real = torch.cat([real.flip(1), centre, real], dim=1)  # even
        imag = torch.cat([-imag.flip(1), torch.zeros_like(centre), imag], dim=1)  # odd
        return torch.cat([real, imag], dim=0)[:, None, :]

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        # The filterbank always runs in fp32: bf16 taps would smear narrow low bands.
        if torch.is_autocast_enabled(audio.device.type):
            with torch.autocast(audio.device.type, enabled=False):
                return self._forward(audio.float())
        return self._forward(audio)

    def _forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = F.conv1d(audio[:, None, :], self.filters(), stride=self.stride)  # (batch, 2F, frames)
        real, imag = x.chunk(2, dim=1)
        return 0.5 * torch.log(real.square() + imag.square() + self.log_floor ** 2)
