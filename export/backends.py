"""One window function per backend -- PyTorch, ONNX Runtime, TFLite -- all with the contract of
`edge_runtime.contract.windows`: audio windows (batch, samples) float32 -> frame logits (batch, frames,
classes). Log-mel artifacts get their features from the numpy front end, exactly as the field
runtime computes them. Whole files are stitched with `edge_runtime.contract.windows.track`, so every
backend sees the same windows and keeps the same frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from edge_runtime.contract.card import ModelCard
from edge_runtime.contract.errors import UserError
from edge_runtime.contract.frontend import logmel
from edge_runtime.contract.windows import WindowFn, WindowGeometry, track


def geometry_for(sample_rate: int, window_s: float, hop_s: float, frame_rate_hz: float
                 ) -> WindowGeometry:
    return WindowGeometry(window=round(window_s * sample_rate), hop=round(hop_s * sample_rate),
                          frames=round(window_s * frame_rate_hz),
                          hop_frames=round(hop_s * frame_rate_hz), sample_rate=sample_rate)


def geometry(card: ModelCard) -> WindowGeometry:
    return geometry_for(card.sample_rate, card.window_s, card.hop_s, card.frame_rate_hz)


def features(card: ModelCard, audio: np.ndarray) -> np.ndarray:
    """The artifact's input for audio windows: raw samples or numpy log-mel."""
    audio = np.asarray(audio, dtype=np.float32)
    if card.frontend.kind == "logmel":
        return logmel(audio, card.frontend, card.sample_rate)
    return audio


def torch_window_fn(audio_model: torch.nn.Module) -> WindowFn:
    """A PyTorch audio -> logits model (float32, CPU)."""

    @torch.no_grad()
    def run(windows: np.ndarray) -> np.ndarray:
        return audio_model(torch.from_numpy(np.asarray(windows, np.float32))).float().numpy()

    return run


def torch_student_window_fn(backbone: torch.nn.Module, card_or_spec) -> WindowFn:
    """Numpy log-mel (the runtime's front end) -> PyTorch backbone: the fp32 reference that
    an artifact of this student is compared with (the torch mirror of the front end is held
    to the numpy one by a test, so this isolates what conversion did to the backbone)."""

    @torch.no_grad()
    def run(windows: np.ndarray) -> np.ndarray:
        x = logmel(np.asarray(windows, np.float32), card_or_spec.frontend,
                   card_or_spec.sample_rate)
        return backbone(torch.from_numpy(x)).float().numpy()

    return run


def _per_window(invoke, card: ModelCard) -> WindowFn:
    """Static batch-1 artifacts: run the window batch one at a time."""

    def run(windows: np.ndarray) -> np.ndarray:
        x = features(card, windows)
        return np.stack([invoke(x[i : i + 1])[0] for i in range(len(x))])

    return run


def onnx_window_fn(path: str | Path, card: ModelCard, threads: int = 1) -> WindowFn:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return _per_window(lambda x: session.run(None, {name: x})[0], card)


class TFLiteRunner:
    """Interpreter on card-less bytes (a conversion result before its card is embedded): one
    float input, one float output, static shapes. Carded artifacts run through
    `edge_runtime.contract.model.TFLiteModel`, as on the device."""

    def __init__(self, model: str | Path | bytes, threads: int = 1):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # pragma: no cover - old images
            from tflite_runtime.interpreter import Interpreter
        where = "<bytes>" if isinstance(model, bytes) else str(model)
        try:
            if isinstance(model, bytes):
                self.interpreter = Interpreter(model_content=model, num_threads=threads)
            else:
                self.interpreter = Interpreter(model_path=str(model), num_threads=threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise UserError(f"{where}: the TFLite interpreter cannot load it ({err})") from None
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.input["shape"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input["index"], np.asarray(x, self.input["dtype"]))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"]).astype(np.float32)


def tflite_window_fn(path: str | Path, card: ModelCard, threads: int = 1) -> WindowFn:
    """Through the field runtime's own `TFLiteModel` (card checks, numpy front end, interpreter
    call), returning logits rather than its probabilities."""
    from edge_runtime.contract.model import TFLiteModel

    model = TFLiteModel(path, threads)

    def run(windows: np.ndarray) -> np.ndarray:
        x = model.features(windows)
        return np.stack([model.invoke(x[i : i + 1])[0] for i in range(len(x))])

    return run


def artifact_window_fn(path: str | Path, card: ModelCard, threads: int = 1) -> WindowFn:
    suffix = Path(path).suffix
    if suffix == ".onnx":
        return onnx_window_fn(path, card, threads)
    if suffix == ".tflite":
        return tflite_window_fn(path, card, threads)
    raise UserError(f"{path}: unknown artifact type {suffix!r} (expected .tflite or .onnx)")


def track_files(window_fn: WindowFn, geometry: WindowGeometry, dataset, files: Sequence[str],
                progress: bool = False, desc: str = "") -> dict[str, np.ndarray]:
    """Stitched frame logits (frames, classes) per file."""
    from tqdm import tqdm

    out = {}
    for file in tqdm(files, desc=desc, disable=not progress, leave=False):
        audio, _ = dataset.load(file)
        out[file] = track(audio, geometry, window_fn)
    return out


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))).astype(np.float32)
