"""`meerkit demo`: the whole product, end to end, with the same commands a user types.

synthesise a benchmark -> pretrain + finetune tiny teachers (pretrained + metadata heads,
and from scratch; the better one on val is distilled) -> distil + quantize an int8
student (verified) -> start a local mosquitto (or use $MQTT_HOST) -> stream the test split
through `edge-runtime` -> a subscriber prints detections as they arrive -> summary table and a
PNG (spectrogram of a demo clip with ground truth and detections).

Each stage is a subprocess running a real CLI command, printed before it runs, so the demo
doubles as a copy-paste tutorial. Stages whose output exists are skipped on a rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path

import numpy as np

from edge_runtime.contract.errors import UserError
from meerkit.demo_report import model_val_ap, plot_demo_clip, quality_table, runtime_summary

BIN = Path(sys.executable).parent


def _cmd(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else name


class _Echo:
    """Echoes a stage's output indented (after `prefix`, for stages run side by side).
    Progress bars (tqdm lines arrive one per refresh) redraw in place on a terminal and are
    thinned to one every 15 s in a log file or when several stages share the screen."""

    def __init__(self, quiet_lines: str, prefix: str = ""):
        self.quiet, self.prefix = quiet_lines, prefix
        self.tty = sys.stdout.isatty() and not prefix
        self.last_bar, self.bar_open = 0.0, False

    def __call__(self, line: str) -> None:
        text = line.rstrip("\n")
        if (self.quiet and self.quiet in text) or _TF_NOISE.match(text):
            return
        if _PROGRESS.search(text):
            done = "100%|" in text
            if self.tty:
                print(f"\r    {text}", end="\n" if done else "", flush=True)
                self.bar_open = not done
            elif done or time.monotonic() - self.last_bar >= 15.0:
                self.last_bar = time.monotonic()
                print(f"    {self.prefix}{text}", flush=True)
            return
        if not text.strip():
            return
        if self.bar_open:
            print(flush=True)
            self.bar_open = False
        print(f"    {self.prefix}{text}", flush=True)


_PROGRESS = re.compile(r"\d+%\|")
# TensorFlow's C++ start-up chatter (imported by tensorboard and onnx2tf; absl prints it
# before any log level applies, so TF_CPP_MIN_LOG_LEVEL does not help): nothing for a user.
_TF_NOISE = re.compile(r"(I0000 |WARNING: All log messages before absl|To enable the following "
                       r"instructions|W\d{4} .*torchvision is not installed)")


def stage(title: str, argv: list[str], skip_if: Path | None = None,
          quiet_lines: str = "") -> list[str]:
    """Run one CLI command, echoing its output; returns the lines it printed."""
    print(f"\n=== {title}\n$ {' '.join(shlex.quote(a) for a in argv)}", flush=True)
    if skip_if is not None and skip_if.exists():
        print(f"(exists: {skip_if}; skipped)", flush=True)
        return []
    t0 = time.perf_counter()
    lines, echo = [], _Echo(quiet_lines)
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as proc:
        for line in proc.stdout:
            lines.append(line)
            echo(line)
    if echo.bar_open:
        print(flush=True)
    if proc.returncode != 0:
        raise UserError(f"demo stage '{title}' failed (exit {proc.returncode})")
    print(f"--- {title}: {time.perf_counter() - t0:.0f} s", flush=True)
    return lines


def stages_side_by_side(runs: list[tuple[str, str, list[str], Path | None]]) -> None:
    """Run independent stages (title, tag, argv, skip_if) at the same time, one core each:
    small models use two cores poorly, so two one-thread runs finish sooner than the same
    runs one after the other. Each line is echoed after its stage's [tag]."""
    todo, tags = [], {}
    for title, tag, argv, skip_if in runs:
        tags[title] = tag
        print(f"\n=== {title}\n$ {' '.join(shlex.quote(a) for a in argv)}", flush=True)
        if skip_if is not None and skip_if.exists():
            print(f"(exists: {skip_if}; skipped)", flush=True)
        else:
            todo.append((title, argv))
    if not todo:
        return
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if len(todo) > 1 else None
    procs = [(title, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, bufsize=1, env=env)) for title, argv in todo]

    def echo(title: str, proc: subprocess.Popen) -> None:
        show = _Echo("", prefix=f"[{tags[title]}] " if len(todo) > 1 else "")
        for line in proc.stdout:
            show(line)

    readers = [threading.Thread(target=echo, args=pair, daemon=True) for pair in procs]
    for reader in readers:
        reader.start()
    for (_, proc), reader in zip(procs, readers, strict=True):
        proc.wait()
        reader.join()  # every line echoed, also a failed stage's last words
    failed = [title for title, proc in procs if proc.returncode != 0]
    if failed:
        raise UserError(f"demo stage '{failed[0]}' failed")
    print(f"--- {' + '.join(tags[t] for t, _ in todo)}, side by side: "
          f"{time.perf_counter() - t0:.0f} s", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mosquitto(workdir: Path) -> tuple[subprocess.Popen | None, str, int]:
    if os.environ.get("MQTT_HOST"):
        return None, os.environ["MQTT_HOST"], int(os.environ.get("MQTT_PORT", "1883"))
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        raise UserError("mosquitto not found: install it (apt-get install mosquitto) or set MQTT_HOST")
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(50):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    print(f"\n=== broker: mosquitto on 127.0.0.1:{port}", flush=True)
    return proc, "127.0.0.1", port


JOIN_FADE_S = 0.01


def faded(audio: np.ndarray, n: int) -> np.ndarray:
    """A copy with raised-cosine ramps of n samples at both ends."""
    out = np.array(audio, np.float32)
    n = min(n, len(out) // 2)
    if n:
        ramp = (0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)).astype(np.float32)
        out[:n] *= ramp
        out[len(out) - n:] *= ramp[::-1]
    return out


def concat_split(data: Path, split: str, out: Path) -> tuple[list[tuple[str, float]], int]:
    """The split's recordings back to back as one stream WAV; returns (file, offset_s) list.
    Each recording fades in and out over JOIN_FADE_S: a hard join is a step, which the
    detector rightly hears as a click (false click_trains on every join); a real recorder's
    stream has no such steps."""
    from edge_runtime.contract.wav import write_wav
    from train.data.dataset import Dataset

    dataset = Dataset(data)
    pieces, offsets, pos = [], [], 0
    for file in dataset.files_in(split):
        audio, sr = dataset.load(file)
        offsets.append((file, pos / sr))
        pieces.append(faded(audio, round(JOIN_FADE_S * sr)))
        pos += len(audio)
    write_wav(out, np.concatenate(pieces), dataset.sample_rate)
    return offsets, dataset.sample_rate


class SubscriberProcess:
    """The demo's central server: `meerkit subscribe --print` in a subprocess, storing into
    SQLite. Its lines are echoed as they arrive; start() returns once the broker has granted
    the subscription, so no detection is published before anyone listens."""

    def __init__(self, argv: list[str]):
        self.argv = argv
        self.lines: list[str] = []
        self.subscribed = False
        self.alive = threading.Event()  # its first line: imports done, it is connecting
        self.ready = threading.Event()  # subscribed, or exited

    def start(self, timeout_s: float = 60.0, startup_s: float = 300.0) -> None:
        """Wait up to `startup_s` for the process to come up (imports take a while on a busy
        machine), then `timeout_s` for the subscription; on failure, stop it and raise with
        its last lines, which name the cause (a stop before it had tried would name none)."""
        print(f"\n=== subscriber (central server)\n$ {' '.join(shlex.quote(a) for a in self.argv)}",
              flush=True)
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1)
        self.reader = threading.Thread(target=self._echo, daemon=True)
        self.reader.start()
        self.alive.wait(startup_s)
        if not (self.ready.wait(timeout_s) and self.subscribed):
            self.stop()
            raise UserError("demo: the subscriber did not subscribe within "
                            f"{timeout_s:.0f} s:\n{''.join(self.lines[-10:])}")

    def _echo(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            self.alive.set()
            if "subscribed to" in line:
                self.subscribed = True
                self.ready.set()
            print(f"  [subscriber] {line}", end="", flush=True)
        self.alive.set()
        self.ready.set()  # it exited: start() need not wait out its timeout

    def stop(self) -> int:
        """SIGTERM (a clean shutdown: counts logged, database closed); the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.reader.join(timeout=5)
        return code


def stored_detections(db: Path) -> list[dict]:
    """Every detection the subscriber stored (the messages as received) from its SQLite file."""
    import sqlite3

    with closing(sqlite3.connect(db)) as con:
        return [json.loads(p) for (p,) in con.execute("SELECT payload FROM detections")]


def subscriber_duplicates(lines: list[str]) -> int | None:
    """From the subscriber's closing line ('subscriber stopped: received …, duplicates D, …')."""
    for line in reversed(lines):
        if m := re.search(r"subscriber stopped: .*?duplicates (\d+)", line):
            return int(m[1])
    return None


def _iso_to_s(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meerkit demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_demo(args)


def run_demo(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    meerkit, edge = _cmd("meerkit"), _cmd("edge-runtime")
    data, pre = out / "synth", out / "pretrain"
    distilled, labels_only = out / "student_distilled.pt", out / "student_labels_only.pt"
    int8 = out / "student_int8.tflite"
    common = ["--preset", "tiny", "--clip-s", "2", "--batch-size", "16", "--data", str(data)]

    stage("1/7 synthesise a benchmark", [meerkit, "synth", str(data), "--preset", "demo",
                                         "--seed", "0", "--force"], skip_if=data / "synth.json")
    stage("2/7 pretrain the teacher (data2vec)",
          [meerkit, "train", "pretrain", *common, "--out", str(pre),
           "--steps", str(args.pretrain_steps)], skip_if=pre / "model.pt")
    # Two teachers: the designed path (pretrained init + metadata heads) and focal loss from
    # scratch. At CPU scale pretraining does not help yet (benchmarks/RESULTS.md), so the
    # demo shows both and distils from the better one on val.
    candidates = {"pretrained + metadata heads": (out / "finetune_pretrained",
                                                  ["--init", str(pre / "model.pt"),
                                                   "--meta", "default"]),
                  "from scratch": (out / "finetune_scratch", [])}
    scores: dict[str, dict[str, float]] = {}
    stages_side_by_side([
        (f"3/7 finetune a teacher: {name} (focal loss)", name,
         [meerkit, "train", "finetune", *common, "--out", str(run_dir), *extra,
          "--steps", str(args.finetune_steps)], run_dir / "model.pt")
        for name, (run_dir, extra) in candidates.items()])
    for name, (run_dir, _) in candidates.items():
        # Finetuning kept the best model on val and recorded its score; test is scored here.
        stage(f"3b  evaluate the teacher ({name}) on test",
              [meerkit, "train", "evaluate", "--model", str(run_dir / "model.pt"), "--data",
               str(data), "--split", "test", "--clip-s", "2"],
              skip_if=run_dir / "eval_test.json")
        scores[name] = {"val": model_val_ap(run_dir / "model.pt"),
                        "test": json.loads((run_dir / "eval_test.json").read_text())
                        ["frame_ap"]["macro"]}
    chosen = max(scores, key=lambda name: scores[name]["val"])
    ft = candidates[chosen][0]
    print(f"\n=== teacher for distillation: {chosen} (val macro AP "
          f"{scores[chosen]['val']:.3f}; "
          + ", ".join(f"{n} {v['val']:.3f}" for n, v in scores.items() if n != chosen) + ")",
          flush=True)
    stages_side_by_side([
        ("4/7 distil a student (teacher + labels, augmented audio)", "distilled",
         [meerkit, "export", "distill", "--teacher", str(ft / "model.pt"), "--data", str(data),
          "--out", str(distilled), "--steps", str(args.distill_steps), "--threads", "1"],
         distilled),
        ("4b  the baseline a user would pick instead: the same student on labels alone",
         "labels only", [meerkit, "export", "distill", "--labels-only", "--data", str(data),
          "--out", str(labels_only), "--steps", str(args.distill_steps), "--threads", "1"],
         labels_only)])
    # Ship the better student on val. With a weak CPU-trained teacher the label-only student
    # can win; the table below shows both, so a failing path is never hidden.
    students = {"distilled": distilled, "labels only": labels_only}
    student_val = {name: model_val_ap(path) for name, path in students.items()}
    shipped = max(student_val, key=lambda name: student_val[name])
    other = next(name for name in students if name != shipped)
    print(f"\n=== student to ship: {shipped} (val macro AP {student_val[shipped]:.3f}; "
          f"{other} {student_val[other]:.3f})", flush=True)
    stage("5/7 quantize to int8 and verify",
          [meerkit, "export", "quantize", "--checkpoint", str(students[shipped]),
           "--calibration", str(data), "--out", str(int8), "--force"], skip_if=int8)
    stage("5b  score int8, fp32, teacher and the other student on test",
          [meerkit, "export", "verify", str(int8), "--data", str(data), "--split", "test",
           "--teacher", str(ft / "model.pt"), "--baseline", str(students[other])])

    with tempfile.TemporaryDirectory() as tmp:
        broker, host, port = start_mosquitto(Path(tmp))
        try:
            stream = out / "test_stream.wav"
            offsets, _ = concat_split(data, "test", stream)
            db = out / "detections.sqlite"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
            subscriber = SubscriberProcess(
                [meerkit, "subscribe", "--mqtt-host", host, "--mqtt-port", str(port), "--db",
                 f"sqlite:///{db}", "--print", "--mqtt-client-id", "meerkit-demo-server"])
            subscriber.start()
            start_time = "2025-06-01T04:00:00Z"
            outbox = out / "outbox.sqlite"
            outbox.unlink(missing_ok=True)
            try:
                lines = stage("6/7 stream the test split through edge-runtime -> MQTT",
                              [edge, "--model", str(int8), "--input", str(stream),
                               "--device-id", "demo-pi", "--mqtt-host", host, "--mqtt-port",
                               str(port), "--outbox-path", str(outbox),
                               "--audio-start-time", start_time],
                              quiet_lines="edge_runtime: detected")
                time.sleep(1.0)  # the last PUBACKed messages are still on their way to the server
            finally:
                subscriber.stop()
        finally:
            if broker is not None:
                broker.terminate()
                broker.wait(timeout=5)

    received = stored_detections(db)
    stats = runtime_summary(lines)
    verify_json = int8.with_name(int8.stem + "_verify_test.json")
    verify = json.loads(verify_json.read_text()) if verify_json.is_file() else {}
    t0 = _iso_to_s(start_time)
    # Show the test recording with the most annotated calls.
    from train.data.dataset import Dataset

    annotated = Dataset(data)
    index = max(range(len(offsets)), key=lambda i: len(annotated.annotations(offsets[i][0])))
    file, offset = offsets[index]
    detections = [{"label": d["label"], "confidence": d["confidence"]["max"],
                   "start_s": _iso_to_s(d["start"]) - t0, "end_s": _iso_to_s(d["end"]) - t0}
                  for d in received]
    clip_len = offsets[index + 1][1] - offset if index + 1 < len(offsets) else 1e9
    on_clip = [dict(d, start_s=d["start_s"] - offset, end_s=d["end_s"] - offset) for d in detections
               if offset <= d["start_s"] < offset + clip_len]
    png = out / "demo_clip.png"
    plot_demo_clip(data, file, on_clip, 0.0, png)

    published = stats.get("published")
    print("\n=== 7/7 summary (test split; events decoded with each model's val-tuned decoder)")
    print(quality_table(verify, chosen, shipped, other))
    rows = [
        *((f"teacher macro AP (val / test): {name}{' (distilled)' if name == chosen else ''}",
           f"{v['val']:.3f} / {v['test']:.3f}") for name, v in scores.items()),
        ("teacher size", f"{(ft / 'model.pt').stat().st_size / 1e6:.2f} MB (.pt)"),
        ("int8 student size", f"{int8.stat().st_size / 1e3:.0f} kB (.tflite)"),
        ("edge real-time factor", f"{stats.get('real_time_factor', float('nan')):.4f}"),
        ("detections published", str(published)),
        ("detections received (stored by the subscriber)", str(len(received))),
        ("duplicates dropped by the subscriber", str(subscriber_duplicates(subscriber.lines))),
        ("demo wall time", f"{(time.perf_counter() - t_start) / 60:.1f} min"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    print(f"  spectrogram with ground truth and detections: {png}")
    print(f"  detections stored in: {db}")
    if published is not None and int(published) != len(received):
        print("demo: published and received counts differ", file=sys.stderr)
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="run the whole pipeline end to end",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run_demo)


def add_arguments(p: argparse.ArgumentParser) -> None:
    # Sized for <= 20 min on 2 idle cores from nothing (README: measured time).
    p.add_argument("--out", type=Path, default=Path("demo_out"),
                   help="work folder; stages whose output exists are skipped on a rerun")
    p.add_argument("--pretrain-steps", type=int, default=600, help="data2vec steps")
    p.add_argument("--finetune-steps", type=int, default=1200, help="steps per teacher")
    p.add_argument("--distill-steps", type=int, default=1200, help="steps per student")


if __name__ == "__main__":
    sys.exit(main())
