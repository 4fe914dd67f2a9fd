"""`meerkit train pretrain|finetune|evaluate|probe` (also `python -m train …`).

Configs are dataclass presets (`--preset tiny|small|base|large`) with a few common flags and
`--set KEY=VALUE` for any other field, validated with a suggestion for typos.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from edge_runtime.contract.errors import UserError

log = logging.getLogger(__name__)

EXAMPLES_PRETRAIN = """examples:
  meerkit train pretrain --data data/synth --out runs/pre --preset tiny --steps 300
  torchrun --nproc_per_node=8 -m train pretrain --data D --out runs/pre --preset base
  meerkit train pretrain --data D --out runs/pre --resume        # continue after a stop
"""
EXAMPLES_FINETUNE = """examples:
  meerkit train finetune --data data/synth --out runs/ft --init runs/pre/model.pt
  meerkit train finetune --data D --out runs/ft1 --splits subset:train_1pct --init runs/pre/model.pt
  meerkit train finetune --data D --out runs/meta --meta location=standard \\
      --meta time_of_day=standard --meta recorder_id=adversarial
"""

# Training-schedule presets that go with each model preset (steps, batch, lr, warm-up).
SCHEDULES: dict[str, dict[str, dict[str, Any]]] = {
    # Short runs need a faster EMA teacher: 0.99 -> 0.995 sums to ~1.7 time constants over
    # 300 steps (8.6 over 1,500); the base defaults (0.999 -> 0.9999) would leave it at init.
    "tiny": {"pretrain": dict(steps=300, warmup_steps=30, batch_size=8, lr=1e-3,
                              ema_decay=0.99, ema_end_decay=0.995, amp="fp32"),
             "finetune": dict(steps=300, warmup_steps=30, batch_size=8, lr=1e-3,
                              freeze_encoder_steps=30, amp="fp32")},
    "base": {"pretrain": {}, "finetune": {}},
    "large": {"pretrain": dict(lr=2e-4), "finetune": dict(lr=3e-5)},
}
SCHEDULES["small"] = SCHEDULES["tiny"]  # the CPU benchmarks' teacher: tiny's schedule
SCHEDULES["small100"] = SCHEDULES["tiny"]


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(base: dict[str, Any], sets: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`KEY=VALUE` into the stage config, `model.KEY=VALUE` into the model config."""
    stage, model = dict(base), {}
    for item in sets:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected KEY=VALUE (e.g. --set mask_prob=1.2)")
        key, value = item.split("=", 1)
        target = model if key.startswith("model.") else stage
        target[key.removeprefix("model.")] = parse_value(value)
    return stage, model


def metadata_heads(specs: list[str]):
    """`--meta NAME=MODE` (mode standard|adversarial|off), or `--meta default`."""
    from train.config import MetadataHeadConfig, default_metadata_heads
    from train.data.torch_data import HEAD_FIELDS

    heads = []
    for spec in specs:
        if spec == "default":
            heads.extend(default_metadata_heads())
            continue
        name, _, mode = spec.partition("=")
        if name not in HEAD_FIELDS:
            import difflib

            close = difflib.get_close_matches(name, HEAD_FIELDS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise UserError(f"--meta {spec}: unknown metadata field '{name}'{hint} "
                            f"(known: {', '.join(HEAD_FIELDS)})")
        heads.append(MetadataHeadConfig(name, HEAD_FIELDS[name], mode=mode or "standard",
                                        weight=0.1, grl_warmup_steps=0))
    return tuple(heads)


def _common(p: argparse.ArgumentParser, default_splits: str) -> None:
    p.add_argument("--data", type=Path, required=True, help="dataset folder (data contract)")
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, logs, model.pt")
    p.add_argument("--preset", default="tiny", choices=sorted(SCHEDULES),
                   help="model + schedule preset (default: tiny, for CPU)")
    p.add_argument("--splits", default=default_splits,
                   help=f"comma-separated splits or subset:NAME to train on (default: {default_splits})")
    p.add_argument("--steps", type=int, help="optimizer steps (overrides the preset)")
    p.add_argument("--batch-size", type=int, help="clips per step and GPU")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--amp", choices=("bf16", "fp16", "fp32"), help="autocast on GPU (default bf16)")
    p.add_argument("--clip-s", type=float, default=10.0, help="clip length in seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (torchrun sets the GPU)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt if present")
    p.add_argument("--stop-at", type=int, help="stop after this step with a checkpoint")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set mask_prob=1.2 --set model.depth=4")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _configs(args: argparse.Namespace, stage: str):
    from train.config import FinetuneConfig, ModelConfig, PretrainConfig, model_preset

    cls = PretrainConfig if stage == "pretrain" else FinetuneConfig
    base = dict(SCHEDULES[args.preset][stage])
    for flag, key in (("steps", "steps"), ("batch_size", "batch_size"), ("lr", "lr"), ("amp", "amp")):
        if getattr(args, flag) is not None:
            base[key] = getattr(args, flag)
    stage_dict, model_dict = apply_overrides(base, args.set)
    if stage == "finetune" and args.meta:
        stage_dict["metadata_heads"] = [h.to_dict() for h in metadata_heads(args.meta)]
    preset = model_preset(args.preset)
    model_config = ModelConfig.from_dict({**preset.to_dict(), **model_dict}, "model")
    defaults = dataclasses.asdict(cls())
    if stage == "finetune" and getattr(args, "init", None) is not None:
        # From a pretrained model: FinetuneConfig.from_pretrained's recipe; its head-only
        # warm-up is 10% of this run's steps unless --set freeze_encoder_steps says otherwise.
        if "freeze_encoder_steps" not in apply_overrides({}, args.set)[0]:
            stage_dict.pop("freeze_encoder_steps", None)
        steps = stage_dict.get("steps", defaults["steps"])
        defaults = dataclasses.asdict(FinetuneConfig.from_pretrained(steps=steps))
    merged = {**defaults, **stage_dict}
    if merged["warmup_steps"] >= merged["steps"]:
        merged["warmup_steps"] = max(1, merged["steps"] // 10)
        log.warning("warm-up longer than the run: using %d warm-up steps", merged["warmup_steps"])
    return model_config, cls.from_dict(merged, stage)


def _options(args: argparse.Namespace):
    from train.engine import RunOptions

    return RunOptions(args.data, args.out, tuple(s for s in args.splits.split(",") if s),
                      args.clip_s, args.seed, args.resume, args.stop_at,
                      checkpoint_every=args.checkpoint_every, progress=not args.no_progress)


def _train(args: argparse.Namespace, stage: str, what: str, run) -> int:
    """One training stage under the engine's runtime (joined process group under torchrun)."""
    from train.engine import setup_runtime, teardown_runtime

    model_config, config = _configs(args, stage)
    runtime = setup_runtime(args.device)
    try:
        path = run(_options(args), model_config, config, runtime)
    finally:
        teardown_runtime()
    if runtime.is_main:
        print(f"{what} model: {path}" if path.is_file() else
              f"stopped at step {args.stop_at}; resume with --resume")
    return 0


def pretrain_command(args: argparse.Namespace) -> int:
    from train.pretrain import pretrain

    return _train(args, "pretrain", "pretrained", pretrain)


def finetune_command(args: argparse.Namespace) -> int:
    from train.finetune import finetune

    def run(options, model_config, config, runtime):
        return finetune(options, model_config, config, runtime, init=args.init,
                        val_split=args.val or None, eval_every=args.eval_every)

    return _train(args, "finetune", "finetuned", run)


def evaluate_command(args: argparse.Namespace) -> int:
    import torch

    from edge_runtime.contract.events import DecoderConfig
    from train.checkpoint import load_model
    from train.data.dataset import Dataset
    from train.data.torch_data import select_files
    from train.evaluate import evaluate_model, plot_pr_curves, stored_decoder, write_report

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else (
        "cpu" if args.device == "auto" else args.device)
    model, record = load_model(args.model, device)
    if model.classifier is None:
        raise UserError(f"{args.model}: a pretrained model has no classifier; finetune it first")
    dataset = Dataset(args.data, sample_rate=model.config.sample_rate)
    if dataset.labels != record["labels"]:
        raise UserError(f"{args.data}: label set {dataset.labels} differs from the model's "
                        f"{record['labels']}")
    files = [f for s in args.split.split(",") for f in select_files(dataset, s)]
    # The model's own val-tuned decoder, as verify and the demo decode it, unless asked.
    decoder = None if args.threshold is not None else stored_decoder(record)
    how = "the model's val-tuned decoder"
    if decoder is None:
        decoder = DecoderConfig(threshold=0.5 if args.threshold is None else args.threshold)
        how = f"threshold {decoder.threshold:g}"
    report, probs, targets = evaluate_model(lambda a: model(a).frame_logits, dataset, files,
                                            args.clip_s, model.config.frame_rate_hz,
                                            args.batch_size, device, decoder, args.iou)
    report.update(model=str(args.model), split=args.split)
    out = args.out or Path(args.model).with_name(f"eval_{args.split.replace(',', '_')}.json")
    write_report(report, out)
    import numpy as np

    truth = np.concatenate([targets[f] for f in files])
    scores = np.concatenate([probs[f] for f in files])
    png = out.with_suffix(".png")
    plot_pr_curves({"teacher": (truth, scores)}, dataset.labels, png,
                   f"{Path(args.model).parent.name} on {args.split}")
    ap, ev = report["frame_ap"], report["event"]["micro"]
    print(f"{args.split}: frame macro AP {ap['macro']:.3f}, micro AP {ap['micro']:.3f}, "
          f"event F1 {ev['f1']:.3f} (P {ev['precision']:.3f}, R {ev['recall']:.3f}, "
          f"IoU>{args.iou:g}) on {len(files)} files; events decoded with {how}")
    for label, value in ap["per_class"].items():
        print(f"  {label:24s} AP {value:.3f}")
    print(f"wrote {out} and {png}")
    return 0


EXAMPLES_PROBE = """examples:
  meerkit train probe --data data/synth --model runs/pre/model.pt --clip-s 2
  meerkit train probe --data data/synth --random-init --preset tiny --clip-s 2 --out random.json
  meerkit train probe --data D --model runs/pre/model.pt --splits subset:train_1pct --layer 0
"""


def probe_command(args: argparse.Namespace) -> int:
    import torch

    from train.checkpoint import load_model
    from train.config import model_preset
    from train.data.dataset import Dataset
    from train.data.torch_data import select_files
    from train.evaluate import write_report
    from train.probe import probe, random_init_model

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else (
        "cpu" if args.device == "auto" else args.device)
    if args.random_init and args.out is None:
        raise UserError("--random-init needs --out (where to write the report)")
    layer = int(args.layer) if args.layer.lstrip("-").isdigit() else args.layer
    if args.random_init:
        config = model_preset(args.preset)
        dataset = Dataset(args.data, sample_rate=config.sample_rate)
    else:
        model, _ = load_model(args.model, device)
        dataset = Dataset(args.data, sample_rate=model.config.sample_rate)
    train_files = [f for s in args.splits.split(",") if s for f in select_files(dataset, s)]
    eval_files = {s: select_files(dataset, s) for s in args.eval_splits.split(",") if s}
    if args.random_init:
        model = random_init_model(config, dataset, train_files, args.clip_s, args.seed, device)
    report = probe(model, dataset, train_files, eval_files, args.clip_s, layer=layer,
                   epochs=args.epochs, lr=args.lr, seed=args.seed, batch_size=args.batch_size,
                   device=device)
    source = f"random init ({args.preset}, seed {args.seed})" if args.random_init else str(args.model)
    report.update(model=source, train_splits=args.splits)
    out = args.out or Path(args.model).with_name(
        f"probe_{args.splits.replace(',', '_').replace(':', '-')}.json")
    write_report(report, out)
    print(f"linear probe of {source}, layer {layer}, fit on {args.splits} "
          f"({report['train_frames']} frames)")
    for name, result in report["splits"].items():
        ap = result["frame_ap"]
        print(f"{name}: frame macro AP {ap['macro']:.3f}, micro AP {ap['micro']:.3f} "
              f"on {result['files']} files")
        for label, value in ap["per_class"].items():
            print(f"  {label:24s} AP {value:.3f}")
    print(f"wrote {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="pretrain, finetune and evaluate the teacher",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="train_command", metavar="STEP", required=True)

    p = sub.add_parser("pretrain", help="data2vec self-supervised pretraining",
                       description="data2vec mean-teacher pretraining on unlabelled audio.",
                       epilog=EXAMPLES_PRETRAIN, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p, "pretrain,train")
    p.set_defaults(func=pretrain_command)

    p = sub.add_parser("finetune", help="focal-loss finetuning with metadata heads",
                       description="Frame-level multi-label finetuning (focal loss), optionally "
                       "from a pretrained model, with MetaPerch metadata heads.",
                       epilog=EXAMPLES_FINETUNE, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p, "train")
    p.add_argument("--init", type=Path, help="start from this model.pt (pretrained or finetuned), "
                   "with the from-pretrained recipe: head-only warm-up for 10%% of the steps, "
                   "layer-wise lr decay 0.75 (--set freeze_encoder_steps=N, --set "
                   "layer_lr_decay=1 to change)")
    p.add_argument("--val", default="val", help="validation split for model selection ('' = none)")
    p.add_argument("--eval-every", type=int, default=0, help="validate every N steps (default: 5x per run)")
    p.add_argument("--meta", action="append", default=[], metavar="FIELD=MODE",
                   help="metadata head: location, time_of_day, day_of_year, elevation_m, "
                   "recorder_id, site, habitat or individual = standard|adversarial; "
                   "'default' = location/time standard + recorder adversarial")
    p.set_defaults(func=finetune_command)

    p = sub.add_parser("evaluate", help="frame AP and event F1 on a split",
                       description="Evaluate a finetuned model: frame AP (macro/micro/per class) "
                       "and event P/R/F1; writes JSON and a PR-curve PNG.")
    p.add_argument("--model", type=Path, required=True, help="finetuned model.pt")
    p.add_argument("--data", type=Path, required=True, help="dataset folder")
    p.add_argument("--split", default="test", help="split(s) or subset:NAME (default: test)")
    p.add_argument("--out", type=Path, help="report JSON (default: next to the model)")
    p.add_argument("--iou", type=float, default=0.0, help="event IoU threshold (0 = any overlap)")
    p.add_argument("--threshold", type=float, default=None,
                   help="one event decision threshold for every label (default: the per-label "
                        "decoder finetuning tuned on val, else 0.5)")
    p.add_argument("--clip-s", type=float, default=10.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=evaluate_command)

    p = sub.add_parser("probe", help="linear probe of frozen features: frame AP",
                       description="Fit a linear frame classifier (logistic regression per "
                       "class) on a model's frozen features and report frame AP: the gate "
                       "that pretrained features beat a random-init model's (--random-init).",
                       epilog=EXAMPLES_PROBE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="dataset folder (data contract)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="model.pt (pretrained or finetuned)")
    source.add_argument("--random-init", action="store_true",
                        help="a random-init model of --preset (the baseline; its front-end "
                        "BatchNorm is fitted on the training clips)")
    p.add_argument("--preset", default="tiny", choices=sorted(SCHEDULES),
                   help="model preset for --random-init (default: tiny)")
    p.add_argument("--splits", default="train",
                   help="split(s) or subset:NAME the probe is fit on (default: train)")
    p.add_argument("--eval-splits", default="val,test",
                   help="comma-separated splits to report (default: val,test)")
    p.add_argument("--layer", default="average",
                   help="'average' (mean of all blocks), 0 (conv encoder) or block k "
                   "(negative from the last)")
    p.add_argument("--epochs", type=int, default=20, help="passes over the training frames")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate of the probe")
    p.add_argument("--clip-s", type=float, default=10.0, help="clip length in seconds")
    p.add_argument("--seed", type=int, default=0, help="probe shuffling (and --random-init weights)")
    p.add_argument("--batch-size", type=int, default=16, help="clips per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--out", type=Path, help="report JSON (default: next to the model)")
    p.set_defaults(func=probe_command)
