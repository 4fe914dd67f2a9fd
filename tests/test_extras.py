"""Each extra runs its own commands with nothing else installed: every command runs in a
subprocess where the top-level modules of every installed distribution outside the extra's
dependency closure (read from the installed metadata, so the lists follow pyproject.toml)
raise ModuleNotFoundError on import, as on a machine that ran only
`pip install 'meerkit[EXTRA]'`. Each extra's console commands answer --help and do one real
job: [server] stores a detection from the real broker, [edge] detects events in a WAV and a
folder, [train] writes a tiny synthetic dataset."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
from conftest import REPO, burst_audio, regular_bursts

from edge_runtime.contract.wav import write_wav

pytest.importorskip("packaging.requirements")

OWN_PACKAGES = {"meerkit", "train", "export", "edge_runtime", "server", "benchmarks", "tests"}
# Runs the console script's entry point (read from the installed metadata, as the script
# does) after installing the import blocker. argv: BLOCKED_JSON SCRIPT ARGS...
BOOTSTRAP = """\
import json, sys
from importlib import metadata
BLOCKED = frozenset(json.loads(sys.argv[1]))
class BlockOtherExtras:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (not in this extra)", name=name)
sys.meta_path.insert(0, BlockOtherExtras())
script = sys.argv[2]
sys.argv = sys.argv[2:]
if script.startswith("-m"):  # python -m train / export
    import runpy
    sys.argv[0] = script[2:]
    runpy.run_module(script[2:], run_name="__main__", alter_sys=True)
else:
    (entry,) = metadata.entry_points(group="console_scripts", name=script)
    sys.exit(entry.load()())
"""


def own_requirements() -> list[str]:
    """meerkit's requirements as pyproject.toml states them now (the installed metadata lags
    behind an edit until the next `pip install -e .`), in Requires-Dist form."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the installed metadata
        return metadata.requires("meerkit") or []
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"],
            *(f'{req}; extra == "{extra}"'
              for extra, reqs in project["optional-dependencies"].items() for req in reqs)]


@cache
def closure(extras: tuple[str, ...]) -> frozenset[str]:
    """Canonical names of the installed distributions `pip install 'meerkit[extras]'` needs."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: dict[str, set[str]] = {}
    todo = [("meerkit", set(extras))]
    while todo:
        name, wanted = todo.pop()
        key = canonicalize_name(name)
        try:
            requires = own_requirements() if key == "meerkit" else metadata.requires(name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency this environment lacks
        if key in seen and wanted <= seen[key]:
            continue
        seen[key] = seen.get(key, set()) | wanted
        for req in map(Requirement, requires or []):
            if req.marker is None or any(req.marker.evaluate({"extra": e})
                                         for e in (wanted or {""})):
                todo.append((req.name, set(req.extras)))
    return frozenset(seen)


@cache
def blocked(extras: tuple[str, ...]) -> frozenset[str]:
    """Top-level modules of installed distributions outside the closure of `extras`."""
    from packaging.utils import canonicalize_name

    allowed = closure(extras)
    return frozenset(
        module for module, dists in metadata.packages_distributions().items()
        if module not in OWN_PACKAGES and module not in sys.stdlib_module_names
        and not module.startswith("_")
        and not any(canonicalize_name(d) in allowed for d in dists))


def command(extras: tuple[str, ...], script: str, *args: str) -> list[str]:
    return [sys.executable, "-c", BOOTSTRAP, json.dumps(sorted(blocked(extras))), script, *args]


def run(extras: tuple[str, ...], script: str, *args: str,
        timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(command(extras, script, *args), capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


def test_the_blocked_lists_follow_the_extras():
    installed = set(metadata.packages_distributions())

    def must_block(*modules: str) -> set[str]:
        return set(modules) & installed

    assert must_block("torch", "tensorflow", "soundfile", "ai_edge_litert", "onnx", "matplotlib",
                      "tqdm", "pyarrow", "scipy", "pyaudio") <= blocked(("server",))
    assert must_block("torch", "tensorflow", "onnx", "psycopg", "jsonschema", "matplotlib",
                      "soundfile", "pyarrow") <= blocked(("edge",))
    assert must_block("tensorflow", "onnx", "onnx2tf", "ai_edge_litert", "paho",
                      "psycopg") <= blocked(("train",))
    assert must_block("paho", "psycopg", "pyarrow") <= blocked(("train", "export"))
    assert "paho" not in blocked(("server",)) and "torch" not in blocked(("train",))


HELP = [
    (("server",), "meerkit", "--help"),
    (("server",), "meerkit", "--version"),
    (("server",), "meerkit", "subscribe", "--help"),
    (("edge",), "edge-runtime", "--help"),
    (("edge",), "meerkit", "analyze", "--help"),
    (("analyze",), "meerkit", "analyze", "--help"),
    (("train",), "meerkit", "synth", "--help"),
    (("train",), "meerkit", "data", "validate", "--help"),
    (("train",), "meerkit", "train", "pretrain", "--help"),
    (("train",), "-mtrain", "finetune", "--help"),
    (("train", "export"), "meerkit", "export", "quantize", "--help"),
    (("train", "export"), "-mexport", "verify", "--help"),
]


@pytest.mark.parametrize("extras,script,args", [(e, s, a) for e, s, *a in HELP],
                         ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_each_extra_answers_help_for_its_commands(extras, script, args):
    done = run(extras, script, *args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(("usage:", "meerkit ")) and not done.stderr


def test_a_command_of_a_missing_extra_says_which_extra_in_one_line():
    done = run(("server",), "meerkit", "data", "--help")
    assert done.returncode == 2
    assert done.stderr.startswith("meerkit data needs the [train] extra: "
                                  "pip install 'meerkit[train]'")
    assert len(done.stderr.strip().splitlines()) == 1 and not done.stdout


# ------------------------------------------------------------------------- real jobs
def test_server_extra_stores_a_detection_from_the_broker(broker, tmp_path):
    from paho.mqtt import client as mqtt

    db = tmp_path / "d.sqlite"
    proc = subprocess.Popen(
        command(("server",), "meerkit", "subscribe", "--mqtt-host", "127.0.0.1",
                "--mqtt-port", str(broker.port), "--db", f"sqlite:///{db}", "--print", "json",
                "--max-messages", "1", "--timeout", "60"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    lines: list[str] = []
    ready = threading.Event()

    def read_stderr() -> None:
        for line in proc.stderr:
            lines.append(line)
            if "subscribed to" in line:
                ready.set()
        ready.set()

    threading.Thread(target=read_stderr, daemon=True).start()
    try:
        assert ready.wait(60) and proc.poll() is None, "".join(lines)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="extras-test")
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        client.publish("meerkit/rec-1/detections", json.dumps(DETECTION), qos=1
                       ).wait_for_publish(10)
        client.disconnect()
        client.loop_stop()
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, "".join(lines)
    assert json.loads(out.splitlines()[0])["event_id"] == DETECTION["event_id"]


DETECTION = {"schema": 1, "event_id": "0123456789abcdef", "device_id": "rec-1",
             "model": {"name": "energy-test", "version": "1", "sha256": "ab" * 32},
             "label": "loud", "confidence": {"max": 0.9, "mean": 0.75},
             "start": "2025-06-01T04:00:00.000Z", "end": "2025-06-01T04:00:00.250Z",
             "duration_s": 0.25, "published_at": "2025-06-01T04:00:01.000Z"}


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("recordings")
    write_wav(folder / "20250601_053000.WAV", burst_audio(3.0, regular_bursts(3.0)), 16000)
    return folder


def test_edge_extra_runs_edge_runtime_on_a_wav(energy_model, recordings):
    done = run(("edge",), "edge-runtime", "--no-mqtt", "--start-time", "2024-01-01T00:00:00Z",
               "--model", str(energy_model), "--input", str(recordings / "20250601_053000.WAV"))
    assert done.returncode == 0, done.stderr
    labels = [json.loads(line)["label"] for line in done.stdout.splitlines()
              if line.startswith("{")]
    assert labels.count("loud") == 3, done.stdout


@pytest.mark.parametrize("extras", [("edge",), ("analyze",)], ids=" ".join)
def test_edge_and_analyze_extras_analyze_a_folder(energy_model, recordings, tmp_path, extras):
    out = tmp_path / "out"
    done = run(extras, "meerkit", "analyze", str(recordings), "--model", str(energy_model),
               "--out", str(out), "--workers", "1", "--no-progress")
    assert done.returncode == 0, done.stderr
    rows = (out / "events.csv").read_text().splitlines()
    assert sum(",loud," in row for row in rows) == 3, rows


def test_train_extra_writes_a_tiny_synthetic_dataset(tmp_path):
    out = tmp_path / "synth"
    done = run(("train",), "meerkit", "synth", str(out), "--preset", "tiny", "--train", "2",
               "--val", "1", "--test", "1", "--shift", "1", "--pretrain", "0",
               "--clip-s", "2", "--workers", "1", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "synth.json").read_text())["config"]["n_train"] == 2
    assert (out / "annotations.csv").is_file()
