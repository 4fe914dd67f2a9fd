"""What a bounded lookahead costs in detections: the same int8 model, the same audio, frames
stitched from the centre of each window (the default) or with only `lookahead_s` of right
context (`--model-lookahead-s`, which bounds call end -> publication at about hop + lookahead
+ merge gap instead of (window + hop) / 2 + merge gap).

For each hop and lookahead: frame macro AP and event P/R/F1 on a split's files, each file
streamed through the runtime's own `TFLiteModel` and `WindowedStream` and decoded with the
card's decoder, plus the structural latency bound. Single model, single pass: a cost estimate
beside the latency figures of runtime_bench.py, not a quality claim.

    python benchmarks/lookahead_bench.py --model demo_out/student_int8.tflite \\
        --data demo_out/synth --split test [--hops 0.5,0.2] [--lookaheads centred,0.5,0.25]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_runtime.contract.events import decode_events, events_to_frames  # noqa: E402
from edge_runtime.contract.metrics import event_scores, frame_average_precision  # noqa: E402
from edge_runtime.contract.model import TFLiteModel, model_geometry  # noqa: E402
from edge_runtime.contract.windows import track  # noqa: E402
from edge_runtime.detect import decoder_settings  # noqa: E402


def score(model: TFLiteModel, dataset, files: list[str], hop_s: float,
          lookahead_s: float | None) -> dict:
    card = model.card
    geometry = model_geometry(card, hop_s, lookahead_s)
    decoder = decoder_settings(card)
    probs, truth, predicted, reference = [], [], [], []
    for f in files:
        audio, _ = dataset.load(f)
        p = track(audio, geometry, model.window_fn)
        events = dataset.events(f)
        probs.append(p)
        truth.append(events_to_frames(events, list(card.labels), len(p), card.frame_rate_hz))
        predicted += decode_events(p, card.labels, card.frame_rate_hz, decoder, file=f)
        reference += events
    ap = frame_average_precision(np.concatenate(truth), np.concatenate(probs))
    ev = event_scores(reference, predicted, labels=card.labels)["micro"]
    merge = float(np.max(decoder.per_class("merge_gap_s", card.labels)))
    lag = (geometry.hop_frames + geometry.lookahead_frames + 1) / card.frame_rate_hz
    return {"hop_s": hop_s, "lookahead_s": lookahead_s,
            "lookahead_frames": geometry.lookahead_frames, "frame_macro_ap": ap["macro"],
            "event_precision": ev["precision"], "event_recall": ev["recall"],
            "event_f1": ev["f1"], "latency_bound_s": lag + merge}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="int8 .tflite with its card")
    parser.add_argument("--data", type=Path, required=True, help="dataset folder (meerkit synth)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--hops", default="0.5,0.2", help="comma-separated hops in seconds")
    parser.add_argument("--lookaheads", default="centred,0.5,0.25",
                        help="comma-separated lookaheads in seconds; 'centred' = the default")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/out/lookahead_bench.json")
    args = parser.parse_args(argv)
    from train.data.dataset import Dataset

    model = TFLiteModel(args.model)
    dataset = Dataset(args.data, sample_rate=model.card.sample_rate)
    files = dataset.files_in(args.split)
    rows = []
    for hop in (float(h) for h in args.hops.split(",")):
        for text in args.lookaheads.split(","):
            lookahead = None if text == "centred" else float(text)
            if lookahead is not None and lookahead > model.card.window_s - hop:
                continue
            rows.append(score(model, dataset, files, hop, lookahead))
            r = rows[-1]
            print(f"hop {hop:.2f} s  lookahead {text:>7}: frame AP {r['frame_macro_ap']:.3f}  "
                  f"event P/R/F1 {r['event_precision']:.3f}/{r['event_recall']:.3f}/"
                  f"{r['event_f1']:.3f}  latency bound {r['latency_bound_s']:.2f} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/lookahead_bench.py " + " ".join(argv or sys.argv[1:])
    args.out.write_text(json.dumps({"command": command, "model": str(args.model),
                                    "split": args.split, "files": len(files), "rows": rows},
                                   indent=1))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
