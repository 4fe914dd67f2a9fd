"""End-to-end training loops on the tiny synthetic benchmark (CPU, seconds each)."""

import subprocess
import sys

import pytest
import torch

from train.checkpoint import load_model
from train.config import FinetuneConfig, MetadataHeadConfig, ModelConfig, PretrainConfig
from train.data.synth import LABELS, SynthConfig, generate
from train.engine import Runtime, load_checkpoint
from train.finetune import finetune
from train.model.animal2vec import Animal2Vec
from train.pretrain import RunOptions, pretrain

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
    initial = Animal2Vec(MODEL).context.state_dict()
    key = next(k for k, v in teacher.items() if k.startswith("blocks.") and v.ndim == 2)
    # The teacher trails the student: it moved away from the initial weights, but not all the way.
    assert not torch.equal(teacher[key], initial[key])
    assert not torch.equal(teacher[key], student[key])


def test_pretrain_loss_decreases(synth, tmp_path):
    from train.engine import Engine

    seen = {}
    original = Engine.run

    def spy(self, *a, **kw):
        out = original(self, *a, **kw)
        seen["history"] = self.history
        return out

    Engine.run = spy
    try:
        pretrain(options(synth, tmp_path / "pre", ("pretrain", "train")), MODEL,
                 pretrain_config(steps=30, ema_anneal_steps=30), CPU)
    finally:
        Engine.run = original
    losses = [h["loss"] for h in seen["history"]]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    coverage = [h["mask_coverage"] for h in seen["history"]]
    assert 0.85 < sum(coverage) / len(coverage) < 1.0  # the ~96% regime, on 50-frame clips


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
    from train.engine import Engine

    histories = []
    original = Engine.run

    def spy(self, *a, **kw):
        out = original(self, *a, **kw)
        histories.append(self.history)
        return out

    Engine.run = spy
    try:
        finetune(options(synth, tmp_path / "ft"), MODEL,
                 finetune_config(steps=40, mixup_prob=0.0, mask_prob=0.0, freeze_encoder_steps=0),
                 CPU, init=pre, val_split=None)
    finally:
        Engine.run = original
    losses = [h["loss"] for h in histories[0]]
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
