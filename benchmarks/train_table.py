"""Do the papers' claims reproduce on the synthetic benchmark? One table, CPU-sized.

(a) animal2vec: data2vec pretraining helps when only 1% of the training files are labelled
    -> macro frame AP on `test`, finetuned from scratch vs from the pretrained model.
(b) MetaPerch: metadata heads help under distribution shift -> macro frame AP on `shift`
    (unseen recorders and region): no heads vs standard location/time heads vs an
    adversarial recorder head.

Every row prints the `meerkit` command that reproduces it. Run time on the 2-core machine
with the defaults (`--preset default`, tiny model, 2 s clips): 32 minutes (a `make test` ran
beside it for the first 8); `--quick` takes a few minutes and is only a smoke run (its
numbers mean little).

    python benchmarks/train_table.py [--out benchmarks/out/train] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` itself

import torch

from benchmarks import invocation
from train.checkpoint import load_model
from train.config import FinetuneConfig, MetadataHeadConfig, ModelConfig, PretrainConfig
from train.data.dataset import Dataset
from train.data.synth import SynthConfig, generate
from train.data.torch_data import select_files
from train.engine import Runtime
from train.evaluate import evaluate_model
from train.finetune import finetune
from train.pretrain import RunOptions, pretrain

STANDARD = (MetadataHeadConfig("location", "location", weight=0.1),
            MetadataHeadConfig("time_of_day", "circular", weight=0.1),
            MetadataHeadConfig("day_of_year", "circular", weight=0.1))
ADVERSARIAL = (MetadataHeadConfig("recorder_id", "class", mode="adversarial", weight=0.1),)
META_FLAGS = {"none": "", "standard": " --meta location --meta time_of_day --meta day_of_year",
              "adversarial": " --meta recorder_id=adversarial"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/train"))
    parser.add_argument("--preset", default="default", help="synth preset (default: default)")
    parser.add_argument("--pretrain-steps", type=int, default=1500)
    parser.add_argument("--finetune-steps", type=int, default=600)
    parser.add_argument("--clip-s", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (minutes)")
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.pretrain_steps, args.finetune_steps = "tiny", 40, 40
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cpu = Runtime(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    t0 = time.perf_counter()

    data = args.out / f"synth_{args.preset}"
    if not (data / "synth.json").is_file():
        generate(SynthConfig.preset(args.preset, seed=args.seed), data, workers=2, force=True,
                 progress=False)
    model_config = ModelConfig.tiny()
    common = f"--data {data} --preset tiny --clip-s {args.clip_s:g} --batch-size {args.batch_size}"

    def opts(name: str, splits: tuple[str, ...]) -> RunOptions:
        return RunOptions(data, args.out / name, splits, clip_s=args.clip_s, seed=args.seed,
                          progress=sys.stderr.isatty(), checkpoint_every=10**9)

    pre_cfg = PretrainConfig(steps=args.pretrain_steps, warmup_steps=args.pretrain_steps // 10,
                             batch_size=args.batch_size, lr=1e-3,
                             ema_anneal_steps=args.pretrain_steps, amp="fp32")
    pre_path = args.out / "pretrain" / "model.pt"
    if not pre_path.is_file():
        pretrain(opts("pretrain", ("pretrain", "train")), model_config, pre_cfg, cpu)
    pre_cmd = (f"meerkit train pretrain {common} --splits pretrain,train "
               f"--steps {args.pretrain_steps} --out {args.out}/pretrain")

    def ft(name: str, splits: tuple[str, ...], heads=(), init: Path | None = None) -> Path:
        path = args.out / name / "model.pt"
        if not path.is_file():
            cfg = FinetuneConfig(steps=args.finetune_steps, warmup_steps=args.finetune_steps // 10,
                                 batch_size=args.batch_size, lr=1e-3, amp="fp32",
                                 freeze_encoder_steps=args.finetune_steps // 10 if init else 0,
                                 metadata_heads=heads)
            finetune(opts(name, splits), model_config, cfg, cpu, init=init,
                     eval_every=max(1, args.finetune_steps // 6))
        return path

    dataset = Dataset(data)

    def score(path: Path, split: str) -> float:
        model, _ = load_model(path, cpu.device)
        report, _, _ = evaluate_model(lambda a: model(a).frame_logits, dataset,
                                      select_files(dataset, split), args.clip_s,
                                      model.config.frame_rate_hz, 32, cpu.device)
        return report["frame_ap"]["macro"]

    rows = []
    ft_cmd = f"meerkit train finetune {common} --steps {args.finetune_steps}"
    for name, init in (("scratch", None), ("pretrained", pre_path)):
        path = ft(f"ft_1pct_{name}", ("subset:train_1pct",), init=init)
        cmd = f"{ft_cmd} --splits subset:train_1pct --out {args.out}/ft_1pct_{name}"
        if init:
            cmd += f" --init {pre_path}   (after: {pre_cmd})"
        rows.append({"claim": "a", "setting": f"1% labels, {name}", "split": "test",
                     "macro_ap": score(path, "test"), "command": cmd})
    for name, heads in (("none", ()), ("standard", STANDARD), ("adversarial", ADVERSARIAL)):
        path = ft(f"ft_meta_{name}", ("train",), heads=heads)
        cmd = f"{ft_cmd} --splits train{META_FLAGS[name]} --out {args.out}/ft_meta_{name}"
        for split in ("test", "shift"):
            rows.append({"claim": "b", "setting": f"metadata heads: {name}", "split": split,
                         "macro_ap": score(path, split), "command": cmd})

    elapsed = time.perf_counter() - t0
    print(f"\nTraining claims on synth '{args.preset}' (tiny teacher, {args.clip_s:g} s clips, "
          f"pretrain {args.pretrain_steps} / finetune {args.finetune_steps} steps), "
          f"{elapsed / 60:.1f} min\n")
    print("| claim | setting | split | macro AP |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['claim']} | {r['setting']} | {r['split']} | {r['macro_ap']:.3f} |")
    print("\ncommands:")
    for r in rows:
        print(f"  [{r['claim']}] {r['setting']}: {r['command']}")
    out = args.out / "train_table.json"
    out.write_text(json.dumps({"command": invocation(), "preset": args.preset,
                               "clip_s": args.clip_s,
                               "pretrain_steps": args.pretrain_steps,
                               "finetune_steps": args.finetune_steps,
                               "minutes": elapsed / 60, "rows": rows}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
