"""`meerkit export distill|onnx|tflite|quantize|verify` (also `python -m export …`).

From a finetuned teacher to verified edge artifacts:

  meerkit export distill  --teacher runs/ft/model.pt --data D --out student.pt --arch pico
  meerkit export quantize --checkpoint student.pt --calibration D --out student_int8.tflite
  meerkit export verify   student_int8.tflite --data D --split test
  meerkit export tflite   --checkpoint runs/ft/model.pt --out teacher.tflite --precision dynamic
  meerkit export onnx     --checkpoint student.pt --out student.onnx

Several `--teacher` flags distil their ensemble (probabilities averaged per frame):

  meerkit export distill  --teacher runs/a/model.pt --teacher runs/b/model.pt --data D ...

A warm start: the label-only student, taught further by the teacher:

  meerkit export distill  --labels-only --data D --out baseline.pt
  meerkit export distill  --teacher runs/ft/model.pt --init baseline.pt --lr 1e-3 --steps 1500 ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge_runtime.contract.errors import UserError


def _threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def distill_command(args: argparse.Namespace) -> int:
    from export.distill import DistillConfig, distill
    from export.student import ARCHS
    from train.augment import AugmentConfig

    _threads(args)
    if args.arch is not None and args.arch not in ARCHS:
        raise UserError(f"unknown student architecture {args.arch!r}; choose "
                        f"{', '.join(ARCHS)}")
    if (args.teacher is None) == (not args.labels_only):
        raise UserError("give --teacher MODEL.pt to distil, or --labels-only for the "
                        "label-only baseline (not both)")
    overrides = {k: v for k, v in {
        "arch": args.arch, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
        "temperature": args.temperature, "kd_weight": args.kd_weight, "kd_loss": args.kd_loss,
        "focal_weight": args.focal_weight, "unlabelled_per_labelled": args.unlabelled_per_labelled,
        "window_s": args.window_s, "hop_s": args.hop_s,
        "hop_length": args.hop_length, "n_mels": args.n_mels, "seed": args.seed,
        "val_split": args.val,
        "init": str(args.init) if args.init is not None else None}.items() if v is not None}
    if args.labelled:
        overrides["labelled_splits"] = tuple(s for s in args.labelled.split(",") if s)
    if args.unlabelled is not None:
        overrides["unlabelled_splits"] = tuple(s for s in args.unlabelled.split(",") if s)
    if args.no_augment:
        overrides["augment"] = AugmentConfig.none()
    if args.teacher_on_augmented:
        overrides["teacher_on_augmented"] = True
    if args.kd_on_labelled is not None:
        overrides["kd_on_labelled"] = args.kd_on_labelled
    config = DistillConfig(**overrides)
    path = distill(args.teacher, args.data, args.out, config, args.cache,
                   progress=not args.no_progress)
    print(f"student: {path}")
    return 0


def onnx_command(args: argparse.Namespace) -> int:
    from export.onnx import export_onnx

    path, card = export_onnx(args.checkpoint, args.out, args.window_s, args.hop_s)
    print(f"{card.name}: {path} ({path.stat().st_size / 1024:.0f} KiB, opset 20, input "
          f"{'log-mel' if card.frontend.kind == 'logmel' else 'waveform'} window of "
          f"{card.window_s:g} s)")
    return _maybe_verify(args, path)


def tflite_command(args: argparse.Namespace) -> int:
    from export.tflite import export_tflite

    path, card, check = export_tflite(args.checkpoint, args.out, args.precision, args.window_s,
                                      args.hop_s)
    print(f"{card.name} ({args.precision}): {path} ({path.stat().st_size / 1024:.0f} KiB); vs "
          f"PyTorch: relative difference {check['max_rel_diff']:.1e}, correlation "
          f"{check['correlation']:.5f}")
    return _maybe_verify(args, path)


def _maybe_verify(args: argparse.Namespace, path: Path) -> int:
    if args.data is None:
        print("(add --data DATASET to verify on held-out audio and record the metrics in the card)")
        return 0
    from export.verify import format_table, verify

    report = verify(path, args.data, args.split, checkpoint=args.checkpoint, use_onnx=False,
                    progress=not args.no_progress)
    print(format_table(report))
    return 0


def quantize_command(args: argparse.Namespace) -> int:
    from export.quantize import CalibrationConfig, quantize
    from export.verify import format_table

    _threads(args)
    config = CalibrationConfig(split=args.calibration_split, max_clips=args.clips,
                               min_clips=args.min_clips)
    path, report = quantize(args.checkpoint, args.calibration, args.out, args.budget,
                            args.force, config, args.verify_split,
                            progress=not args.no_progress)
    print(format_table(report))
    print(f"int8 {path} ({path.stat().st_size / 1024:.0f} KiB): frame macro AP drop "
          f"{report['ap_drop_points']:.2f} points on '{args.verify_split}' (budget {args.budget:g})")
    return 0


def verify_command(args: argparse.Namespace) -> int:
    from export.verify import format_table, verify

    _threads(args)
    report = verify(args.artifact, args.data, args.split, args.checkpoint, args.teacher,
                    use_onnx=not args.no_onnx, out=args.out, write_card=not args.no_write_card,
                    progress=not args.no_progress, baseline=args.baseline)
    print(format_table(report))
    for name, agree in report["agreement"].items():
        print(f"{name}: max |dp| {agree['max_abs_diff']:.2e}, logit correlation "
              f"{agree['correlation']:.6f}, same decisions on {100 * agree['frame_agreement']:.2f}% "
              f"of frames ({100 * agree['decision_agreement']:.2f}% of frame-labels)")
    print(f"wrote {report['paths']['json']} and {report['paths']['png']}"
          + ("" if args.no_write_card else f"; metrics recorded in the card of {args.artifact}"))
    if args.print_json:
        print(json.dumps(report["agreement"], indent=2))
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="distil, quantize, export and verify edge models",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="export_command", metavar="STEP", required=True)

    p = sub.add_parser("distill", help="train a small student from a finetuned teacher",
                       description="Knowledge distillation: the teacher's probabilities on "
                       "augmented unlabelled + labelled audio, plus focal loss on labels; the best "
                       "step and the per-label event decoder are chosen on val. --labels-only "
                       "trains the label-only baseline with the same recipe.")
    p.add_argument("--teacher", type=Path, action="append",
                   help="finetuned teacher model.pt; repeat it to distil an ensemble (the "
                   "teachers' probabilities averaged; they must share labels and sample rate). "
                   "A student.pt may be a member too: e.g. the label-only baseline beside the "
                   "teacher (it teaches at its own window and frame rate)")
    p.add_argument("--labels-only", action="store_true",
                   help="no teacher: the label-only baseline, same recipe")
    p.add_argument("--data", type=Path, required=True, help="dataset folder")
    p.add_argument("--out", type=Path, required=True, help="student checkpoint to write")
    p.add_argument("--no-augment", action="store_true",
                   help="no gain/shift/noise/background/mixup/SpecAugment")
    p.add_argument("--teacher-on-augmented", action="store_true",
                   help="run the teacher on every augmented batch (its targets match what the "
                   "student hears; several times slower on CPU) instead of shifting and mixing "
                   "its cached tracks on the clean audio")
    p.add_argument("--arch", help="student architecture: tcn_small (default; dilated TCN with a "
                   "pooled global-context gate, ~139k parameters), tcn (~490k), pico (~62k, "
                   "no global context), small (~640k)")
    p.add_argument("--init", type=Path, metavar="STUDENT.pt",
                   help="start from this student's weights (same --arch, labels and front end) "
                   "instead of random ones: e.g. the label-only baseline, taught further by "
                   "the teacher (then a lower --lr, e.g. 1e-3)")
    p.add_argument("--steps", type=_positive)
    p.add_argument("--batch-size", type=_positive)
    p.add_argument("--lr", type=float, help="peak learning rate (default 3e-3; cosine decay)")
    p.add_argument("--temperature", type=float, help="distillation temperature (default 2)")
    p.add_argument("--kd-weight", type=float, help="weight of the teacher term (default 1)")
    p.add_argument("--kd-loss", choices=("bce", "focal"),
                   help="the teacher term: bce (default; T^2 * BCE against the softened "
                   "teacher, averaged over frames) or focal (the label term's focal loss with "
                   "the teacher's probabilities as soft pseudo-labels; use --temperature 1)")
    p.add_argument("--focal-weight", type=float, help="weight of the label term (default 1)")
    p.add_argument("--unlabelled-per-labelled", type=float,
                   help="unlabelled windows (teacher term only) per labelled window in each "
                   "batch (default: as the two pools compare, at most 1)")
    p.add_argument("--kd-on-labelled", action=argparse.BooleanOptionalAction, default=None,
                   help="the teacher term also on labelled windows (default: no, the "
                   "teacher teaches only where labels are absent)")
    p.add_argument("--window-s", type=float, help="deployment window (default 2 s)")
    p.add_argument("--hop-s", type=float, help="streaming hop (default 1 s)")
    p.add_argument("--hop-length", type=int, help="front-end hop in samples (default 20 ms)")
    p.add_argument("--n-mels", type=int)
    p.add_argument("--labelled", help="labelled splits (default train)")
    p.add_argument("--unlabelled", help="unlabelled splits (default pretrain; '' for none)")
    p.add_argument("--val", help="split for model selection and thresholds (default val)")
    p.add_argument("--cache", type=Path, help="teacher-output cache (default OUT's folder/teacher_cache)")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=distill_command)

    for name, helptext in (("onnx", "export a student or teacher to ONNX (opset 20)"),
                           ("tflite", "export to TFLite fp32/fp16/dynamic via onnx2tf")):
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.add_argument("--checkpoint", type=Path, required=True,
                       help="student.pt (distill) or teacher model.pt (finetune)")
        p.add_argument("--out", type=Path, required=True)
        if name == "tflite":
            p.add_argument("--precision", choices=("fp32", "fp16", "dynamic"), default="fp32")
        p.add_argument("--window-s", type=float, help="teacher only: window (default 2 s)")
        p.add_argument("--hop-s", type=float, help="teacher only: hop (default window / 2)")
        p.add_argument("--data", type=Path, help="verify on this dataset after export")
        p.add_argument("--split", default="test", help="split to verify on (default test)")
        p.add_argument("--no-progress", action="store_true")
        p.set_defaults(func=onnx_command if name == "onnx" else tflite_command)

    p = sub.add_parser("quantize", help="full-integer int8 student, verified against fp32",
                       description="int8 backbone (per-channel weights, float in/out), log-mel "
                       "front end stays float; refused if macro AP drops more than --budget.")
    p.add_argument("--checkpoint", type=Path, required=True, help="student.pt")
    p.add_argument("--calibration", type=Path, required=True, help="dataset with real audio")
    p.add_argument("--out", type=Path, required=True, help="int8 .tflite to write")
    p.add_argument("--budget", type=float, default=2.0,
                   help="allowed frame macro AP drop vs fp32, in AP points (default 2.0)")
    p.add_argument("--force", action="store_true", help="write even beyond the budget")
    p.add_argument("--calibration-split", default="train")
    p.add_argument("--clips", type=_positive, default=200, help="calibration windows (max)")
    p.add_argument("--min-clips", type=_positive, default=32)
    p.add_argument("--verify-split", default="val", help="split for the AP budget (default val)")
    p.add_argument("--threads", type=int)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=quantize_command)

    p = sub.add_parser("verify", help="compare an artifact with PyTorch/ONNX/teacher on audio",
                       description="Agreement and frame AP / event F1 of an artifact vs its "
                       "PyTorch checkpoint, ONNX Runtime and the teacher; table, JSON, PNG.")
    p.add_argument("artifact", type=Path, help=".tflite or .onnx with a model card")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--checkpoint", type=Path, help="what it was made from (default: the card's)")
    p.add_argument("--teacher", type=Path, help="teacher model.pt (default: the card's lineage)")
    p.add_argument("--baseline", type=Path,
                   help="another model to score beside it, e.g. the label-only student.pt")
    p.add_argument("--out", type=Path, help="report JSON (PNG beside it)")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime backend")
    p.add_argument("--no-write-card", action="store_true",
                   help="leave the artifact untouched (default: record metrics in its card)")
    p.add_argument("--print-json", action="store_true")
    p.add_argument("--threads", type=int)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=verify_command)

