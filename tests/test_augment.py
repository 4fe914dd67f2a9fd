"""Student-training augmentations: deterministic by seed, identity when off, and frame tracks
that follow the audio (shift, mixup)."""

import dataclasses

import pytest
import torch

from edge_runtime.contract.errors import UserError
from train.augment import AugmentConfig, augment_batch, draw_masks, mask_features

SR, HOP, FRAMES, C = 16000, 320, 100, 6  # 2 s windows at 50 fps
OFF = AugmentConfig.none()


def windows(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    audio = 0.1 * torch.randn(n, FRAMES * HOP, generator=g)
    labels = (torch.rand(n, FRAMES, C, generator=g) < 0.1).float()
    return audio, labels


def only(**fields) -> AugmentConfig:
    return dataclasses.replace(OFF, **fields)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def db(x):
    return 20 * torch.log10(x.square().mean(-1).sqrt())


def test_shapes_and_dtypes_are_kept():
    audio, labels = windows()
    pool = torch.randn(3, 40000)
    out = augment_batch(audio, labels, AugmentConfig(), gen(), background=pool)
    assert out.audio.shape == audio.shape and out.audio.dtype == torch.float32
    assert out.labels.shape == labels.shape and out.labels.dtype == labels.dtype
    assert out.shift_frames.shape == out.mix_perm.shape == out.mix_lam.shape == (len(audio),)
    assert out.shift_frames.dtype == out.mix_perm.dtype == torch.long
    feats = torch.randn(6, FRAMES, 64)
    assert mask_features(feats, AugmentConfig(), gen()).shape == feats.shape


def test_same_seed_same_batch_different_seed_different():
    audio, labels = windows()
    pool = torch.randn(3, 40000)
    config = AugmentConfig(gain_p=1, shift_p=1, noise_p=1, background_p=1, mixup_p=1)
    a = augment_batch(audio, labels, config, gen(1), background=pool)
    b = augment_batch(audio, labels, config, gen(1), background=pool)
    c = augment_batch(audio, labels, config, gen(2), background=pool)
    assert torch.equal(a.audio, b.audio) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.mix_lam, b.mix_lam) and torch.equal(a.shift_frames, b.shift_frames)
    assert not torch.equal(a.audio, c.audio)
    feats = torch.randn(6, FRAMES, 64)
    assert torch.equal(mask_features(feats, config, gen(1)), mask_features(feats, config, gen(1)))
    assert not torch.equal(mask_features(feats, config, gen(1)),
                           mask_features(feats, config, gen(2)))


def test_none_is_the_identity():
    audio, labels = windows()
    out = augment_batch(audio, labels, OFF, gen(), background=torch.randn(2, 32000))
    assert torch.equal(out.audio, audio) and torch.equal(out.labels, labels)
    assert not out.shift_frames.any() and torch.equal(out.mix_perm, torch.arange(len(audio)))
    assert torch.equal(out.mix_lam, torch.ones(len(audio)))
    probs = torch.rand(len(audio), FRAMES, C)
    assert torch.equal(out.soft(probs), probs)
    feats = torch.randn(6, FRAMES, 64)
    assert torch.equal(mask_features(feats, OFF, gen()), feats)


def test_gain_changes_the_level_by_the_drawn_decibels():
    audio, labels = windows()
    out = augment_batch(audio, labels, only(gain_p=1.0, gain_db=(-12.0, 6.0)), gen())
    assert torch.allclose(db(out.audio) - db(audio), out.gain_db, atol=1e-3)
    assert ((out.gain_db >= -12) & (out.gain_db <= 6)).all() and out.gain_db.std() > 1
    assert torch.equal(out.labels, labels)


@pytest.mark.parametrize("mode", ["circular", "zero"])
def test_time_shift_moves_labels_by_the_same_frames_as_audio(mode):
    n, k = 8, 40  # an impulse at frame k in both audio and labels
    audio = torch.zeros(n, FRAMES * HOP)
    audio[:, k * HOP + 7] = 1.0
    labels = torch.zeros(n, FRAMES, C)
    labels[:, k, 2] = 1.0
    out = augment_batch(audio, labels, only(shift_p=1.0, shift_max=0.9, shift_mode=mode), gen(3))
    assert out.shift_frames.abs().max() > FRAMES - k  # some impulses fall off the end
    for i, s in enumerate(out.shift_frames.tolist()):
        target = k + s
        if mode == "circular" or 0 <= target < FRAMES:
            target %= FRAMES
            assert out.audio[i].nonzero().flatten().tolist() == [target * HOP + 7]
            assert out.labels[i].nonzero().tolist() == [[target, 2]]
        else:  # shifted out: silence and no label
            assert not out.audio[i].any() and not out.labels[i].any()
    track = torch.arange(FRAMES, dtype=torch.float32)[None, :, None].expand(n, FRAMES, 1)
    shifted = out.shift(track)  # cached teacher tracks move the same way
    i = int(out.shift_frames.abs().argmin())
    s = int(out.shift_frames[i])
    assert shifted[i, (k + s) % FRAMES, 0] == k


def test_mixup_mixes_audio_and_soft_targets_by_the_weights_and_unites_labels():
    n = 6
    audio = torch.randn(n, FRAMES * HOP)
    labels = torch.zeros(n, FRAMES, C)
    for i in range(n):
        labels[i, :, i] = 1.0  # window i carries label i only
    out = augment_batch(audio, labels, only(mixup_p=1.0, mixup_weight=(0.6, 0.8)), gen(5))
    mixed = out.mix_lam < 1
    assert mixed.sum() >= n // 2
    assert ((out.mix_lam[mixed] >= 0.6) & (out.mix_lam[mixed] <= 0.8)).all()
    lam, perm = out.mix_lam[:, None], out.mix_perm
    assert torch.allclose(out.audio, lam * audio + (1 - lam) * audio[perm], atol=1e-6)
    for i in range(n):
        want = {i, int(perm[i])} if mixed[i] else {i}
        assert set(out.labels[i, 0].nonzero().flatten().tolist()) == want
    probs = torch.rand(n, FRAMES, C)
    assert torch.allclose(out.soft(probs), lam[:, :, None] * probs
                          + (1 - lam[:, :, None]) * probs[perm])


def test_noise_and_background_arrive_at_an_snr_in_range():
    audio, labels = windows()
    out = augment_batch(audio, labels, only(noise_p=1.0, noise_snr_db=(10.0, 20.0)), gen())
    snr = db(audio) - db(out.audio - audio)
    assert ((snr > 9.5) & (snr < 20.5)).all() and snr.std() > 0.5
    tone = torch.sin(torch.arange(50000) * 0.3)[None]  # one background clip, a pure tone
    config = only(background_p=1.0, background_snr_db=(0.0, 6.0))
    out = augment_batch(audio, labels, config, gen(), background=tone)
    added = out.audio - audio
    snr = db(audio) - db(added)
    assert ((snr > -0.1) & (snr < 6.1)).all()
    spectrum = torch.fft.rfft(added[0]).abs()
    assert spectrum.argmax() == round(0.3 / (2 * torch.pi) * added.shape[1])
    assert torch.equal(augment_batch(audio, labels, config, gen()).audio, audio)  # no pool


def test_spec_masks_cover_the_drawn_counts():
    feats = torch.randn(5, FRAMES, 64) + 3.0
    config = only(spec_p=1.0, time_masks=1, time_mask_frames=(7, 7), freq_masks=0)
    out = mask_features(feats, config, gen())
    assert ((out == 0).all(dim=2).sum(dim=1) == 7).all()  # exactly 7 whole frames per window
    config = only(spec_p=1.0, time_masks=0, freq_masks=2, freq_mask_bins=(4, 4))
    out = mask_features(feats, config, gen())
    bins = (out == 0).all(dim=1).sum(dim=1)
    assert ((bins >= 4) & (bins <= 8)).all()  # two masks of 4, possibly overlapping
    config = only(spec_p=1.0, time_masks=2, time_mask_frames=(3, 10), freq_masks=1,
                  freq_mask_bins=(2, 5), mask_fill="mean")
    time, freq = draw_masks(5, FRAMES, 64, config, gen(9))
    out = mask_features(feats, config, gen(9))
    masked = time[:, :, None] | freq[:, None, :]
    fill = feats.mean(dim=(1, 2), keepdim=True).expand_as(feats)
    assert torch.equal(out[masked], fill[masked]) and torch.equal(out[~masked], feats[~masked])
    assert ((time.sum(1) >= 3) & (time.sum(1) <= 20)).all()


def test_bad_inputs_are_user_errors():
    audio, labels = windows()
    with pytest.raises(UserError, match="whole frames"):
        augment_batch(audio[:, :-1], labels, AugmentConfig(), gen())
    with pytest.raises(UserError, match="gain_p"):
        AugmentConfig(gain_p=1.5)
    with pytest.raises(UserError, match="shift_mode"):
        AugmentConfig(shift_mode="reflect")
    with pytest.raises(UserError, match="background pool"):
        augment_batch(audio, labels, only(background_p=1.0), gen(), background=torch.zeros(5))
