"""Augmentations for teacher finetuning and student training, deterministic given a `torch.Generator`.

Waveform, per window of a batch (batch, samples), in this order: random gain, a time shift by
a whole number of frames (so frame tracks shift with it), additive white noise at a random
SNR, background clips mixed in at a random SNR, then mixup between batch items. Features,
after the log-mel: SpecAugment time and frequency masks (`mask_features`).

    batch = augment_batch(audio, labels, config, generator, background=pool)
    teacher = batch.soft(teacher_probs)     # cached teacher tracks: same shift, same mixup
    features = mask_features(logmel(batch.audio), config, generator)

A teacher run on `batch.audio` needs nothing else; cached frame tracks go through
`AugmentedBatch.shift` (any (batch, frames, ...) tensor, e.g. a valid-frame mask),
`soft` (shift, then mix with the weights: probabilities, not logits) or `hard` (shift,
then union of the labels of mixed items).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edge_runtime.contract.errors import UserError

SHIFT_MODES = ("circular", "zero")
MASK_FILLS = ("zero", "mean")
LEVEL_FLOOR = 1e-3  # RMS (-60 dBFS) that noise SNRs refer to when a window is near silent


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities are per window; ranges are (low, high), drawn uniformly. Defaults suit
    16 kHz 2 s windows at 50 fps."""

    gain_p: float = 0.5
    gain_db: tuple[float, float] = (-12.0, 6.0)
    shift_p: float = 0.5
    shift_max: float = 0.25  # of the window (0.5 s of 2 s), rounded down to whole frames
    shift_mode: str = "circular"  # "zero": shifted-in audio is silence, its labels are 0
    noise_p: float = 0.3
    noise_snr_db: tuple[float, float] = (5.0, 40.0)
    background_p: float = 0.3
    background_snr_db: tuple[float, float] = (0.0, 20.0)  # window RMS over background RMS
    mixup_p: float = 0.3
    mixup_weight: tuple[float, float] = (0.5, 0.9)  # the window's own share; partner: 1 - w
    spec_p: float = 0.5  # SpecAugment, per window (mask_features)
    time_masks: int = 2
    time_mask_frames: tuple[int, int] = (0, 10)
    freq_masks: int = 2
    freq_mask_bins: tuple[int, int] = (0, 8)
    mask_fill: str = "zero"  # normalised features: 0 is the training mean; or the window's mean

    def __post_init__(self) -> None:
        for name in ("gain_p", "shift_p", "noise_p", "background_p", "mixup_p", "spec_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserError(f"augment: {name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("gain_db", "noise_snr_db", "background_snr_db", "mixup_weight",
                     "time_mask_frames", "freq_mask_bins"):
            low, high = getattr(self, name)
            if low > high:
                raise UserError(f"augment: {name} must be (low, high), got {(low, high)}")
        low, high = self.mixup_weight
        if not 0.0 <= low <= high <= 1.0:
            raise UserError(f"augment: mixup_weight must lie in [0, 1], got {(low, high)}")
        if self.shift_mode not in SHIFT_MODES:
            raise UserError(f"augment: shift_mode {self.shift_mode!r} is not one of "
                            f"{', '.join(SHIFT_MODES)}")
        if self.mask_fill not in MASK_FILLS:
            raise UserError(f"augment: mask_fill {self.mask_fill!r} is not one of "
                            f"{', '.join(MASK_FILLS)}")
        if (not 0 <= self.shift_max <= 1 or self.time_masks < 0 or self.freq_masks < 0
                or self.time_mask_frames[0] < 0 or self.freq_mask_bins[0] < 0):
            raise UserError("augment: shift_max must be in [0, 1]; mask counts and widths >= 0")

    @classmethod
    def none(cls) -> AugmentConfig:
        """Every augmentation off: `augment_batch` and `mask_features` return their input."""
        return cls(gain_p=0.0, shift_p=0.0, noise_p=0.0, background_p=0.0, mixup_p=0.0,
                   spec_p=0.0)


@dataclass
class AugmentedBatch:
    """The augmented windows and what was drawn, so frame tracks can follow the audio."""

    audio: torch.Tensor  # (batch, samples)
    labels: torch.Tensor | None  # (batch, frames, C): shifted, union over mixed items
    shift_frames: torch.Tensor  # (batch,) long: audio moved later by this many frames
    mix_perm: torch.Tensor  # (batch,) long: window i was mixed with window mix_perm[i]
    mix_lam: torch.Tensor  # (batch,) float: window i's own share (1.0: not mixed)
    gain_db: torch.Tensor  # (batch,) applied gain (0.0: none)
    circular: bool  # how the shift wraps ("circular") or pads with zeros

    def shift(self, frames: torch.Tensor) -> torch.Tensor:
        """Apply the drawn time shift to a (batch, frames, ...) tensor."""
        return shift_frames(frames, self.shift_frames, self.circular)

    def soft(self, targets: torch.Tensor) -> torch.Tensor:
        """Shift, then mix (batch, frames, C) soft targets with the audio's weights. Mix
        probabilities (e.g. sigmoid(teacher / T)), not logits."""
        x = self.shift(targets)
        lam = self.mix_lam.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        return lam * x + (1 - lam) * x[self.mix_perm]

    def hard(self, labels: torch.Tensor) -> torch.Tensor:
        """Shift, then the union (max) of the labels of each window and its mixup partner."""
        x = self.shift(labels)
        mixed = (self.mix_lam < 1).view(-1, *([1] * (x.ndim - 1)))
        return torch.where(mixed, torch.maximum(x, x[self.mix_perm]), x)


# ---------------------------------------------------------------- helpers
def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _coin(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """(n,) bool, each True with probability p; draws even when p is 0 or 1, so a change of
    one probability does not reshuffle what the other augmentations draw."""
    return torch.rand(n, generator=generator) < p


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.square().mean(dim=-1).sqrt()  # (batch,)


def shift_frames(x: torch.Tensor, shift: torch.Tensor, circular: bool) -> torch.Tensor:
    """Move each item of a (batch, T, ...) tensor later by shift[i] steps along dim 1
    (negative: earlier); what falls off wraps round (circular) or is replaced by zeros."""
    steps = x.shape[1]
    source = torch.arange(steps, device=x.device)[None, :] - shift.to(x.device)[:, None]
    inside = (source >= 0) & (source < steps)
    index = source.remainder(steps).view(*source.shape, *([1] * (x.ndim - 2))).expand_as(x)
    out = x.gather(1, index)
    if not circular:
        out = out * inside.view(*inside.shape, *([1] * (x.ndim - 2))).to(out.dtype)
    return out


def _background(pool: torch.Tensor, n: int, samples: int, generator: torch.Generator
                ) -> torch.Tensor:
    """n windows cut at random offsets from random clips of the pool (clips, length),
    tiled when a clip is shorter than the window."""
    if pool.ndim != 2 or len(pool) == 0 or pool.shape[1] == 0:
        raise UserError(f"augment: the background pool must be (clips, samples), got "
                        f"{tuple(pool.shape)}")
    clips = torch.randint(len(pool), (n,), generator=generator)
    length = pool.shape[1]
    offsets = torch.randint(length, (n,), generator=generator)
    index = (offsets[:, None] + torch.arange(samples)[None, :]) % length
    return pool[clips[:, None], index]


# ---------------------------------------------------------------- entry points
def augment_batch(audio: torch.Tensor, labels: torch.Tensor | None, config: AugmentConfig,
                  generator: torch.Generator, background: torch.Tensor | None = None,
                  hop_length: int | None = None) -> AugmentedBatch:
    """Augment a batch of windows (batch, samples) and shift/mix its frame labels (batch,
    frames, C) the same way. hop_length (samples per frame) defaults to samples // frames
    of the labels; shifts are whole frames. background: (clips, samples) audio to mix in
    (e.g. unlabelled recordings); without it that step is skipped. Random numbers are drawn
    on the CPU from `generator`, the same ones whatever the device of `audio`."""
    if audio.ndim != 2:
        raise UserError(f"augment: audio must be (batch, samples), got {tuple(audio.shape)}")
    n, samples = audio.shape
    device = audio.device
    if hop_length is None:
        hop_length = samples // labels.shape[1] if labels is not None and labels.shape[1] else 1
    if samples % hop_length or (labels is not None and samples // hop_length != labels.shape[1]):
        shape = "" if labels is None else f" matching labels {tuple(labels.shape)}"
        raise UserError(f"augment: {samples} samples are not whole frames of {hop_length} "
                        f"samples{shape}")
    x = audio.float()

    # Gain.
    gain = torch.where(_coin(n, config.gain_p, generator),
                       _uniform(n, *config.gain_db, generator), torch.zeros(n))
    x = x * (10 ** (gain / 20)).to(device)[:, None]

    # Time shift by whole frames: the audio as (batch, frames, hop) moves like a frame track.
    frames = samples // hop_length
    most = int(config.shift_max * frames)
    on = _coin(n, config.shift_p, generator)
    drawn = torch.randint(-most, most + 1, (n,), generator=generator)
    shift = torch.where(on, drawn, torch.zeros_like(drawn))
    circular = config.shift_mode == "circular"
    if bool(shift.any()):
        x = shift_frames(x.reshape(n, frames, hop_length), shift, circular).reshape(n, samples)

    # Additive white noise at a random SNR (relative to the window, floored for silence).
    on = _coin(n, config.noise_p, generator)
    snr = _uniform(n, *config.noise_snr_db, generator)
    noise = torch.randn(n, samples, generator=generator)
    if bool(on.any()):
        level = torch.clamp(_rms(x).cpu(), min=LEVEL_FLOOR) * 10 ** (-snr / 20)
        x = x + (noise * (level * on)[:, None]).to(device)

    # Background clips at a random SNR.
    on = _coin(n, config.background_p, generator)
    snr = _uniform(n, *config.background_snr_db, generator)
    if background is not None and bool(on.any()):
        clips = _background(background.float().cpu(), n, samples, generator)
        scale = (torch.clamp(_rms(x).cpu(), min=LEVEL_FLOOR) * 10 ** (-snr / 20)
                 / torch.clamp(_rms(clips), min=1e-8))
        x = x + (clips * (scale * on)[:, None]).to(device)

    # Mixup between windows of the batch.
    on = _coin(n, config.mixup_p, generator) if n > 1 else torch.zeros(n, dtype=torch.bool)
    perm = torch.where(on, torch.randperm(n, generator=generator), torch.arange(n))
    lam = torch.where(on & (perm != torch.arange(n)),
                      _uniform(n, *config.mixup_weight, generator), torch.ones(n))
    perm = torch.where(lam < 1, perm, torch.arange(n))
    if bool((lam < 1).any()):
        w = lam.to(device)[:, None]
        x = w * x + (1 - w) * x[perm.to(device)]

    batch = AugmentedBatch(x.to(audio.dtype), None, shift, perm, lam, gain, circular)
    if labels is not None:
        batch.labels = batch.hard(labels)
    return batch


def draw_masks(batch: int, frames: int, bins: int, config: AugmentConfig,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """SpecAugment masks: (batch, frames) and (batch, bins) bool, True where masked. Each
    masked window gets `time_masks` spans of a width drawn from `time_mask_frames` (they may
    overlap) and likewise in frequency."""
    on = _coin(batch, config.spec_p, generator)

    def spans(count: int, widths: tuple[int, int], size: int) -> torch.Tensor:
        mask = torch.zeros(batch, size, dtype=torch.bool)
        positions = torch.arange(size)[None, :]
        for _ in range(count):
            width = torch.randint(widths[0], widths[1] + 1, (batch,), generator=generator)
            width = width.clamp(max=size)
            start = (torch.rand(batch, generator=generator) * (size - width + 1)).floor().long()
            mask |= (positions >= start[:, None]) & (positions < (start + width)[:, None])
        return mask & on[:, None]

    return (spans(config.time_masks, config.time_mask_frames, frames),
            spans(config.freq_masks, config.freq_mask_bins, bins))


def mask_features(features: torch.Tensor, config: AugmentConfig, generator: torch.Generator
                  ) -> torch.Tensor:
    """SpecAugment on log-mel features (batch, frames, mels): masked frames and mel bins
    are set to 0 (the normalised training mean) or to the window's own mean."""
    if features.ndim != 3:
        raise UserError(f"augment: features must be (batch, frames, mels), got "
                        f"{tuple(features.shape)}")
    n, frames, bins = features.shape
    time, freq = draw_masks(n, frames, bins, config, generator)
    masked = (time[:, :, None] | freq[:, None, :]).to(features.device)
    if not bool(masked.any()):
        return features
    fill = (features.mean(dim=(1, 2), keepdim=True) if config.mask_fill == "mean"
            else torch.zeros((), dtype=features.dtype, device=features.device))
    return torch.where(masked, fill, features)
