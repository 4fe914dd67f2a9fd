"""End-to-end training loops on the tiny synthetic benchmark (CPU, seconds each)."""

import json
import subprocess
import sys

import pytest
import torch

from train.checkpoint import load_model
from train.config import FinetuneConfig, MetadataHeadConfig, ModelConfig, PretrainConfig
from train.data.dataset import Dataset
from train.data.synth import LABELS, SynthConfig, generate
from train.engine import RunOptions, Runtime, load_checkpoint
from train.finetune import finetune
from train.model.animal2vec import Animal2Vec
from train.pretrain import pretrain

CPU = Runtime(torch.device("cpu"))
MODEL = ModelConfig.tiny()
CLIP_S = 1.0  # 50 frames: fast, still several calls per batch


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "data"
    generate(SynthConfig.tiny(), out, workers=1, progress=False)
    return out


def options(synth, out, splits=("train",), **kw):
    return RunOptions(synth, out, splits, clip_s=CLIP_S, progress=False, **kw)


def pretrain_config(**kw):
    base = dict(steps=6, warmup_steps=2, batch_size=4, lr=1e-3, ema_anneal_steps=6, amp="fp32")
    return PretrainConfig(**{**base, **kw})


def finetune_config(**kw):
    base = dict(steps=6, warmup_steps=2, batch_size=4, lr=2e-3, freeze_encoder_steps=2,
                amp="fp32", mixup_prob=0.5)
    return FinetuneConfig(**{**base, **kw})


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_pretraining_moves_the_ema_teacher_and_writes_a_model(synth, tmp_path):
    path = pretrain(options(synth, tmp_path / "pre", ("pretrain",)), MODEL,
                    pretrain_config(ema_decay=0.9, ema_end_decay=0.99), CPU)
    model, record = load_model(path)
    assert record["stage"] == "pretrain" and model.classifier is None
    last = load_checkpoint(tmp_path / "pre" / "last.pt")
    teacher = last["extra"]["teacher"]
    student = {k.removeprefix("model.context."): v for k, v in last["model"].items()
               if k.startswith("model.context.")}
    torch.manual_seed(0)  # the run's seed: the same initial weights
    initial = Animal2Vec(MODEL)
    key = next(k for k, v in teacher.items() if k.startswith("blocks.") and v.ndim == 2)
    # The teacher trails the student: it moved away from the initial weights, but not all the way.
    assert not torch.equal(teacher[key], initial.context.state_dict()[key])
    assert not torch.equal(teacher[key], student[key])
    # The positional conv is copied from the student (data2vec's EMA skip keys).
    assert torch.equal(teacher["pos_embedding.conv.weight"], student["pos_embedding.conv.weight"])
    # The front-end BatchNorm was fitted on the data, then left alone (frontend_norm=frozen).
    norm = model.frontend_norm
    assert torch.equal(norm.weight, initial.frontend_norm.weight)
    # Centred envelopes have mean ~0; the fitted variance is the data's, not the initial 1.
    assert norm.running_mean.abs().mean() < 0.1
    assert (norm.running_var - 1).abs().mean() > 0.05
    assert norm.num_batches_tracked.item() > 0


def history_of(run, *args, **kwargs) -> list[dict]:
    """Run a training function and return the engine's per-step logs."""
    from train.engine import Engine

    seen = {}
    original = Engine.run

    def spy(self, *a, **kw):
        out = original(self, *a, **kw)
        seen["history"] = self.history
        return out

    Engine.run = spy
    try:
        run(*args, **kwargs)
    finally:
        Engine.run = original
    return seen["history"]


def test_pretraining_learns_without_collapsing_and_logs_its_health(synth, tmp_path):
    out = tmp_path / "pre"
    history = history_of(pretrain, options(synth, out, ("pretrain", "train")), MODEL,
                         pretrain_config(steps=30, ema_decay=0.99, ema_end_decay=0.995), CPU)
    mean = lambda key, part: sum(h[key] for h in part) / len(part)  # noqa: E731
    first, last = history[:10], history[-10:]
    # The zero-initialised head grows towards what predicts the targets ...
    assert mean("pred_var", last) > 1.3 * mean("pred_var", first)
    assert mean("variance_explained", last) > mean("variance_explained", first)
    assert mean("teacher_distance", last) > 0 and mean("target_var", last) > 0.3
    # ... and the front end keeps varying over time. On a fixed batch, 40 steps of the old
    # recipe (random head, full front-end lr) left 31% of the initial std, a zero head 61%.
    trained, _ = load_model(out / "model.pt")
    torch.manual_seed(0)  # the run's initial weights, with the run's fitted BatchNorm
    initial = Animal2Vec(MODEL)
    initial.frontend_norm.load_state_dict(trained.frontend_norm.state_dict())
    initial.eval()
    audio = torch.stack([torch.from_numpy(c.audio) for c in
                         list(Dataset(synth).clips(CLIP_S, split="val"))[:8]])
    with torch.no_grad():
        ratio = (trained.features(audio).std(1).mean() / initial.features(audio).std(1).mean())
    assert ratio > 0.8
    # The masking regime: ~59% in 5-frame spans, few masked frames out of the conv's reach.
    assert 0.45 < mean("mask_coverage", history) < 0.7
    assert mean("mask_unreachable", history) < 0.15
    assert mean("mask_visible_per_clip", history) > 15


def test_pretraining_resume_is_bit_exact(synth, tmp_path):
    config = pretrain_config(clone_batch=2, ema_decay=0.9, ema_end_decay=0.99)
    pretrain(options(synth, tmp_path / "full", ("pretrain",)), MODEL, config, CPU)
    pretrain(options(synth, tmp_path / "split", ("pretrain",), stop_at=3), MODEL, config, CPU)
    pretrain(options(synth, tmp_path / "split", ("pretrain",), resume=True), MODEL, config, CPU)
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    assert a["step"] == b["step"] == 6
    assert same_state(a["model"], b["model"])
    assert same_state(a["extra"]["teacher"], b["extra"]["teacher"])


def test_variance_guard_stops_a_collapsing_run_naming_step_and_value(synth, tmp_path):
    from edge_runtime.contract.errors import UserError
    from train.pretrain import CollapseError

    config = pretrain_config(min_target_var=5.0, variance_warmup_steps=2)  # std is never 5
    with pytest.raises(CollapseError, match=r"at step 3: target_var 0\.\d+ < min_target_var 5"):
        pretrain(options(synth, tmp_path / "pre", ("pretrain",)), MODEL, config, CPU)
    assert issubclass(CollapseError, UserError)  # the CLI prints it as one line
    # Before the warm-up ends, and with the guard at 0, the same run goes through.
    pretrain(options(synth, tmp_path / "ok", ("pretrain",)), MODEL,
             pretrain_config(min_target_var=5.0, variance_warmup_steps=6), CPU)


def test_clone_batches_run_the_front_end_once_per_clip():
    from train.pretrain import Data2VecStudent

    torch.manual_seed(0)
    model = Animal2Vec(MODEL)
    calls = []
    model.frontend.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    student = Data2VecStudent(model, clone_batch=3)
    audio = torch.randn(2, 16000)
    mask = torch.zeros(6, 50, dtype=torch.bool)
    mask[:, 10:20] = True
    pred, out, features = student(audio, mask)
    assert calls == [2]  # two clips, not six
    assert features.shape == (2, 50, MODEL.dim) and pred.shape == (6, 50, MODEL.dim)
    # Unmasked, each clone is the plain forward pass of its clip.
    plain = model(audio).final
    _, out, _ = student(audio, torch.zeros(6, 50, dtype=torch.bool))
    assert torch.allclose(out.final[4:6], plain, atol=1e-5)
    pred.square().mean().backward()
    assert model.frontend.band_khz.grad is not None and model.mask_embedding.grad is not None


def test_feature_grad_mult_scales_only_the_front_end_gradient():
    from train.model.gradients import scale_gradient

    x = torch.randn(3, requires_grad=True)
    y = scale_gradient(x, 0.1)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.full((3,), 0.1))
    grads = []
    for mult in (1.0, 0.1):
        torch.manual_seed(0)
        model = Animal2Vec(MODEL)
        model.feature_grad_mult = mult
        model(torch.randn(2, 16000, generator=torch.Generator().manual_seed(1))).final.sum().backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    full, scaled = grads
    for name in ("frontend.band_khz", "encoder.convs.0.0.weight"):
        assert torch.allclose(scaled[name], 0.1 * full[name], rtol=1e-4, atol=1e-9)
    for name in ("encoder.project.1.weight", "context.blocks.0.ffn.0.weight"):
        assert torch.allclose(scaled[name], full[name], rtol=1e-5, atol=1e-8)


def test_finetune_learns_and_resume_is_bit_exact(synth, tmp_path):
    heads = (MetadataHeadConfig("location", "location"),
             MetadataHeadConfig("time_of_day", "circular"),
             MetadataHeadConfig("recorder_id", "class", mode="adversarial"))
    config = finetune_config(metadata_heads=heads)
    full = finetune(options(synth, tmp_path / "full"), MODEL, config, CPU, eval_every=3)
    # The same run, stopped after 3 steps and resumed in a fresh call.
    finetune(options(synth, tmp_path / "split", stop_at=3), MODEL, config, CPU, eval_every=3)
    assert load_checkpoint(tmp_path / "split" / "last.pt")["step"] == 3
    resumed = finetune(options(synth, tmp_path / "split", resume=True), MODEL, config, CPU,
                       eval_every=3)
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    assert a["step"] == b["step"] == 6
    assert same_state(a["model"], b["model"])
    assert same_state(load_model(full)[0].state_dict(), load_model(resumed)[0].state_dict())
    model, record = load_model(full)
    assert record["labels"] == list(LABELS)
    # Metadata heads are trained but never shipped.
    assert model.metadata is not None and model.deployable().metadata is None


def test_finetune_loss_decreases_from_a_pretrained_model(synth, tmp_path):
    pre = pretrain(options(synth, tmp_path / "pre", ("pretrain",)), MODEL, pretrain_config(), CPU)
    history = history_of(finetune, options(synth, tmp_path / "ft"), MODEL,
                         finetune_config(steps=40, mixup_prob=0.0, mask_prob=0.0,
                                         freeze_encoder_steps=0),
                         CPU, init=pre, val_split=None)
    losses = [h["loss"] for h in history]
    assert sum(losses[-8:]) / 8 < 0.7 * sum(losses[:8]) / 8


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "train", *args], capture_output=True, text=True)


def test_cli_errors_are_one_line(synth, tmp_path):
    r = run_cli("pretrain", "--data", str(synth), "--out", str(tmp_path / "x"),
                "--set", "mask_prb=1.0")
    assert r.returncode == 2 and "did you mean 'mask_prob'" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_cli("finetune", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "y"))
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("evaluate", "--model", str(tmp_path / "missing.pt"), "--data", str(synth))
    assert r.returncode == 2 and "checkpoint not found" in r.stderr
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a checkpoint")
    r = run_cli("evaluate", "--model", str(bogus), "--data", str(synth))
    assert r.returncode == 2 and "not a readable meerkit checkpoint" in r.stderr


def test_cli_finetune_then_evaluate_writes_json_and_png(synth, tmp_path):
    out = tmp_path / "ft"
    r = run_cli("finetune", "--data", str(synth), "--out", str(out), "--steps", "4",
                "--batch-size", "4", "--clip-s", "1", "--no-progress", "--meta", "default")
    assert r.returncode == 0, r.stderr
    r = run_cli("evaluate", "--model", str(out / "model.pt"), "--data", str(synth),
                "--split", "test", "--clip-s", "1")
    assert r.returncode == 0, r.stderr
    assert (out / "eval_test.json").is_file() and (out / "eval_test.png").stat().st_size > 1000
    assert "frame macro AP" in r.stdout
    # Decoded as verify and the demo decode it: with the decoder finetuning tuned on val.
    assert "events decoded with the model's val-tuned decoder" in r.stdout
    r = run_cli("evaluate", "--model", str(out / "model.pt"), "--data", str(synth),
                "--split", "test", "--clip-s", "1", "--threshold", "0.3")
    assert r.returncode == 0 and "events decoded with threshold 0.3" in r.stdout, r.stderr


def test_regression_stats_variance_explained_and_guards():
    from train.losses import masked_regression_loss, per_dim_std, regression_stats

    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 50, 8, generator=g)
    mask = torch.zeros(2, 50, dtype=torch.bool)
    mask[:, 10:40] = True
    perfect = regression_stats(target, target, mask)
    assert perfect["variance_explained"] == pytest.approx(1.0)
    assert perfect["target_var"] == pytest.approx(perfect["pred_var"]) and perfect["target_var"] > 0.8
    zero = regression_stats(torch.zeros_like(target), target, mask)
    assert zero["pred_var"] < 0.01 and zero["variance_explained"] == pytest.approx(0.0, abs=0.05)
    # Only masked frames count: garbage outside the mask changes nothing.
    noisy = target.clone()
    noisy[:, :10] = 100.0
    assert regression_stats(noisy, target, mask)["variance_explained"] == pytest.approx(1.0)
    assert masked_regression_loss(noisy, target, mask).item() == pytest.approx(0.0)
    assert per_dim_std(torch.ones(5, 3)).item() == pytest.approx(1e-3)  # sqrt of the epsilon


# Stage configs as checkpoints written before OptimConfig stored them (flat keys, this order).
OLD_PRETRAIN = {
    "mask_prob": 0.8, "mask_length": 5, "min_masks": 1, "ema_decay": 0.999,
    "ema_end_decay": 0.9999, "ema_anneal_steps": None, "ema_anneal_frac": 0.3,
    "ema_schedule": "linear", "top_k_layers": 8, "instance_norm_targets": True,
    "final_target_norm": "none", "loss": "mse", "loss_beta": 0.25, "clone_batch": 1,
    "feature_grad_mult": 0.1, "frontend_lr_mult": 0.1, "frontend_norm": "frozen",
    "min_target_var": 0.1, "min_pred_var": 0.01, "variance_warmup_steps": None, "lr": 0.0005,
    "warmup_steps": 2000, "steps": 50000, "batch_size": 16, "grad_accum": 1,
    "weight_decay": 0.01, "grad_clip": 1.0, "amp": "bf16"}
OLD_FINETUNE = {
    "focal_gamma": 2.0, "focal_alpha": 0.25, "mask_prob": 0.0, "mask_length": 2,
    "freeze_encoder_steps": 30, "train_feature_encoder": True, "layer_lr_decay": 0.75,
    "mixup_prob": 0.5, "lr": 0.001, "warmup_steps": 30, "steps": 300, "batch_size": 8,
    "grad_accum": 2, "weight_decay": 0.05, "grad_clip": 0.5, "amp": "fp32",
    "metadata_heads": [{"name": "location", "kind": "location", "mode": "standard",
                        "weight": 0.1, "grl_max_lambda": 1.0, "grl_warmup_steps": 0,
                        "vocabulary": [], "target_mean": 0.0, "target_std": 1.0}],
    "metadata_missing_frac": 0.0}


def test_configs_stored_before_optim_config_load_unchanged():
    from edge_runtime.contract.errors import UserError
    from train.config import OptimConfig

    pre = PretrainConfig.from_dict(OLD_PRETRAIN)
    assert pre == PretrainConfig() and pre.to_dict() == OLD_PRETRAIN
    fine = FinetuneConfig.from_dict(OLD_FINETUNE)
    assert isinstance(fine, OptimConfig)
    # As a checkpoint stores it; fields added since (augment) take their defaults.
    stored = json.loads(json.dumps(fine.to_dict()))
    assert {k: v for k, v in stored.items() if k in OLD_FINETUNE} == OLD_FINETUNE
    assert set(stored) - set(OLD_FINETUNE) == {"augment"}
    assert (fine.lr, fine.grad_accum, fine.weight_decay, fine.grad_clip, fine.amp) == (
        1e-3, 2, 0.05, 0.5, "fp32")
    assert fine.metadata_heads == (MetadataHeadConfig("location", "location", weight=0.1),)
    # The presets' values did not move into or out of the shared fields.
    assert (FinetuneConfig().lr, FinetuneConfig().warmup_steps, FinetuneConfig().steps) == (
        5e-5, 1000, 20000)
    with pytest.raises(UserError, match="steps, batch_size and grad_accum must be >= 1"):
        FinetuneConfig(grad_accum=0)
    with pytest.raises(UserError, match="amp 'fp8' is not one of"):
        PretrainConfig(amp="fp8")


def test_set_overrides_reach_the_shared_optimiser_fields(tmp_path):
    import argparse

    from train.cli import _configs, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    for stage in ("pretrain", "finetune"):
        args = parser.parse_args(["train", stage, "--data", str(tmp_path), "--out", str(tmp_path),
                                  "--lr", "0.002", "--set", "grad_clip=0.25", "--set",
                                  "weight_decay=0", "--set", "grad_accum=3", "--set",
                                  "model.depth=2"])
        model, config = _configs(args, stage)
        assert (config.lr, config.grad_clip, config.weight_decay, config.grad_accum) == (
            0.002, 0.25, 0, 3)
        assert model.depth == 2 and config.steps == 300  # the tiny schedule
