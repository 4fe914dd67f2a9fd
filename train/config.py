"""Dataclass configs for the animal2vec-style teacher: model shape, pretraining, finetuning and
the auxiliary metadata heads.

Presets are plain instances (`ModelConfig.tiny()`, `.small()`, `.base()`, `.large()`); everything
round-trips through a plain dict (`to_dict()` / `from_dict()`) so checkpoints carry their
config. `from_dict` (train/config_base.py) rejects unknown keys with a `UserError` that suggests
the closest name.

`mask_prob` (pretraining and finetuning) is the masked fraction *before overlaps*, as in
fairseq/data2vec/animal2vec, so it may exceed 1 (up to mask_length): 0.8 with 5-frame spans
masks ~58% of frames, animal2vec's 1.6 with 2-frame spans ~96%. train/masking.py derives
this, with `expected_coverage` and `masking_regime_stats`.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any

from train.config_base import ConfigBase, check, check_choice

AMP_MODES = ("bf16", "fp16", "fp32")
CONV_NORMS = ("layer", "group")
D2V_LOSSES = ("mse", "smooth_l1")
TARGET_NORMS = ("none", "instance", "layer")
EMA_SCHEDULES = ("linear", "cosine")
META_KINDS = ("location", "circular", "class", "regression")
META_MODES = ("standard", "adversarial", "off")


# ---------------------------------------------------------------- model
@dataclass(frozen=True)
class ModelConfig(ConfigBase):
    """Shape of the teacher: sinc filterbank -> strided convs -> transformer -> heads.

    Frame rate = sample_rate / total_stride (16 kHz / 320 = 50 fps for every preset); the
    model pads the waveform so that n_frames = n_samples // total_stride and frame k's
    receptive field is centred on the middle of [k, k + 1) / frame_rate_hz (the label
    convention of `events_to_frames`).
    """

    sample_rate: int = 16000
    # Learnable sinc filterbank (train/model/sinc.py)
    sinc_filters: int = 64
    sinc_kernel: int = 351  # odd; 22 ms at 16 kHz
    sinc_stride: int = 2
    sinc_min_low_hz: float = 50.0
    sinc_min_band_hz: float = 50.0
    # Subtract each band's mean over the clip from its log envelope (a per-recording gain
    # and noise-colour normaliser, like the students' band contrast). Recorders differ by
    # ~20 dB of noise floor and by their colouration, ~2 nepers, while a call moves its bands
    # by ~0.5-1: with a global BatchNorm only, the tiny teacher stayed near chance (val AP
    # 0.05 after 400 steps on synth demo) and reached 0.44 with centring. Checkpoints made
    # before this field load with False (`Animal2Vec.from_spec`).
    frontend_centring: bool = True
    # Strided conv feature encoder: (channels, kernel, stride) per layer
    conv_layers: tuple[tuple[int, int, int], ...] = (
        (512, 5, 5), (512, 3, 2), (512, 3, 2), (512, 3, 2), (512, 2, 2), (512, 2, 2))
    conv_norm: str = "layer"  # "layer": per-frame LayerNorm (window-independent); "group"
    # Transformer
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    attn_dropout: float = 0.1
    layerdrop: float = 0.05
    pos_conv_kernel: int = 65  # odd; frames (1.3 s at 50 fps)
    pos_conv_groups: int = 16
    # Heads
    n_classes: int = 0  # 0 while pretraining; set from the label list for finetuning
    head_dropout: float = 0.0

    def __post_init__(self) -> None:
        check(self.sample_rate > 0, f"sample_rate must be positive, got {self.sample_rate}")
        check(self.sinc_filters > 0, "sinc_filters must be positive")
        check(self.sinc_kernel % 2 == 1, f"sinc_kernel must be odd, got {self.sinc_kernel}")
        check(self.sinc_stride >= 1, "sinc_stride must be >= 1")
        check(self.sinc_min_low_hz + self.sinc_min_band_hz < self.sample_rate / 2,
               "sinc_min_low_hz + sinc_min_band_hz must stay below the Nyquist frequency")
        check(len(self.conv_layers) > 0, "conv_layers must list at least one layer")
        for i, layer in enumerate(self.conv_layers):
            check(len(layer) == 3 and all(int(v) >= 1 for v in layer),
                   f"conv_layers[{i}] must be (channels, kernel, stride) >= 1, got {layer}")
        check_choice(self.conv_norm, CONV_NORMS, "conv_norm")
        check(self.dim % self.heads == 0,
               f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        check(self.depth >= 1, "depth must be >= 1")
        check(self.pos_conv_kernel % 2 == 1, f"pos_conv_kernel must be odd, got {self.pos_conv_kernel}")
        check(self.dim % self.pos_conv_groups == 0,
               f"dim ({self.dim}) must be divisible by pos_conv_groups ({self.pos_conv_groups})")
        for name in ("dropout", "attn_dropout", "layerdrop", "head_dropout"):
            check(0.0 <= getattr(self, name) < 1.0, f"{name} must be in [0, 1)")
        check(self.n_classes >= 0, "n_classes must be >= 0")

    # -- presets
    @classmethod
    def tiny(cls, **overrides: Any) -> ModelConfig:
        """< 1M parameters; for CPU tests, the demo and CPU benchmarks.

        The sinc front end is a learnable spectrogram: 64 bands of 25 ms (401 taps, ~160 Hz
        resolution) every 5 ms, then two stride-2 convs to 50 fps. The earlier 63-tap,
        stride-2 front end resolved only ~1 kHz, spent 80% of a CPU step on 8 kHz feature
        maps, and learned no better (synth demo, 400 steps, val AP 0.39 at 5x the time).
        """
        base = dict(sinc_filters=64, sinc_kernel=401, sinc_stride=80,
                    conv_layers=((64, 3, 2), (64, 3, 2)),
                    dim=64, depth=3, heads=4, dropout=0.0, attn_dropout=0.0, layerdrop=0.0,
                    pos_conv_kernel=15, pos_conv_groups=4)
        return cls(**{**base, **overrides})

    @classmethod
    def small(cls, **overrides: Any) -> ModelConfig:
        """The CPU benchmarks' teacher: `tiny` with sinc envelopes at 400 fps, three
        128-channel stride-2 convs down to 50 fps, and a 128-wide transformer. A teacher
        should outgrow its students; at tiny's width it did not (synth `default`, 2000 steps,
        3 seeds: test AP 0.596 against 0.670 for the label-only `tcn_small` student). Val AP
        at 1500 steps, one seed each: tiny 0.627; dim 128 0.664; dim 128 + 6 layers no better
        at 600 steps; dim 128 + two 128-channel convs (kernels 5/3) from 200 fps envelopes
        0.698 (session 6's `small`: 3-seed test AP 0.695); the same with kernels 9/5, 0.697;
        this preset, 0.742 (noise_burst 0.54 -> 0.67, click_train 0.90 -> 0.95, trill
        0.22 -> 0.26: short, fast events gain from the finer envelopes), at the same step
        cost (0.28 s per 16-clip step on one thread, both)."""
        base = dict(sinc_stride=40, conv_layers=((128, 5, 2), (128, 3, 2), (128, 3, 2)),
                    dim=128)
        return cls.tiny(**{**base, **overrides})

    @classmethod
    def small100(cls, **overrides: Any) -> ModelConfig:
        """`small` with its last conv at stride 1: 100 fps tokens (twice the transformer's
        sequence), so the teacher speaks at the rate of the 100-fps students that caught up
        with `small` (session 8, synth `default`, seed 0: val AP 0.807 at 2400 of 3000 steps
        against `small`'s 0.789; ~1.2x its CPU per step)."""
        base = dict(conv_layers=((128, 5, 2), (128, 3, 2), (128, 3, 1)))
        return cls.small(**{**base, **overrides})

    @classmethod
    def base(cls, **overrides: Any) -> ModelConfig:
        """~90M parameters (wav2vec2/data2vec base shape), receptive field 46 ms."""
        return cls(**overrides)

    @classmethod
    def large(cls, **overrides: Any) -> ModelConfig:
        """16 layers, 1024 dim, 16 heads, as the animal2vec paper's model."""
        base = dict(dim=1024, depth=16, heads=16, layerdrop=0.0)
        return cls(**{**base, **overrides})

    # -- derived geometry
    @property
    def total_stride(self) -> int:
        stride = self.sinc_stride
        for _, _, s in self.conv_layers:
            stride *= s
        return stride

    @property
    def receptive_field_samples(self) -> int:
        field_, jump = self.sinc_kernel, self.sinc_stride
        for _, k, s in self.conv_layers:
            field_ += (k - 1) * jump
            jump *= s
        return field_

    @property
    def frame_rate_hz(self) -> float:
        return self.sample_rate / self.total_stride

    @property
    def receptive_field_s(self) -> float:
        return self.receptive_field_samples / self.sample_rate

    @property
    def frame_padding(self) -> tuple[int, int]:
        """Zero samples added (left, right) so frames are centred and n_frames = n // stride."""
        extra = max(self.receptive_field_samples - self.total_stride, 0)
        return extra // 2, extra - extra // 2

    def n_frames(self, n_samples: int) -> int:
        """Exact number of output frames for a clip of `n_samples` samples."""
        return max(int(n_samples), 0) // self.total_stride


def model_preset(name: str, **overrides: Any) -> ModelConfig:
    presets = {"tiny": ModelConfig.tiny, "small": ModelConfig.small,
               "small100": ModelConfig.small100, "base": ModelConfig.base,
               "large": ModelConfig.large}
    if name not in presets:
        check_choice(name, tuple(presets), "model preset")
    return presets[name](**overrides)


# ---------------------------------------------------------------- metadata heads
@dataclass(frozen=True)
class MetadataHeadConfig(ConfigBase):
    """One auxiliary head on the pooled clip embedding (MetaPerch-style).

    kind: "location" (target (lat, lon) degrees -> unit vector, loss 1 - cosine),
          "circular" (target phase in [0, 1), e.g. time of day -> (cos, sin), loss 1 - cosine),
          "class" (target index into `vocabulary`, cross-entropy),
          "regression" (target standardised with target_mean/target_std, MSE).
    mode: "standard" (helps the embedding predict it), "adversarial" (gradient reversal:
          the embedding is pushed to NOT encode it, e.g. recorder_id), "off".
    The reversal strength ramps DANN-style: grl_max_lambda * (2 / (1 + exp(-10 p)) - 1),
    p = step / grl_warmup_steps (capped at 1; no warm-up means the full lambda at once).
    """

    name: str
    kind: str
    mode: str = "standard"
    weight: float = 1.0
    grl_max_lambda: float = 1.0
    grl_warmup_steps: int = 0
    vocabulary: tuple[str, ...] = ()  # "class" heads: fill from the data before building
    target_mean: float = 0.0  # "regression" heads
    target_std: float = 1.0

    def __post_init__(self) -> None:
        check_choice(self.kind, META_KINDS, f"metadata head '{self.name}': kind")
        check_choice(self.mode, META_MODES, f"metadata head '{self.name}': mode")
        check(self.weight >= 0, f"metadata head '{self.name}': weight must be >= 0")
        check(self.target_std > 0, f"metadata head '{self.name}': target_std must be > 0")
        check(self.grl_warmup_steps >= 0, f"metadata head '{self.name}': grl_warmup_steps < 0")


def default_metadata_heads() -> tuple[MetadataHeadConfig, ...]:
    """Where/when as helpful context; recorder identity as a nuisance to unlearn."""
    return (
        MetadataHeadConfig("location", "location", weight=0.1),
        MetadataHeadConfig("time_of_day", "circular", weight=0.1),
        MetadataHeadConfig("day_of_year", "circular", weight=0.1),
        MetadataHeadConfig("recorder_id", "class", mode="adversarial", weight=0.1,
                           grl_warmup_steps=2000),
    )


# ---------------------------------------------------------------- training
@dataclass(frozen=True)
class OptimConfig(ConfigBase):
    """The optimiser and schedule both stages share (train/engine.py): AdamW, linear warm-up
    then cosine decay, gradient clipping and accumulation, GPU autocast. The stage configs
    inherit these fields flat, so `--set lr=...` and the configs stored in checkpoints keep
    their keys. The defaults are pretraining's; finetuning states its own lr and length."""

    lr: float = 5e-4
    warmup_steps: int = 2_000
    steps: int = 50_000
    batch_size: int = 16  # clips per step and GPU
    grad_accum: int = 1
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # max gradient norm (0: no clipping)
    amp: str = "bf16"

    def __post_init__(self) -> None:
        check(self.steps >= 1 and self.batch_size >= 1 and self.grad_accum >= 1,
               "steps, batch_size and grad_accum must be >= 1")
        check_choice(self.amp, AMP_MODES, "amp")


@dataclass(frozen=True)
class PretrainConfig(OptimConfig):
    """data2vec self-distillation (train/masking.py explains the mask parameterisation).

    The defaults are data2vec audio's regime fitted to 50 fps frames and short clips (issue
    10); animal2vec's values stay one `--set` away: mask_prob=1.6 mask_length=2
    ema_decay=0.9997 ema_end_decay=1.0 ema_anneal_frac=0.78 feature_grad_mult=1.0
    frontend_lr_mult=1.0 frontend_norm=train.
    """

    # ~59% of a 100-frame (2 s) clip masked in 5-frame (100 ms) spans; 7% of masked frames out
    # of the tiny preset's positional-conv reach. animal2vec's (1.6, 2) masks ~96% and leaves
    # 64% of them out of reach at 50 fps (train/masking.py explains why that matters).
    mask_prob: float = 0.8
    mask_length: int = 5  # frames (100 ms at 50 fps)
    min_masks: int = 1
    # data2vec audio's decays, annealed over the first 30% of the run (ema_anneal_frac) unless
    # ema_anneal_steps is set. The old 0.999 -> 1.0 over the whole run froze the teacher: over
    # 1,500 steps it summed to 0.75 time constants (train.ema.summed_update_weight): the teacher
    # stayed near its random init. Never 1.0 by default, so the teacher always follows.
    ema_decay: float = 0.999
    ema_end_decay: float = 0.9999
    ema_anneal_steps: int | None = None  # None or 0: ema_anneal_frac * steps
    ema_anneal_frac: float = 0.3
    ema_schedule: str = "linear"
    top_k_layers: int = 8  # clipped to the model depth by `top_k(depth)`
    instance_norm_targets: bool = True  # per layer, over time, before averaging
    final_target_norm: str = "none"  # after averaging: "none" | "instance" | "layer"
    loss: str = "mse"
    loss_beta: float = 0.25  # smooth_l1 only
    clone_batch: int = 1  # each clip's features repeated N times under different masks
    # Front-end protection. Without it the front end's output stopped varying over time
    # within 25-75 steps (std 0.39 -> 0.06-0.13) and a linear probe on the pretrained model
    # fell below one on a random model (test AP 0.034 vs 0.089). Most of it came from the
    # random regression head (pretrain.py now starts it at zero). Measured on a fixed batch
    # after 40 steps (tiny, synth tiny, lr 1e-3): std over time 0.30 at init -> 0.09 with
    # the old head, 0.18 with a zero head, 0.32 with a zero head and frontend_lr_mult 0.1.
    # feature_grad_mult is wav2vec2's gradient scale (data2vec audio uses 1.0). Under Adam a
    # constant gradient scale hardly changes the updates (they are normalised per
    # parameter; it acts through eps and the clipping norm only): 0.1 vs 1.0 collapsed the
    # same (std 0.145 vs 0.136 after 10 steps). The learning rate multiplier is what slows
    # the front end; 0 freezes it for pretraining.
    feature_grad_mult: float = 0.1  # gradient into sinc + convs x this (1 = off)
    frontend_lr_mult: float = 0.1  # learning rate of sinc + BatchNorm + convs x this
    # "frozen": BatchNorm statistics fitted on 64 clips before step 1, then fixed, affine
    # untrained: the normalisation then does not depend on the batch (clone batches, small
    # batches) and offers no scale to shrink towards 0; "train": ordinary BatchNorm.
    frontend_norm: str = "frozen"
    # data2vec's variance guards (per-dim std over masked frames; its values 0.1 / 0.01):
    # stop the run with a CollapseError once past the warm-up (None: 10% of the steps, at
    # least 100; the zero-initialised regression head starts at pred_var 0).
    min_target_var: float = 0.1
    min_pred_var: float = 0.01
    variance_warmup_steps: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.mask_length >= 1, "mask_length must be >= 1 frame")
        check(0.0 <= self.mask_prob <= self.mask_length,
               f"mask_prob {self.mask_prob} must be in [0, mask_length] (it is the "
               "pre-overlap masked fraction; 0.8 with mask_length 5 masks ~59%)")
        check(0.0 <= self.ema_decay <= self.ema_end_decay <= 1.0,
               "need 0 <= ema_decay <= ema_end_decay <= 1")
        check(self.ema_anneal_steps is None or self.ema_anneal_steps >= 0,
               "ema_anneal_steps must be >= 0 (or null for ema_anneal_frac of the run)")
        check(0.0 < self.ema_anneal_frac <= 1.0, "ema_anneal_frac must be in (0, 1]")
        check_choice(self.ema_schedule, EMA_SCHEDULES, "ema_schedule")
        check(self.top_k_layers >= 1, "top_k_layers must be >= 1")
        check_choice(self.final_target_norm, TARGET_NORMS, "final_target_norm")
        check_choice(self.loss, D2V_LOSSES, "loss")
        check(self.clone_batch >= 1, "clone_batch must be >= 1")
        check(self.feature_grad_mult >= 0, "feature_grad_mult must be >= 0")
        check(self.frontend_lr_mult >= 0, "frontend_lr_mult must be >= 0")
        check_choice(self.frontend_norm, ("frozen", "train"), "frontend_norm")
        check(self.min_target_var >= 0 and self.min_pred_var >= 0,
               "min_target_var and min_pred_var must be >= 0 (0 = no guard)")
        check(self.variance_warmup_steps is None or self.variance_warmup_steps >= 0,
               "variance_warmup_steps must be >= 0 (or null for 10% of the run, >= 100)")

    def top_k(self, depth: int) -> int:
        return min(self.top_k_layers, depth)

    def ema_anneal(self) -> int:
        """Steps over which the EMA decay goes from ema_decay to ema_end_decay."""
        if self.ema_anneal_steps:
            return int(self.ema_anneal_steps)
        return max(1, round(self.ema_anneal_frac * self.steps))

    def variance_warmup(self) -> int:
        """Steps before the variance guards apply."""
        if self.variance_warmup_steps is None:
            return max(self.steps // 10, 100)
        return int(self.variance_warmup_steps)


@dataclass(frozen=True)
class FinetuneConfig(OptimConfig):
    """Frame-level multi-label finetuning with focal loss, lighter masking and metadata heads.

    The defaults are the recipe from scratch; `from_pretrained()` is the recipe for starting
    from a pretrained model (`meerkit train finetune --init` uses it).
    """

    focal_gamma: float = 2.0
    focal_alpha: float | None = 0.25
    # animal2vec masks during finetuning too; at CPU scale it costs half the AP (tiny teacher
    # from scratch, 400 steps, synth small: val / test macro AP 0.183 / 0.115 with mask_prob
    # 0.8, ~55% of frames masked, vs 0.332 / 0.263 with 0). Off by default; `--set
    # mask_prob=0.5` for long GPU runs.
    mask_prob: float = 0.0
    mask_length: int = 2
    freeze_encoder_steps: int = 2_000  # first steps: only the heads learn
    # animal2vec keeps a pretrained sinc + conv front end frozen. At CPU scale that leaves the
    # teacher at chance (synth small, tiny, 400 steps from a 300-step pretrained model: test
    # macro AP 0.022 frozen vs 0.191 trainable), so it learns by default; `false` to freeze.
    train_feature_encoder: bool = True
    layer_lr_decay: float = 1.0  # < 1: lower layers learn slower (1 = off)
    mixup_prob: float = 0.5
    # Waveform augmentation of every batch before mixup (train/augment.py: gain, time shift,
    # white noise, background clips from the unlabelled `pretrain` split when the dataset has
    # one), the labels moved with the audio. Tiny teacher on synth demo, 2,000 steps: val
    # macro AP 0.597 with it; without it train loss fell to 0.02 and val peaked at 0.52.
    augment: bool = True
    lr: float = 5e-5
    warmup_steps: int = 1_000
    steps: int = 20_000
    metadata_heads: tuple[MetadataHeadConfig, ...] = field(default_factory=tuple)
    # Hide each metadata field of this share of the training files, as if the cell were
    # empty (a benchmark knob: how the heads fare at 50 % / 90 % missing metadata; which files
    # is fixed by the run's seed).
    metadata_missing_frac: float = 0.0

    _nested: typing.ClassVar[dict[str, type]] = {"metadata_heads": MetadataHeadConfig}

    @classmethod
    def from_pretrained(cls, **overrides: Any) -> FinetuneConfig:
        """The recipe for finetuning a pretrained model; `overrides` win.

        * Head-only warm-up, the first 10 % of the steps (`freeze_encoder_steps`, from
          `steps`): a fresh classifier's first gradients are large and noisy, and flowing
          into the backbone they overwrite the pretrained features before the head can use
          them (linear-probe-then-finetune, Kumar et al. 2022; wav2vec 2.0's
          freeze_finetune_updates likewise).
        * Layer-wise learning-rate decay 0.75 (`layer_lr_decay`; BEiT and data2vec use
          0.65-0.75): the lower a layer, the more general what it learned and the less it
          should move, so block k of D learns at lr * 0.75 ** (D + 1 - k) and the sinc + conv
          front end at lr * 0.75 ** (D + 1): 0.32x for the tiny preset's 3 blocks, 0.02x for
          base's 12. The heads learn at the full lr.
        * The front end stays trainable: frozen, it left the CPU-scale teacher at chance
          (see `train_feature_encoder`). animal2vec's frozen front end is one candidate, as
          is a uniform learning rate, that benchmarks/train_table.py picks among on `val`
          (benchmarks.train_claims.PRETRAINED_CANDIDATES) and records the choice.
        """
        steps = int(overrides.get("steps", cls.steps))
        base: dict[str, Any] = {"layer_lr_decay": 0.75, "train_feature_encoder": True,
                                "freeze_encoder_steps": max(1, steps // 10)}
        return cls(**{**base, **overrides})

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.focal_gamma >= 0, "focal_gamma must be >= 0")
        check(self.focal_alpha is None or 0.0 <= self.focal_alpha <= 1.0,
               "focal_alpha must be in [0, 1] or None")
        check(self.mask_length >= 1, "mask_length must be >= 1 frame")
        check(0.0 <= self.mask_prob <= self.mask_length, "mask_prob must be in [0, mask_length]")
        check(0.0 < self.layer_lr_decay <= 1.0, "layer_lr_decay must be in (0, 1]")
        check(0.0 <= self.mixup_prob <= 1.0, "mixup_prob must be in [0, 1]")
        check(0.0 <= self.metadata_missing_frac <= 1.0,
               f"metadata_missing_frac must be in [0, 1], got {self.metadata_missing_frac}")
        check(self.freeze_encoder_steps >= 0, "freeze_encoder_steps must be >= 0")
        names = [h.name for h in self.metadata_heads]
        check(len(names) == len(set(names)), f"metadata head names repeat: {names}")


__all__ = [
    "FinetuneConfig",
    "MetadataHeadConfig",
    "ModelConfig",
    "OptimConfig",
    "PretrainConfig",
    "default_metadata_heads",
    "model_preset",
]
