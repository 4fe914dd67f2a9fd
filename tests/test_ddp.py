"""Multi-process training is the same training: `torchrun --nproc_per_node=2` with B clips per
process follows, step by step, one process with 2B clips (gloo on CPU, tiny model and data).

What has to hold for that (train/distributed.py): every world size sees the same global
batches; BatchNorm normalises over the global batch; losses normalised by a count (positive
frame-labels, valid metadata rows) divide by the global count; logs average over ranks."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from meerkit.cli import main
from train.data.synth import SynthConfig, generate
from train.engine import ResumableBatches, load_checkpoint

STEPS, BATCH = 6, 2  # per process; the reference process takes 2 * BATCH
REL_TOL, ABS_TOL = 1e-4, 1e-6


def batches(world: int, batch: int, steps: int, n: int = 15, state: dict | None = None
            ) -> tuple[list[list[int]], dict]:
    """The global batches (rank batches concatenated) of `steps` steps with `world` ranks."""
    ranks = [ResumableBatches(list(range(n)), batch, seed=3, collate=list, rank=r,
                              world_size=world) for r in range(world)]
    for r in ranks:
        if state:
            r.load_state_dict(state)
    out = [[i for r in ranks for i in next(r)] for _ in range(steps)]
    return out, ranks[0].state_dict()


def test_every_world_size_sees_the_same_global_batches():
    # 15 clips: epochs end in the middle of a global batch of 6.
    reference, _ = batches(1, 6, 10)
    assert batches(2, 3, 10)[0] == reference
    assert batches(3, 2, 10)[0] == reference
    stream = [i for b in reference for i in b]
    assert sorted(stream[:15]) == list(range(15)) and sorted(stream[15:30]) == list(range(15))
    assert stream[:15] != stream[15:30]  # a fresh shuffle each epoch
    # A run checkpointed on 2 processes resumes on 1 (or 3) exactly where it stopped.
    first, state = batches(2, 3, 4)
    assert first + batches(1, 6, 6, state=state)[0] == reference
    assert first + batches(3, 2, 6, state=state)[0] == reference


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    # 3 files of 5 s = 15 one-second clips: 6 steps of 4 cross two epoch boundaries mid-batch.
    generate(SynthConfig.tiny(n_train=3, n_val=1, n_test=1, n_shift=1, n_pretrain=1), out,
             workers=1, progress=False)
    return out


def finetune_args(data: Path, out: Path, batch_size: int) -> list[str]:
    # From scratch, no augmentation or mixup (drawn per rank), no masking, no dropout (the
    # tiny preset has none): the same
    # global batch gives the same step. `--meta default` adds the metadata heads (including
    # an adversarial one) whose losses divide by per-batch counts.
    return ["finetune", "--data", str(data), "--out", str(out), "--preset", "tiny",
            "--clip-s", "1", "--steps", str(STEPS), "--batch-size", str(batch_size),
            "--val=", "--device", "cpu", "--no-progress", "--meta", "default",
            "--set", "mixup_prob=0", "--set", "mask_prob=0",
            "--set", "augment=false"]


def read_metrics(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def table(one: list[dict], two: list[dict], keys: list[str]) -> str:
    lines = [f"{'step':>4}  " + "  ".join(f"{k + ' 1x' + str(2 * BATCH):>22}{k + ' 2x' + str(BATCH):>22}"
                                          for k in keys)]
    for a, b in zip(one, two, strict=False):
        lines.append(f"{a['step']:>4}  " + "  ".join(f"{a.get(k, math.nan):>22.10g}"
                                                      f"{b.get(k, math.nan):>22.10g}" for k in keys))
    return "\n".join(lines)


def test_two_processes_train_like_one_with_the_same_global_batch(synth, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --standalone: a rendezvous on a free local port, so parallel test runs never collide.
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", "-m", "train",
                          *finetune_args(synth, tmp_path / "two", BATCH)],
                         env=env, capture_output=True, text=True, timeout=280)
    assert two.returncode == 0, f"torchrun failed:\n{two.stderr[-4000:]}"
    assert main(["train", *finetune_args(synth, tmp_path / "one", 2 * BATCH)]) == 0

    one_log, two_log = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    keys = sorted(k for k in one_log[0] if k not in ("step", "lr", "wall_time"))
    assert "focal" in keys and "meta_recorder_id" in keys and "grad_norm" in keys
    report = table(one_log, two_log, ["loss", "grad_norm", "focal"])
    assert [r["step"] for r in one_log] == [r["step"] for r in two_log] == list(
        range(1, STEPS + 1)), report
    for a, b in zip(one_log, two_log, strict=True):
        assert a.keys() == b.keys(), report
        bad = [k for k in keys if not math.isclose(a[k], b[k], rel_tol=REL_TOL, abs_tol=ABS_TOL)]
        assert not bad, (f"step {a['step']}: {bad} differ beyond rel {REL_TOL:g}; "
                         f"1 process x {2 * BATCH} vs 2 x {BATCH}:\n{report}")

    # The weights and the BatchNorm running statistics (synchronised: over the global batch)
    # end up the same too.
    w1 = load_checkpoint(tmp_path / "one" / "last.pt")["model"]
    w2 = load_checkpoint(tmp_path / "two" / "last.pt")["model"]
    assert w1.keys() == w2.keys()
    assert any("frontend_norm.running_var" in k for k in w1)
    far = {k: (w1[k].float() - w2[k].float()).abs().max().item() for k in w1
           if not torch.allclose(w1[k].float(), w2[k].float(), rtol=1e-3, atol=1e-5)}
    assert not far, f"weights differ after {STEPS} steps (max abs diff): {far}"
