"""The training engine shared by pretraining and finetuning: devices and DDP, AMP, gradient
accumulation, cosine schedule, resumable batches, checkpoints, TensorBoard and progress, and
the run plumbing both stages take (`RunOptions`, `GeneratorState`, AdamW parameter groups).

`pretrain.py` and `finetune.py` each supply a `step_fn(batch, step) -> (loss, logs)` and stay
readable top to bottom; everything that must be identical between them lives here once.
The same command scales from CPU to N GPUs: under `torchrun` the engine joins the process
group, wraps the model in DDP (BatchNorm synchronised) and gives each rank its share of every
global batch, so N processes x B clips train like one process with N*B (train/distributed.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import sys
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from edge_runtime.contract.errors import UserError
from train.config import OptimConfig
from train.distributed import convert_sync_batchnorm, mean_over_ranks

log = logging.getLogger(__name__)


# AdamW's moments as in data2vec / wav2vec 2.0 (fairseq), for both stages.
ADAMW_BETAS = (0.9, 0.98)
ADAMW_EPS = 1e-6


# ---------------------------------------------------------------- the run
@dataclass
class RunOptions:
    """Where and how a training run happens (shared by pretraining and finetuning)."""

    data: Path
    out: Path
    splits: tuple[str, ...]
    clip_s: float = 10.0
    seed: int = 0
    resume: bool = False
    stop_at: int | None = None  # stop (and checkpoint) after this many steps; resume later
    log_every: int = 10
    checkpoint_every: int = 500
    progress: bool = True


class GeneratorState:
    """A torch.Generator as a resumable object (masks and mixup are drawn from it)."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["state"])


# ---------------------------------------------------------------- devices and processes
@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_runtime(device: str = "auto") -> Runtime:
    """Pick the device; join the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda requested but no CUDA device is visible")
    if device == "cuda":
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Runtime(torch.device(device), rank, world)


def teardown_runtime() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on GPU; a no-op on CPU (CPU runs are for tests and stay exact)."""
    if device.type != "cuda" or amp == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    if dtype is None:
        raise UserError(f"unknown amp mode {amp!r}: use bf16, fp16 or fp32")
    return torch.autocast("cuda", dtype=dtype)


def cosine_with_warmup(step: int, warmup: int, total: int, floor: float = 0.01) -> float:
    """LR multiplier: linear warm-up to 1, then cosine decay to `floor`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------- batches
class ResumableBatches:
    """Endless shuffled batches whose position is two integers, so resume is exact.

    Epoch `e`'s order is `randperm(n, seed + e)`, one stream for all ranks; each step's
    global batch is its next `batch_size * world_size` indices (wrapping into the next epoch
    mid-batch) and rank `r` takes the `r`-th `batch_size` of them. So the global batch, and
    with it the training run, is the same whatever the number of processes (DistributedSampler
    instead deals each rank a fixed shard of every epoch, which mixes epochs differently when
    `n` is not a multiple of the global batch), and a run can resume on another world size.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, batch_size: int, seed: int,
                 collate: Callable[[list], Any], rank: int = 0, world_size: int = 1):
        if len(dataset) == 0:
            raise UserError("no training examples: check the dataset and split")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.collate, self.rank, self.world_size = collate, rank, world_size
        self.epoch, self.position = 0, 0  # in the global stream, the same on every rank

    def _order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(len(self.dataset), generator=g).tolist()

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        order = self._order()
        indices = []
        while len(indices) < self.batch_size * self.world_size:
            if self.position >= len(order):
                self.epoch, self.position = self.epoch + 1, 0
                order = self._order()
            indices.append(order[self.position])
            self.position += 1
        mine = indices[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return self.collate([self.dataset[i] for i in mine])

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


# ---------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic write: a crash mid-save never leaves a half-written checkpoint behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint without unpickling arbitrary objects (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, foreign pickle, wrong format
        raise UserError(f"{path}: not a readable meerkit checkpoint ({type(err).__name__}: {err})") from None


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- the loop
StepFn = Callable[[Any, int], tuple[torch.Tensor, dict[str, float]]]
Hook = Callable[[int], dict[str, float] | None]


class Engine:
    """Owns model, optimizer, schedule and the step counter; runs `step_fn` for N steps."""

    def __init__(self, model: nn.Module, optim: OptimConfig, runtime: Runtime,
                 options: RunOptions, extra_state: dict[str, Any] | None = None,
                 param_groups: list[dict] | None = None):
        self.runtime, self.optim, self.options = runtime, optim, options
        self.out_dir = Path(options.out)
        self.model = model.to(runtime.device)
        if runtime.distributed:  # BatchNorm statistics over the global batch, not each shard
            convert_sync_batchnorm(self.model, runtime.device)
        self.wrapped: nn.Module = (
            DistributedDataParallel(self.model, device_ids=[runtime.device.index]
                                    if runtime.device.type == "cuda" else None,
                                    find_unused_parameters=True)
            if runtime.distributed else self.model
        )
        groups = param_groups or adamw_groups(self.model, optim.lr, optim.weight_decay)
        fused = runtime.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(groups, lr=optim.lr, betas=ADAMW_BETAS,
                                           eps=ADAMW_EPS, fused=fused)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: cosine_with_warmup(s, optim.warmup_steps, optim.steps))
        self.scaler = torch.amp.GradScaler("cuda", enabled=runtime.device.type == "cuda"
                                           and optim.amp == "fp16")
        self.step = 0
        # Per-step logs of this process's run (averaged over ranks), also in metrics.jsonl.
        self.history: list[dict[str, float]] = []
        # Objects with state_dict/load_state_dict that must resume with the model (EMA, batches).
        self.extra_state = extra_state or {}
        self._writer = None
        self._metrics = None

    # -- logging
    @property
    def writer(self):
        if self._writer is None and self.runtime.is_main:
            # tensorboard imports all of TensorFlow when it is installed (15 s of CPU per run
            # start, for its file I/O alone) unless its own no-TF stub is forced; scalars need
            # nothing from TF.
            sys.modules.setdefault("tensorboard.compat.notf",
                                   types.ModuleType("tensorboard.compat.notf"))
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.out_dir / "tensorboard"))
        return self._writer

    def log_scalars(self, logs: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for key, value in logs.items():
                self.writer.add_scalar(key, value, step)

    def log_step(self, record: dict[str, float]) -> None:
        """One JSON line per step in OUT/metrics.jsonl (main rank): the machine-readable log.
        A resumed run first drops the lines after its checkpoint, so each step appears once."""
        if not self.runtime.is_main:
            return
        if self._metrics is None:
            path = self.out_dir / "metrics.jsonl"
            kept = []
            if path.is_file():
                kept = [line for line in path.read_text().splitlines()
                        if line.strip() and json.loads(line).get("step", 0) < self.step]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(f"{line}\n" for line in kept))
            self._metrics = path.open("a")
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()

    # -- state
    def state_dict(self, config: dict[str, Any]) -> dict[str, Any]:
        return {
            "config": config,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "extra": {k: v.state_dict() for k, v in self.extra_state.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        for key, obj in self.extra_state.items():
            obj.load_state_dict(state["extra"][key])
        set_rng_state(state["rng"])
        self.step = int(state["step"])

    def resume(self) -> bool:
        """Continue from OUT/last.pt when the run asks to (`--resume`) and one is there."""
        last = self.out_dir / "last.pt"
        if not (self.options.resume and last.is_file()):
            return False
        self.load_state_dict(load_checkpoint(last))
        log.info("resumed from %s at step %d", last, self.step)
        return True

    def save(self, config: dict[str, Any], name: str = "last.pt") -> Path:
        path = self.out_dir / name
        if self.runtime.is_main:
            save_checkpoint(path, self.state_dict(config))
        return path

    # -- loop
    def run(self, batches: Iterator[Any], step_fn: StepFn, config: dict[str, Any],
            after_step: Hook | None = None, evaluate: Hook | None = None,
            eval_every: int = 0) -> dict[str, float]:
        """Train until `optim.steps` (or the run's `stop_at`, for runs split across jobs)."""
        s, o, rt = self.optim, self.options, self.runtime
        end = min(s.steps, o.stop_at) if o.stop_at is not None else s.steps
        from tqdm.auto import tqdm

        bar = tqdm(total=s.steps, initial=self.step, disable=not (o.progress and rt.is_main),
                   desc=self.out_dir.name, unit="step", dynamic_ncols=True)
        last: dict[str, float] = {}
        while self.step < end:
            self.wrapped.train()
            self.optimizer.zero_grad(set_to_none=True)
            logs: dict[str, float] = {}
            for micro in range(s.grad_accum):
                batch = next(batches)
                sync = micro == s.grad_accum - 1 or not rt.distributed
                with (contextlib.nullcontext() if sync else self.wrapped.no_sync()), \
                        autocast(rt.device, s.amp):
                    loss, step_logs = step_fn(batch, self.step)
                if not torch.isfinite(loss):
                    raise RuntimeError(f"non-finite loss {loss.item()} at step {self.step}; "
                                       "lower the learning rate or use --amp bf16/fp32")
                self.scaler.scale(loss / s.grad_accum).backward()
                for k, v in step_logs.items():
                    logs[k] = logs.get(k, 0.0) + v / s.grad_accum
            logs = mean_over_ranks(logs, rt.device)  # the global batch's loss, not this shard's
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                       s.grad_clip or float("inf"))
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.step += 1
            if after_step is not None:
                logs.update(after_step(self.step) or {})
            logs["grad_norm"] = float(grad_norm)
            logs["lr"] = self.scheduler.get_last_lr()[0]
            last = logs
            self.history.append({"step": self.step, **logs})
            if self.step % o.log_every == 0 or self.step == s.steps:
                self.log_scalars({f"train/{k}": v for k, v in logs.items()}, self.step)
                bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k in ("loss", "lr")})
            if evaluate is not None and eval_every and self.step % eval_every == 0:
                val = evaluate(self.step) or {}
                self.log_scalars({f"val/{k}": v for k, v in val.items()}, self.step)
                last.update({f"val_{k}": v for k, v in val.items()})
            record = {"step": self.step, "wall_time": time.time(), **last}
            if rt.device.type == "cuda":  # this rank's peak, for benchmarks/gpu_bench.py
                record["max_mem_gib"] = torch.cuda.max_memory_allocated(rt.device) / 2**30
            self.log_step(record)
            if self.step % o.checkpoint_every == 0 and self.step < s.steps:
                self.save(config)
            bar.update(1)
        bar.close()
        if self._writer is not None:
            self._writer.flush()
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        return last


def adamw_groups(model: nn.Module, lr: float, weight_decay: float,
                 group_of: Callable[[str], tuple[Any, float]] = lambda name: (None, 1.0)
                 ) -> list[dict[str, Any]]:
    """AdamW parameter groups. `group_of(name)` gives a parameter's group key and learning-rate
    multiplier (e.g. the front end at lr x 0.1); within each, biases, norms, band edges and
    embeddings (1-d parameters) get no weight decay."""
    groups: dict[tuple[Any, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (key, scale), decay = group_of(name), p.ndim >= 2
        group = groups.setdefault((key, decay), {
            "params": [], "lr": lr * scale, "weight_decay": weight_decay if decay else 0.0})
        group["params"].append(p)
    return list(groups.values())
