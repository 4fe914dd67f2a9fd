"""The model on the device: a `.tflite` artifact, its card, and one window function.

`TFLiteModel(path)` reads the card first (an artifact without one is refused, naming what is
missing), loads the interpreter (ai-edge-litert, else tflite-runtime, else tensorflow.lite —
imported dynamically so the device never needs tensorflow), checks that the interpreter's
input and output shapes are what the card promises, and exposes `window_fn(windows)`:
audio windows (batch, samples) -> frame probabilities (batch, frames, classes), the contract
of `edge_runtime.contract.windows`. Time spent inside `invoke()` is accumulated in `invoke_s`, so the
benchmark can compare end-to-end time with the bare interpreter.

The hot path allocates nothing but its small output: log-mel features go into a preallocated
array (from `StreamingLogMel`, which reuses the frames overlapping windows share when the
caller passes `starts`), are quantised straight into the interpreter's input tensor, and the
output tensor is dequantised (and passed through the sigmoid) in place. The arithmetic is
the same float32 expression, in the same order, as `_quantize_in`/`_dequantize_out`/`sigmoid`,
so the results are bit-identical to those.
"""

from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path

import numpy as np

from edge_runtime.contract.card import ModelCard, read_card
from edge_runtime.contract.errors import UserError
from edge_runtime.contract.quiet import quiet_stderr
from edge_runtime.contract.windows import WindowGeometry, WindowStarts

log = logging.getLogger(__name__)

# Preference order: ai-edge-litert runs everything the current converter emits, with numpy 2;
# tflite-runtime 2.14 is the fallback for old images; full tensorflow last.
INTERPRETER_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter",
                       "tensorflow.lite")


def interpreter_class() -> tuple[type, str]:
    """The first TFLite `Interpreter` class that imports, and its module name."""
    for name in INTERPRETER_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        return module.Interpreter, name
    raise UserError("no TFLite interpreter is installed: `pip install ai-edge-litert` "
                    "(or tflite-runtime on old images)")


def sigmoid(x: np.ndarray) -> np.ndarray:
    """float32 logistic; clipped so that exp cannot overflow."""
    x = np.clip(np.asarray(x, np.float32), -80.0, 80.0)
    return 1.0 / (1.0 + np.exp(-x))


def sigmoid_(x: np.ndarray) -> np.ndarray:
    """`sigmoid` in place on a float32 array, the same operations in the same order."""
    np.clip(x, -80.0, 80.0, out=x)
    np.negative(x, out=x)
    np.exp(x, out=x)
    np.add(1.0, x, out=x)
    np.divide(1.0, x, out=x)
    return x


def model_geometry(card: ModelCard, hop_s: float = 0.0, lookahead_s: float | None = None
                   ) -> WindowGeometry:
    """Window geometry from the card; `hop_s` > 0 overrides the card's hop (device profiles
    trade latency for CPU with it). The hop must be a whole number of output frames.
    `lookahead_s` (None: centred) is the right context every frame gets before it is final:
    a frame is then published hop + lookahead after it was heard, not (window + hop) / 2."""
    hop = hop_s or card.hop_s
    if not 0 < hop <= card.window_s:
        raise UserError(f"model.hop_s {hop} must be in (0, window {card.window_s} s]")
    frames, hop_frames = card.frames_per_window, round(hop * card.frame_rate_hz)
    lead = None
    if lookahead_s is not None:
        lead = frames - hop_frames - round(lookahead_s * card.frame_rate_hz)
        if lookahead_s < 0 or lead < 0:
            raise UserError(f"model.lookahead_s {lookahead_s:g} must be in [0, window - hop = "
                            f"{card.window_s - hop:g} s]")
    try:
        return WindowGeometry(card.window_samples, round(hop * card.sample_rate), frames,
                              hop_frames, card.sample_rate, lead)
    except ValueError:
        raise UserError(f"model.hop_s {hop} is not a whole number of output frames "
                        f"(1/{card.frame_rate_hz:g} s each) for this model") from None


class TFLiteModel:
    """A carded TFLite artifact with a window function."""

    def __init__(self, path: str | Path, threads: int = 1):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: model file not found")
        if self.path.suffix == ".onnx":
            raise UserError(f"{self.path}: the device runs TFLite only; export a .tflite "
                            "(`meerkit export tflite`)")
        self.card = read_card(self.path)  # refuses card-less or non-TFLite files first
        cls, self.backend = interpreter_class()
        try:
            with quiet_stderr():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
                self.interpreter = cls(model_path=str(self.path), num_threads=threads)
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise UserError(f"{self.path}: the TFLite interpreter ({self.backend}) cannot load "
                            f"it: {err}") from None
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise UserError(f"{self.path}: expected one input and one output tensor, found "
                            f"{len(inputs)} and {len(outputs)}")
        self._in, self._out = inputs[0], outputs[0]
        self.threads = threads
        self.invoke_s = 0.0  # accumulated time inside interpreter.invoke()
        self.invokes = 0
        self.frontend_s = 0.0  # accumulated numpy log-mel time (log-mel artifacts only)
        self._check_shapes()
        self._logmel = None
        if self.card.frontend.kind == "logmel":
            # Imported only for log-mel artifacts; it is numpy, but waveform models skip it.
            frontend = importlib.import_module("edge_runtime.contract.frontend")
            self._logmel = frontend.StreamingLogMel(self.card.frontend, self.card.sample_rate,
                                                    self.card.window_samples)
        self._features = np.zeros((1, *self.expected_input_shape()[1:]), np.float32)
        self._scratch = np.zeros(self.expected_input_shape()[1:], np.float32)

    # ------------------------------------------------------------------ checks
    def expected_input_shape(self) -> tuple[int, ...]:
        c = self.card
        if c.frontend.kind == "logmel":
            return (1, c.window_samples // c.frontend.hop_length, c.frontend.n_mels)
        return (1, c.window_samples)

    def _check_shapes(self) -> None:
        c = self.card
        got_in = tuple(int(d) for d in self._in["shape"])
        want_in = self.expected_input_shape()
        if got_in != want_in:
            what = ("(1, frames, n_mels) log-mel features" if c.frontend.kind == "logmel"
                    else "(1, window samples)")
            raise UserError(f"{self.path}: interpreter input shape {got_in} does not match the "
                            f"card: expected {want_in} {what} for window_s={c.window_s} at "
                            f"{c.sample_rate} Hz")
        got_out = tuple(int(d) for d in self._out["shape"])
        want_out = (1, c.frames_per_window, len(c.labels))
        if got_out != want_out:
            raise UserError(f"{self.path}: interpreter output shape {got_out} does not match the "
                            f"card: expected {want_out} (1, frames per window, labels)")

    # ------------------------------------------------------------------ inference
    def features(self, windows: np.ndarray, starts: WindowStarts | None = None) -> np.ndarray:
        """The interpreter input for (batch, samples) audio: raw samples or log-mel (a fresh
        array; `window_fn` writes into its own buffer instead)."""
        return self._features_of(np.asarray(windows, np.float32), starts, out=None)

    def _features_of(self, windows: np.ndarray, starts: WindowStarts | None,
                     out: np.ndarray | None) -> np.ndarray:
        if self._logmel is None:
            return windows
        t0 = time.perf_counter()
        x = self._logmel(windows, starts, out)
        self.frontend_s += time.perf_counter() - t0
        return x

    def _quantize_in(self, x: np.ndarray) -> np.ndarray:
        dtype = self._in["dtype"]
        if dtype in (np.int8, np.uint8, np.int16):  # integer-input artifacts
            scale, zero = self._in["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale + zero), info.min, info.max)
        return np.asarray(x, dtype)  # no copy when it already is

    def _dequantize_out(self, y: np.ndarray) -> np.ndarray:
        if y.dtype in (np.int8, np.uint8, np.int16):
            scale, zero = self._out["quantization"]
            return (y.astype(np.float32) - zero) * scale
        return np.asarray(y, np.float32)

    def invoke(self, x: np.ndarray) -> np.ndarray:
        """One batch-1 interpreter call: input tensor -> output tensor (float32)."""
        self.interpreter.set_tensor(self._in["index"], self._quantize_in(x))
        t0 = time.perf_counter()
        self.interpreter.invoke()
        self.invoke_s += time.perf_counter() - t0
        self.invokes += 1
        return self._dequantize_out(self.interpreter.get_tensor(self._out["index"]))

    def _invoke_into(self, x: np.ndarray, out: np.ndarray) -> None:
        """`invoke` without copies: x (one window's input, float32) is quantised straight into
        the input tensor, the output tensor dequantised into `out` (float32)."""
        tensor = self.interpreter.tensor(self._in["index"])()[0]  # a view: drop it before invoke
        dtype = tensor.dtype
        if dtype in (np.int8, np.uint8, np.int16):
            scale, zero = self._in["quantization"]
            info, q = np.iinfo(dtype), self._scratch
            np.divide(x, scale, out=q)  # as _quantize_in: float32 x / scale + zero, rounded
            np.add(q, zero, out=q)
            np.rint(q, out=q)
            np.clip(q, info.min, info.max, out=q)
            tensor[...] = q
        else:
            tensor[...] = x
        del tensor
        t0 = time.perf_counter()
        self.interpreter.invoke()
        self.invoke_s += time.perf_counter() - t0
        self.invokes += 1
        y = self.interpreter.tensor(self._out["index"])()[0]
        if y.dtype in (np.int8, np.uint8, np.int16):
            scale, zero = self._out["quantization"]
            np.subtract(y, zero, out=out, dtype=np.float32)
            np.multiply(out, scale, out=out)
        else:
            out[...] = y
        del y

    def window_fn(self, windows: np.ndarray, starts: WindowStarts | None = None) -> np.ndarray:
        """(batch, window samples) float32 -> (batch, frames, classes) probabilities.
        `starts` (from `WindowedStream`) lets the front end reuse frames of earlier windows."""
        windows = np.asarray(windows, np.float32)
        n = len(windows)
        if self._logmel is not None and len(self._features) < n:
            self._features = np.zeros((n, *self._features.shape[1:]), np.float32)
        x = self._features_of(windows, starts, self._features)
        c = self.card
        y = np.empty((n, c.frames_per_window, len(c.labels)), np.float32)
        # Artifacts have static batch-1 shapes (the converter needs them); loop the batch.
        for i in range(n):
            self._invoke_into(x[i], y[i])
        if c.output == "logits":
            sigmoid_(y)
        return y

    def describe(self) -> str:
        c = self.card
        return (f"{c.name} {c.version} (sha256 {c.sha256[:12]}) via {self.backend}: "
                f"{c.window_s:g} s windows at {c.sample_rate} Hz, {c.frontend.kind} input "
                f"{self.expected_input_shape()}, {len(c.labels)} labels "
                f"({', '.join(c.labels)}), quantization {c.quantization.mode}, "
                f"{self.threads} thread(s)")
