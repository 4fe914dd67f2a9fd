"""The animal2vec-style teacher: configs, geometry, sinc front end, padding, heads, EMA,
metadata heads with gradient reversal, deployable copy and torch.export (tiny preset, CPU)."""

from __future__ import annotations

import math

import pytest
import torch

from edge_runtime.contract.errors import UserError
from train.config import (
    FinetuneConfig,
    MetadataHeadConfig,
    ModelConfig,
    PretrainConfig,
    default_metadata_heads,
    model_preset,
)
from train.ema import EMATeacher, ema_decay_schedule
from train.losses import data2vec_loss
from train.masking import compute_span_mask
from train.model import Animal2Vec, grad_reverse, grl_lambda, layerwise_param_groups
from train.model.metadata import MetadataHeads
from train.model.sinc import SincFilterbank

SR = 16000


@pytest.fixture(scope="module")
def tiny() -> ModelConfig:
    return ModelConfig.tiny()


def _model(n_classes: int = 5, heads=(), seed: int = 0, **overrides) -> Animal2Vec:
    torch.manual_seed(seed)
    return Animal2Vec(ModelConfig.tiny(**overrides), n_classes=n_classes, metadata_heads=heads)


def _meta_heads() -> tuple[MetadataHeadConfig, ...]:
    return (MetadataHeadConfig("location", "location"),
            MetadataHeadConfig("time_of_day", "circular"),
            MetadataHeadConfig("recorder_id", "class", mode="adversarial",
                               vocabulary=("r1", "r2", "r3")),
            MetadataHeadConfig("elevation_m", "regression", target_mean=500.0, target_std=200.0))


# ---------------------------------------------------------------- configs
def test_config_round_trips_through_plain_dicts():
    for config in (ModelConfig.tiny(), ModelConfig.base(), ModelConfig.large(), PretrainConfig(),
                   FinetuneConfig(metadata_heads=_meta_heads())):
        data = config.to_dict()
        assert type(config).from_dict(data) == config
    # JSON gives lists where the config holds tuples
    data = ModelConfig.tiny().to_dict()
    data["conv_layers"] = [list(layer) for layer in data["conv_layers"]]
    assert ModelConfig.from_dict(data) == ModelConfig.tiny()


def test_unknown_key_is_a_user_error_naming_the_closest_key():
    with pytest.raises(UserError, match=r"'dimm'.*did you mean 'dim'"):
        ModelConfig.from_dict({"dimm": 128})
    with pytest.raises(UserError, match=r"metadata_heads\[0\].*'wieght'.*'weight'"):
        FinetuneConfig.from_dict({"metadata_heads": [{"name": "x", "kind": "class", "wieght": 1}]})
    with pytest.raises(UserError, match="did you mean 'base'"):
        model_preset("bse")


def test_invalid_values_are_user_errors():
    with pytest.raises(UserError, match="divisible by heads"):
        ModelConfig.tiny(dim=66)
    with pytest.raises(UserError, match="kind 'locaton'.*did you mean 'location'"):
        MetadataHeadConfig("loc", "locaton")
    with pytest.raises(UserError, match="mask_prob"):
        PretrainConfig(mask_prob=3.0, mask_length=2)


def test_presets_geometry():
    tiny, base, large = ModelConfig.tiny(), ModelConfig.base(), ModelConfig.large()
    small = model_preset("small")
    for config in (tiny, small, base, large):
        assert config.total_stride == 320 and config.frame_rate_hz == 50.0
    # small: finer sinc envelopes (400 fps) and one more stride-2 conv, the same 50 fps framing,
    # so a teacher of either stitches alike
    assert small.receptive_field_samples > tiny.receptive_field_samples
    assert (small.dim, small.conv_layers[0][0], small.sinc_filters) == (128, 128, 64)
    assert small.sinc_stride * 2 ** len(small.conv_layers) == 320
    assert model_preset("small", depth=4).depth == 4  # overrides win
    assert base.receptive_field_samples == 739
    assert base.receptive_field_s == pytest.approx(0.046, abs=0.001)
    # frame rate follows the sample rate
    assert ModelConfig.tiny(sample_rate=8000).frame_rate_hz == 25.0
    assert (large.depth, large.dim, large.heads) == (16, 1024, 16)
    assert PretrainConfig().top_k(depth=3) == 3 and PretrainConfig().top_k(depth=16) == 8


@pytest.mark.parametrize("n_samples", [320, 639, 16000, 16319, 12345])
def test_frame_count_formula_matches_the_model(tiny, n_samples):
    model = _model()
    with torch.no_grad():
        out = model(torch.randn(2, n_samples))
    assert tiny.n_frames(n_samples) == n_samples // 320 == out.frame_logits.shape[1]


def test_centring_removes_a_recording_gain_and_old_checkpoints_load_without_it():
    """A gain is a constant log offset per band: centred envelopes do not see it, uncentred
    ones do; a spec saved before the field existed rebuilds an uncentred model."""
    audio = torch.randn(2, 16000) * 0.05
    centred, plain = _model().eval(), _model(frontend_centring=False).eval()
    with torch.no_grad():
        loud = 10 ** (12 / 20) * audio
        # (not exactly: the log floor is not scaled with the gain)
        assert torch.allclose(centred.features(audio), centred.features(loud), atol=3e-3)
        assert not torch.allclose(plain.features(audio), plain.features(loud), atol=0.1)
    spec = centred.spec()
    del spec["model"]["frontend_centring"]
    assert Animal2Vec.from_spec(spec).config.frontend_centring is False


def test_frames_see_exactly_their_centred_receptive_field(tiny):
    """Perturb one sample: exactly the frames whose receptive field (centred on the frame's
    time span) contains it change, confirming receptive_field_samples and the padding.
    Centring subtracts a clip-wide mean, so it is off here (its own test follows)."""
    model = _model(frontend_centring=False).eval()
    audio = torch.randn(1, 8000) * 0.1
    sample = 4321
    bumped = audio.clone()
    bumped[0, sample] += 0.5
    with torch.no_grad():
        changed = (model.features(audio) - model.features(bumped)).abs().amax(-1)[0] > 0
    left, _ = tiny.frame_padding
    rf = tiny.receptive_field_samples
    expected = [k for k in range(changed.numel())
                if 320 * k - left <= sample <= 320 * k - left + rf - 1]
    assert changed.nonzero()[:, 0].tolist() == expected
    centre = 320 * expected[len(expected) // 2] - left + (rf - 1) / 2
    assert abs(centre - (320 * expected[len(expected) // 2] + 160)) <= 0.5


# ---------------------------------------------------------------- model
def test_output_shapes(tiny):
    model = _model(n_classes=7)
    out = model(torch.randn(3, SR))
    assert out.frame_logits.shape == (3, 50, 7)
    assert out.embedding.shape == out.final.shape == out.features.shape == (3, 50, tiny.dim)
    assert out.pooled.shape == (3, tiny.dim)
    assert len(out.layer_outputs) == len(out.ffn_outputs) == tiny.depth
    assert out.padding_mask is None
    assert _model(n_classes=0)(torch.randn(1, SR)).frame_logits is None


def test_parameter_budgets():
    assert _model(n_classes=20, heads=_meta_heads()).num_parameters() < 1_000_000
    with torch.device("meta"):  # no RAM for 200M parameters
        large = Animal2Vec(ModelConfig.large(), n_classes=10)
    assert len(large.context.blocks) == 16
    block = large.context.blocks[0]
    assert block.attn.heads == 16 and block.attn.qkv.in_features == 1024
    assert 150e6 < large.num_parameters() < 300e6


def test_mask_embedding_replaces_only_masked_frames():
    model = _model().eval()
    audio = torch.randn(2, SR)
    mask = torch.zeros(2, 50, dtype=torch.bool)
    with torch.no_grad():
        plain = model(audio)
        unmasked = model(audio, mask=mask)
        mask[0, 10:20] = True
        masked = model(audio, mask=mask)
    assert torch.equal(plain.frame_logits, unmasked.frame_logits)
    assert torch.equal(plain.features, masked.features)  # features are reported pre-mask
    assert not torch.allclose(plain.final[0], masked.final[0])
    assert torch.allclose(plain.final[1], masked.final[1], atol=1e-6)  # other clip untouched


def test_padded_batch_matches_unpadded_clips():
    model = _model().eval()
    short, long = torch.randn(1, 9600), torch.randn(1, SR)
    batch = torch.cat([torch.nn.functional.pad(short, (0, SR - 9600)), long])
    with torch.no_grad():
        out = model(batch, lengths=torch.tensor([9600, SR]))
        alone = model(short)
    assert out.padding_mask[0].sum() == 50 - 30 and not out.padding_mask[1].any()
    assert torch.allclose(out.frame_logits[0, :30], alone.frame_logits[0], atol=1e-5)
    assert torch.allclose(out.pooled[0], alone.pooled[0], atol=1e-5)


def test_layerdrop_only_while_training():
    model = _model(layerdrop=0.99).eval()
    audio = torch.randn(1, SR)
    with torch.no_grad():
        a, b = model(audio).final, model(audio).final
    assert torch.equal(a, b)
    torch.manual_seed(1)
    out = model.train()(audio)
    assert torch.equal(out.layer_outputs[-1], out.layer_outputs[0])  # ~all blocks skipped


def test_frozen_feature_encoder_gets_no_gradient():
    model = _model()
    model.set_trainable(features=False, context=True)
    model(torch.randn(2, SR)).frame_logits.sum().backward()
    assert model.frontend.low_khz.grad is None and all(
        p.grad is None for p in model.encoder.parameters())
    assert model.context.blocks[0].attn.qkv.weight.grad is not None


def test_layerwise_param_groups_decay_with_depth():
    model = _model()
    groups = layerwise_param_groups(model, lr=1.0, weight_decay=0.1, layer_decay=0.5)
    covered = [id(p) for g in groups for p in g["params"]]
    assert sorted(covered) == sorted(id(p) for p in model.parameters())
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    depth = model.config.depth
    assert lr_of[id(model.frontend.low_khz)] == 0.5 ** (depth + 1)
    assert lr_of[id(model.context.blocks[0].attn.qkv.weight)] == 0.5 ** depth
    assert lr_of[id(model.classifier.linear.weight)] == 1.0
    assert all(g["weight_decay"] == 0.0 for g in groups if g["params"][0].ndim < 2)


# ---------------------------------------------------------------- sinc front end
def test_sinc_filters_follow_their_band_edges_and_get_gradients():
    bank = SincFilterbank(8, 101, SR, stride=2)
    before = bank.filters().detach().clone()
    with torch.no_grad():
        bank.low_khz[3] += 0.2
    after = bank.filters().detach()
    changed = (before - after).abs().amax(-1)[:, 0] > 1e-6  # (2 * filters,)
    assert changed.tolist() == [i % 8 == 3 for i in range(16)]
    bank(torch.randn(2, 4000)).mean().backward()
    for p in (bank.low_khz, bank.band_khz):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_sinc_envelope_of_a_tone_peaks_in_its_band_at_unit_gain():
    bank = SincFilterbank(16, 401, SR)
    low, high = (t.detach() for t in bank.band_edges())
    tone_hz = 2000.0
    band = int(((low < tone_hz) & (high > tone_hz)).nonzero()[0])
    t = torch.arange(SR) / SR
    with torch.no_grad():
        env = bank(0.5 * torch.sin(2 * math.pi * tone_hz * t)[None])[0, :, 1000:-1000].mean(-1)
    assert env.argmax() == band
    assert env[band].item() == pytest.approx(math.log(0.5), abs=0.15)  # unit pass-band gain
    assert (env[band] - env[(low > 2 * tone_hz)]).min() > 2.0  # far bands: > 17 dB lower


# ---------------------------------------------------------------- EMA teacher
def test_ema_update_math_and_frozen_teacher():
    student = _model().context
    teacher = EMATeacher(student)
    assert not any(p.requires_grad for p in teacher.module.parameters())
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    old = [p.clone() for p in teacher.module.parameters()]
    teacher.update(student, decay=0.9)
    for t, t0, s in zip(teacher.module.parameters(), old, student.parameters(), strict=True):
        assert torch.allclose(t, 0.9 * t0 + 0.1 * s, atol=1e-6)
    out = teacher(torch.randn(1, 10, student.norm.normalized_shape[0]))
    assert out.x.grad_fn is None
    frozen = [p.clone() for p in teacher.module.parameters()]
    teacher.update(student, decay=1.0)
    assert all(torch.equal(a, b) for a, b in zip(frozen, teacher.module.parameters(), strict=True))


def test_ema_state_dict_resumes_exactly():
    student = _model().context
    a = EMATeacher(student)
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(1.5)
    a.update(student, 0.99)
    b = EMATeacher(_model(seed=5).context)
    b.load_state_dict(a.state_dict())
    a.update(student, 0.95)
    b.update(student, 0.95)
    assert all(torch.equal(x, y) for x, y in zip(a.module.parameters(), b.module.parameters(), strict=True))


def test_ema_decay_schedule():
    assert ema_decay_schedule(0, 0.999, 1.0, 1000) == 0.999
    assert ema_decay_schedule(500, 0.999, 1.0, 1000) == pytest.approx(0.9995)
    assert ema_decay_schedule(250, 0.9, 1.0, 1000, "cosine") == pytest.approx(
        0.9 + 0.1 * 0.5 * (1 - math.cos(math.pi / 4)))
    assert ema_decay_schedule(5000, 0.999, 1.0, 1000) == 1.0


def test_one_pretraining_step_trains_the_student_not_the_teacher():
    model = _model(n_classes=0)
    teacher = EMATeacher(model.context)
    audio, lengths = torch.randn(2, SR), torch.tensor([SR, 12000])
    mask = compute_span_mask(2, 50, 1.6, 2, generator=torch.Generator().manual_seed(0),
                             padding_mask=model.padding_mask(lengths, 50))
    out = model(audio, mask=mask, lengths=lengths)
    targets = teacher(out.features, padding_mask=out.padding_mask).ffn
    loss = data2vec_loss(model.regression_head(out.final), targets, mask, top_k=2,
                         padding_mask=out.padding_mask)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    for p in (model.mask_embedding, model.regression_head.weight, model.frontend.band_khz):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.module.parameters())


# ---------------------------------------------------------------- metadata heads
def _meta_batch():
    targets = {
        "location": torch.tensor([[52.5, 13.4], [float("nan"), float("nan")], [-33.9, 18.4]]),
        "time_of_day": torch.tensor([0.25, 0.9, float("nan")]),
        "recorder_id": torch.tensor([0, -1, 2]),
        "elevation_m": torch.tensor([float("nan"), 800.0, 20.0]),
    }
    valid = {k: torch.tensor(v) for k, v in {
        "location": [True, False, True], "time_of_day": [True, True, False],
        "recorder_id": [True, False, True], "elevation_m": [False, True, True]}.items()}
    return targets, valid


def test_grad_reverse_negates_the_gradient_into_the_encoder():
    torch.manual_seed(0)
    standard = MetadataHeads(16, [MetadataHeadConfig("rec", "class", vocabulary=("a", "b", "c"))])
    adversarial = MetadataHeads(16, [MetadataHeadConfig("rec", "class", mode="adversarial",
                                                        vocabulary=("a", "b", "c"))])
    adversarial.load_state_dict(standard.state_dict())
    pooled = torch.randn(4, 16)
    targets = {"rec": torch.tensor([0, 1, 2, 1])}
    grads, head_grads = [], []
    for heads in (standard, adversarial):
        x = pooled.clone().requires_grad_(True)
        heads.zero_grad()
        heads(x, targets)[0].backward()
        grads.append(x.grad)
        head_grads.append(heads.heads["rec"].net[0].weight.grad)
    assert grads[0].abs().sum() > 0
    assert torch.equal(grads[1], -grads[0])  # encoder side: exactly negated at lambda = 1
    assert torch.equal(head_grads[1], head_grads[0])  # the head itself still learns to predict
    x = pooled.clone().requires_grad_(True)
    grad_reverse(x, 0.25).sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, -0.25))


def test_grl_lambda_ramp():
    assert grl_lambda(0, 1.0, 100) == 0.0
    assert grl_lambda(50, 1.0, 100) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert grl_lambda(100, 0.5, 100) == pytest.approx(0.5, abs=1e-4)
    assert grl_lambda(7, 0.3, 0) == 0.3
    lambdas = [grl_lambda(s, 1.0, 100) for s in range(0, 200, 10)]
    assert lambdas == sorted(lambdas)


def test_missing_metadata_adds_zero_loss_and_zero_gradient():
    torch.manual_seed(0)
    heads = MetadataHeads(16, _meta_heads())
    targets, valid = _meta_batch()
    pooled = torch.randn(3, 16, requires_grad=True)
    total, losses = heads(pooled, targets, valid)
    assert torch.isfinite(total) and set(losses) == {c.name for c in _meta_heads()}
    for name in heads.heads:
        pooled.grad = None
        losses_again = heads(pooled, targets, valid)[1]
        losses_again[name].backward()
        invalid = ~valid[name]
        assert torch.all(pooled.grad[invalid] == 0), name
        assert pooled.grad[~invalid].abs().sum() > 0, name
        # the loss equals the mean over valid rows alone
        only = {k: v[~invalid] for k, v in targets.items()}
        only_valid = {k: v[~invalid] for k, v in valid.items()}
        alone = heads(pooled[~invalid], only, only_valid)[1][name]
        assert losses_again[name].item() == pytest.approx(alone.item(), rel=1e-5)


def test_field_without_any_valid_sample_gives_zero_not_nan():
    heads = MetadataHeads(8, _meta_heads())
    pooled = torch.randn(2, 8, requires_grad=True)
    targets = {"location": torch.full((2, 2), float("nan")), "recorder_id": torch.tensor([-1, -1])}
    total, losses = heads(pooled, targets)  # validity inferred: NaN / negative index = missing
    assert losses["location"].item() == 0.0 and losses["recorder_id"].item() == 0.0
    assert losses["time_of_day"].item() == 0.0  # field absent from the batch
    assert total.item() == 0.0
    total.backward()
    assert pooled.grad is None or torch.all(pooled.grad == 0)


def test_location_and_circular_losses_have_the_right_geometry():
    from train.model.metadata import cosine_distance, location_to_unit_vector, phase_to_circle

    here = location_to_unit_vector(torch.tensor([[10.0, 20.0]]))
    antipode = location_to_unit_vector(torch.tensor([[-10.0, -160.0]]))
    assert cosine_distance(5 * here, here).item() == pytest.approx(0.0, abs=1e-6)
    assert cosine_distance(antipode, here).item() == pytest.approx(2.0, abs=1e-6)
    # 23:59 and 00:01 are neighbours on the clock
    near = cosine_distance(phase_to_circle(torch.tensor([0.999])), phase_to_circle(torch.tensor([0.001])))
    assert near.item() < 1e-3


def test_model_metadata_heads_and_default_set():
    heads = tuple(h if h.kind != "class" else MetadataHeadConfig(
        h.name, h.kind, h.mode, h.weight, vocabulary=("a", "b")) for h in default_metadata_heads())
    model = _model(heads=heads)
    assert set(model.metadata.heads) == {h.name for h in heads}
    with pytest.raises(UserError, match="vocabulary"):
        _model(heads=default_metadata_heads())
    off = _model(heads=(MetadataHeadConfig("site", "class", mode="off"),))
    assert off.metadata is None


# ---------------------------------------------------------------- deployment
def test_deployable_strips_metadata_and_pretraining_heads():
    model = _model(heads=_meta_heads())
    deploy = model.deployable()
    names = dict(deploy.named_parameters())
    assert not any(n.startswith(("metadata", "regression_head")) for n in names)
    assert any(n.startswith("metadata") for n, _ in model.named_parameters())  # original intact
    assert set(deploy.state_dict()) < set(model.state_dict())
    audio = torch.randn(1, SR)
    with torch.no_grad():
        assert torch.equal(deploy(audio).frame_logits, model.eval()(audio).frame_logits)


def test_spec_rebuilds_the_same_model():
    model = _model(n_classes=3, heads=_meta_heads())
    rebuilt = Animal2Vec.from_spec(model.spec())
    rebuilt.load_state_dict(model.state_dict())  # strict: same modules, same shapes
    assert rebuilt.config == model.config and rebuilt.metadata_configs == model.metadata_configs


def test_load_backbone_from_a_pretrained_model():
    pretrained = _model(n_classes=0, seed=1)
    finetune = _model(n_classes=4, heads=_meta_heads(), seed=2)
    head_before = finetune.classifier.linear.weight.clone()
    finetune.load_backbone(pretrained.state_dict())
    assert torch.equal(finetune.frontend.low_khz, pretrained.frontend.low_khz)
    assert torch.equal(finetune.context.blocks[-1].ffn[0].weight,
                       pretrained.context.blocks[-1].ffn[0].weight)
    assert torch.equal(finetune.classifier.linear.weight, head_before)
    with pytest.raises(UserError, match="another preset"):
        finetune.load_backbone(_model(depth=2).state_dict(), "pre.pt")
    with pytest.raises(UserError, match="pre.pt: weights do not fit"):
        finetune.load_backbone(_model(dim=32, pos_conv_groups=4).state_dict(), "pre.pt")


def test_torch_export_with_static_shapes():
    model = _model(n_classes=4)
    module = model.export_module()
    audio = torch.randn(1, SR)
    program = torch.export.export(module, (audio,))
    with torch.no_grad():
        assert torch.allclose(program.module()(audio), module(audio), atol=1e-5)
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "aten.scaled_dot_product_attention.default" in ops
    assert not any("stft" in op or "erf" in op for op in ops)  # exact GELU stays one op
    with pytest.raises(UserError, match="no frame classifier"):
        _model(n_classes=0).export_module()
