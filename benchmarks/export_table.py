"""Teacher vs fp32 student vs int8 student, as edge artifacts: parameters, file size,
single-thread latency per audio second (ai-edge-litert, median of N invocations; students
include their numpy log-mel front end, shown separately too) and frame macro AP on `test`
and `shift` (unseen recorders and region), each artifact run through the same
`edge_runtime.windows.track` stitching as the field runtime.

Without paths it builds everything on a synthetic dataset: finetunes a tiny teacher, distils
a student, exports the teacher (fp32 TFLite) and the student (fp32 TFLite, int8). Give
`--teacher`/`--student` (checkpoints) to skip training. Latency per audio second = one
window's latency / the card's hop (each hop of audio costs one window when streaming).

    python benchmarks/export_table.py [--preset small] [--teacher-steps 600] [--distill-steps 1500]

Run time on the 2-core machine with the defaults (synth `small`, 600 teacher steps, 1500
distillation steps, three conversions): 17 minutes, about 10 of them training the teacher;
with `--teacher/--student` ~4 minutes; with `--reuse` (artifacts already in --work) ~10 s.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` itself

# Single-thread means the front end too: OpenBLAS threads on a busy 2-core machine turned the
# (100 x 257) @ (257 x 64) mel projection from 0.14 ms into 8 ms. Set before numpy loads,
# which is why numpy, torch and meerkit are imported inside the functions below.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")


def latency_ms(path: Path, runs: int) -> dict[str, float]:
    """Median single-thread latency of one window: backbone only and with the front end."""
    import numpy as np

    from edge_runtime.card import read_card
    from edge_runtime.frontend import logmel
    from export.backends import TFLiteRunner

    card = read_card(path)
    runner = TFLiteRunner(path, threads=1)
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((1, card.window_samples))).astype(np.float32)
    x = logmel(audio, card.frontend, card.sample_rate) if card.frontend.kind == "logmel" else audio
    for _ in range(5):
        runner(x)
    model, front = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        if card.frontend.kind == "logmel":
            x = logmel(audio, card.frontend, card.sample_rate)
        t1 = time.perf_counter()
        runner(x)
        t2 = time.perf_counter()
        front.append(t1 - t0)
        model.append(t2 - t1)
    per_s = 1000 / card.hop_s
    return {"model_ms_per_audio_s": statistics.median(model) * per_s,
            "frontend_ms_per_audio_s": statistics.median(front) * per_s,
            "total_ms_per_audio_s": (statistics.median(model) + statistics.median(front)) * per_s,
            "window_s": card.window_s, "hop_s": card.hop_s}


def frame_ap(path: Path, data: Path, split: str) -> float:
    from edge_runtime.card import read_card
    from export.backends import geometry, tflite_window_fn, track_files
    from export.verify import score_tracks
    from train.data.dataset import Dataset

    card = read_card(path)
    dataset = Dataset(data, sample_rate=card.sample_rate)
    files = dataset.files_in(split)
    tracks = track_files(tflite_window_fn(path, card), geometry(card), dataset, files)
    report, _, _ = score_tracks(dataset, tracks, card.frame_rate_hz, card.thresholds)
    return float(report["frame_ap"]["macro"])


def build(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """(dataset, teacher model.pt, student.pt), training what was not given."""
    import torch

    from export.distill import DistillConfig, distill
    from train.config import FinetuneConfig, ModelConfig
    from train.data.synth import SynthConfig, generate
    from train.engine import Runtime
    from train.finetune import finetune
    from train.pretrain import RunOptions

    data = args.data or args.work / f"synth_{args.preset}"
    if args.data is None and not (data / "synth.json").is_file():
        generate(SynthConfig.preset(args.preset), data, workers=2, force=True, progress=False)
    teacher = args.teacher
    if teacher is None:
        teacher = args.work / "teacher" / "model.pt"
        if not teacher.is_file():
            steps = args.teacher_steps
            finetune(RunOptions(data, teacher.parent, ("train",), clip_s=2.0, progress=False,
                                checkpoint_every=10**9),
                     ModelConfig.tiny(), FinetuneConfig(steps=steps, warmup_steps=steps // 10,
                                                        batch_size=16, lr=1e-3,
                                                        freeze_encoder_steps=0, amp="fp32"),
                     Runtime(torch.device("cuda" if torch.cuda.is_available() else "cpu")))
    student = args.student
    if student is None:
        student = args.work / f"student_{args.arch}.pt"
        distill(teacher, data, student, DistillConfig(arch=args.arch, steps=args.distill_steps),
                cache_dir=args.work / "teacher_cache", progress=False)
    return data, teacher, student


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="dataset (default: generate synth --preset)")
    parser.add_argument("--preset", default="small", help="synth preset (default small)")
    parser.add_argument("--teacher", type=Path, help="finetuned teacher model.pt")
    parser.add_argument("--student", type=Path, help="distilled student.pt")
    parser.add_argument("--arch", default="pico")
    parser.add_argument("--teacher-steps", type=int, default=600)
    parser.add_argument("--distill-steps", type=int, default=1500)
    parser.add_argument("--runs", type=int, default=50, help="latency: median of N")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/out/export"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/export_table.json"))
    parser.add_argument("--reuse", action="store_true",
                        help="keep artifacts already in --work (only measure)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    from edge_runtime.card import read_card

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    data, teacher, student = build(args)

    from export.quantize import quantize
    from export.tflite import export_tflite

    artifacts = {"teacher fp32": args.work / "teacher_fp32.tflite",
                 "student fp32": args.work / f"student_{args.arch}_fp32.tflite",
                 "student int8": args.work / f"student_{args.arch}_int8.tflite"}
    if not (args.reuse and all(p.is_file() for p in artifacts.values())):
        export_tflite(teacher, artifacts["teacher fp32"], "fp32")
        export_tflite(student, artifacts["student fp32"], "fp32")
        quantize(student, data, artifacts["student int8"], force=True, progress=False)

    rows = {}
    for name, path in artifacts.items():
        card = read_card(path)
        rows[name] = {"artifact": str(path), "parameters": card.lineage.get("parameters"),
                      "file_kb": path.stat().st_size / 1024, **latency_ms(path, args.runs),
                      "macro_ap_test": frame_ap(path, data, "test"),
                      "macro_ap_shift": frame_ap(path, data, "shift")}
    from benchmarks import invocation

    result = {"command": invocation(), "rows": rows, "data": str(data), "teacher": str(teacher),
              "student": str(student), "runs": args.runs, "machine": platform.machine(), "python": sys.version.split()[0],
              "wall_s": time.perf_counter() - t0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"{'artifact':14s} {'params':>8s} {'KiB':>7s} {'ms/audio s':>10s} {'(model)':>8s} "
          f"{'(front)':>8s} {'AP test':>8s} {'AP shift':>8s}")
    for name, r in rows.items():
        print(f"{name:14s} {r['parameters']:8d} {r['file_kb']:7.0f} {r['total_ms_per_audio_s']:10.3f}"
              f" {r['model_ms_per_audio_s']:8.3f} {r['frontend_ms_per_audio_s']:8.3f} "
              f"{r['macro_ap_test']:8.4f} {r['macro_ap_shift']:8.4f}")
    print(f"wrote {args.out} ({result['wall_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
