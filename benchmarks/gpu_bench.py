"""How fast does the teacher pretrain on a GPU? Samples/s, peak memory and MFU of the `base`
preset in bf16, launched exactly as users launch it (`torchrun … -m train pretrain`).

1. Generates a synthetic dataset (`meerkit synth`, preset `small`; `tiny` with --quick).
2. Runs `torchrun --standalone --nproc_per_node=N -m train pretrain --preset base --amp bf16`
   for --steps steps (default 300); the engine writes one line per step to
   OUT/metrics.jsonl with its wall time and, on GPU, the peak memory allocated.
3. Counts the FLOPs of one training step per clip with torch.utils.flop_counter on the same
   model and clip length: the student's forward + backward (clone_batch copies) and the EMA
   teacher's forward (attention through the math kernel so the counter sees its matmuls;
   layerdrop's skipped blocks are not subtracted, so MFU is a slight overestimate).
4. samples/s = clips per second over the steps after the first 10% (compilation, cuDNN
   autotuning and allocator growth excluded); MFU = samples/s x FLOPs per clip / (peak x N).

Prints a table and writes JSON (default benchmarks/out/gpu_bench.json). `--quick` is a CPU
smoke run of the same path (tiny preset, fp32, 5 steps; its numbers mean nothing):

    python benchmarks/gpu_bench.py                 # on the GPU box, ~5 min on one H200
    python benchmarks/gpu_bench.py --quick         # anywhere, ~1 min of CPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` itself

import torch

from benchmarks import invocation

REPO = Path(__file__).resolve().parents[1]
H200_BF16_DENSE_TFLOPS = 989.0


def pretrain_args(args: argparse.Namespace, data: Path, run: Path) -> list[str]:
    cli = ["pretrain", "--data", str(data), "--out", str(run), "--preset", args.preset,
           "--splits", "pretrain,train", "--clip-s", f"{args.clip_s:g}",
           "--steps", str(args.steps), "--amp", args.amp, "--device", args.device,
           "--no-progress", "--checkpoint-every", str(10**9)]
    if args.batch_size:
        cli += ["--batch-size", str(args.batch_size)]
    for item in args.set:
        cli += ["--set", item]
    return cli


def run_configs(cli: list[str]):
    """The (model, pretrain) configs the training command will use, parsed by its own CLI."""
    from meerkit.cli import build_parser
    from train.cli import _configs

    return _configs(build_parser().parse_args(["train", *cli]), "pretrain")


def flops_per_clip(model_config, clone_batch: int, samples: int, device: torch.device
                   ) -> tuple[int, int]:
    """(FLOPs of one pretraining step per clip, parameters): student forward + backward on
    `clone_batch` masked copies, EMA teacher (a copy of the context network) forward once."""
    from dataclasses import replace

    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from train.model.animal2vec import Animal2Vec

    model = Animal2Vec(replace(model_config, layerdrop=0.0)).to(device).train()
    audio = torch.randn(clone_batch, samples, device=device)
    counter = FlopCounterMode(display=False)
    # The math kernel decomposes attention into matmuls the counter sees on every device.
    with sdpa_kernel(SDPBackend.MATH), counter:
        out = model(audio)
        model.regression_head(out.final).float().square().mean().backward()
        with torch.no_grad():
            model.context(out.features[:1].detach())
    return int(counter.get_total_flops()), sum(p.numel() for p in model.parameters())


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        raise SystemExit(f"{path}: no per-step log; did the training command fail?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "out" / "gpu",
                        help="folder for the synthetic data and the run")
    parser.add_argument("--out", type=Path, help="result JSON (default: "
                        "benchmarks/out/gpu_bench.json, or gpu_bench_quick.json with --quick)")
    parser.add_argument("--preset", default="base", help="model + schedule preset (default: base)")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps (default: 300)")
    parser.add_argument("--batch-size", type=int, help="clips per step and GPU (preset's default)")
    parser.add_argument("--clip-s", type=float, default=10.0, help="clip length in seconds")
    parser.add_argument("--amp", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--nproc", type=int, default=1, help="processes (GPUs) for torchrun")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--synth", default="small", help="synthetic dataset preset")
    parser.add_argument("--peak-tflops", type=float, help="the accelerator's dense peak for "
                        f"--amp per device (default on GPU: {H200_BF16_DENSE_TFLOPS:g}, H200 bf16)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="passed on to `meerkit train pretrain --set`")
    parser.add_argument("--quick", action="store_true",
                        help="CPU smoke run: tiny preset, fp32, 5 steps, 2 s clips")
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.amp, args.steps, args.clip_s, args.synth = "tiny", "fp32", 5, 2.0, "tiny"
        args.work = args.work.with_name(args.work.name + "_quick")
    out = args.out or REPO / "benchmarks" / "out" / (
        "gpu_bench_quick.json" if args.quick else "gpu_bench.json")
    cuda = torch.cuda.is_available() and args.device != "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    peak = args.peak_tflops or (H200_BF16_DENSE_TFLOPS if cuda else None)

    from train.data.synth import SynthConfig, generate

    data = args.work / f"synth_{args.synth}"
    if not (data / "synth.json").is_file():
        generate(SynthConfig.preset(args.synth), data, workers=min(8, os.cpu_count() or 1),
                 force=True, progress=False)
    run = args.work / f"pretrain_{args.preset}_{args.amp}"
    cli = pretrain_args(args, data, run)
    model_config, config = run_configs(cli)
    # Counted first: a mistake here should not cost a whole training run.
    samples = round(args.clip_s * model_config.sample_rate)
    flops, parameters = flops_per_clip(model_config, config.clone_batch, samples, device)
    if cuda:
        torch.cuda.empty_cache()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={args.nproc}", "-m", "train", *cli]
    print("running:", " ".join(command[1:]), flush=True)
    env = dict(os.environ)
    if not cuda:  # the CPU smoke run: one thread per process on a shared machine
        env.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode:
        print(f"training failed with exit code {proc.returncode}", file=sys.stderr)
        return proc.returncode

    records = read_metrics(run / "metrics.jsonl")
    if len(records) < 2:
        raise SystemExit("need at least 2 steps to time")
    skip = max(1, len(records) // 10) - 1  # index of the first timed step's predecessor
    timed = records[-1]["step"] - records[skip]["step"]
    seconds = records[-1]["wall_time"] - records[skip]["wall_time"]
    clips_per_step = config.batch_size * config.grad_accum * args.nproc
    clips_per_s = timed * clips_per_step / seconds
    achieved = clips_per_s * flops / 1e12
    mfu = achieved / (peak * args.nproc) if peak else None
    mem = [r["max_mem_gib"] for r in records if "max_mem_gib" in r]

    result = {
        "command": invocation(),
        "train_command": " ".join(["torchrun", *command[3:]]),
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "torch": torch.__version__, "preset": args.preset, "amp": args.amp,
        "nproc": args.nproc, "steps": records[-1]["step"], "timed_steps": timed,
        "batch_size": config.batch_size, "grad_accum": config.grad_accum,
        "clone_batch": config.clone_batch, "clip_s": args.clip_s,
        "parameters": parameters,
        "samples_per_s": clips_per_s, "audio_hours_per_s": clips_per_s * args.clip_s / 3600,
        "step_s": seconds / timed, "flops_per_sample": flops, "achieved_tflops": achieved,
        "peak_tflops": peak, "mfu": mfu, "peak_mem_gib": max(mem) if mem else None,
        "wall_s": wall, "final_loss": records[-1].get("loss"), "quick": args.quick,
    }
    rows = [("device", result["device"]), ("preset / amp", f"{args.preset} / {args.amp}"),
            ("parameters", f"{result['parameters'] / 1e6:.1f} M"),
            ("clips per step", f"{clips_per_step} x {args.clip_s:g} s (clone {config.clone_batch})"),
            ("timed steps", f"{timed} of {result['steps']}"),
            ("samples/s", f"{clips_per_s:.2f}"), ("step time", f"{result['step_s'] * 1e3:.1f} ms"),
            ("GFLOPs per sample", f"{flops / 1e9:.1f}"),
            ("achieved TFLOP/s", f"{achieved:.2f}"),
            ("MFU", f"{mfu:.1%} of {peak:g} TFLOP/s x {args.nproc}" if mfu is not None
             else "n/a (no peak for this device: --peak-tflops)"),
            ("peak GPU memory", f"{max(mem):.2f} GiB" if mem else "n/a (CPU)"),
            ("final loss", f"{result['final_loss']:.4f}")]
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
