"""ONNX -> TFLite with onnx2tf, run as a subprocess in a temporary folder (removed afterwards):
its TensorFlow session, logging and crashes stay out of our process.

Precisions: fp32; fp16 (fp16 weights, float compute); dynamic (int8 weights, float
activations); int8 (full-integer backbone with per-channel weights and float input/output,
calibrated on real data; `export/quantize.py`). A model with any `Flex*` op is refused: no
edge interpreter runs TensorFlow kernels.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from edge_runtime.contract.card import ModelCard, Quantization
from edge_runtime.contract.errors import UserError
from export.card import embed_card_tflite
from export.source import Source

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "dynamic", "int8")
QUANTIZATION_MODE = {"fp32": "none", "fp16": "fp16", "dynamic": "dynamic", "int8": "int8"}
_OUTPUT_SUFFIX = {"fp32": "_float32", "fp16": "_float16", "dynamic": "_dynamic_range_quant",
                  "int8": "_full_integer_quant"}
TEACHER_INT8 = ("the transformer teacher does not survive full int8 quantization (its "
                "LayerNorm/GroupNorm statistics: measured correlation 0.41 with fp32); export it "
                "with `meerkit export tflite --precision dynamic` (or fp16), or distil a student "
                "and quantize that")


def operators(model_bytes: bytes) -> list[str]:
    """Operator names of a TFLite flatbuffer (builtin names, custom codes as they are)."""
    from export.card import _schema

    schema = _schema()
    model = schema.Model.GetRootAsModel(bytearray(model_bytes), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    out = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        custom = code.CustomCode()
        if custom:
            out.append(custom.decode())
            continue
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        out.append(names.get(builtin, f"BUILTIN_{builtin}"))
    return out


def check_operators(model_bytes: bytes, where: str) -> list[str]:
    ops = operators(model_bytes)
    flex = sorted({op for op in ops if op.startswith("Flex")})
    if flex:
        raise UserError(f"{where}: the converted model needs TensorFlow ops no edge interpreter "
                        f"has ({', '.join(flex)}); change the layers that produce them")
    return ops


def run_onnx2tf(onnx_path: Path, workdir: Path, precision: str, input_name: str,
                keep_shape: bool, calibration: Path | None = None) -> bytes:
    """Convert with the onnx2tf CLI; returns the TFLite bytes of the requested precision."""
    out = workdir / "tf"
    args = [sys.executable, "-m", "onnx2tf", "-i", str(onnx_path), "-o", str(out), "-n"]
    if keep_shape:  # a 3-D (batch, frames, mels) input would be taken as NCW and transposed
        args += ["-kat", input_name]
    if precision == "dynamic":
        args += ["-odrqt"]
    elif precision == "int8":
        if calibration is None:
            raise ValueError("int8 conversion needs calibration data")
        # Calibration features are normalised already: mean 0, std 1 here.
        args += ["-oiqt", "-qt", "per-channel", "-cind", input_name, str(calibration), "[0.0]",
                 "[1.0]", "-iqd", "float32", "-oqd", "float32"]
    env = dict(os.environ)
    # onnx2tf calls the `onnxsim` executable: make the environment's scripts findable.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("CUDA_VISIBLE_DEVICES", "")
    done = subprocess.run(args, cwd=workdir, env=env, capture_output=True, text=True)
    result = out / f"{onnx_path.stem}{_OUTPUT_SUFFIX[precision]}.tflite"
    if done.returncode != 0 or not result.is_file():
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise UserError(f"onnx2tf could not convert {onnx_path.name} to {precision} TFLite "
                        f"(exit {done.returncode}):\n{tail}")
    return result.read_bytes()


def convert(source: Source, precision: str, calibration: np.ndarray | None = None) -> bytes:
    """Source -> TFLite bytes (no card), Flex-free, via ONNX in a temporary folder."""
    from export.onnx import to_onnx_model

    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
    if precision == "int8" and source.kind == "teacher":
        raise UserError(f"{source.path}: {TEACHER_INT8}")
    import onnx

    model = to_onnx_model(source)
    with tempfile.TemporaryDirectory(prefix="meerkit-tflite-") as tmp:
        work = Path(tmp)
        onnx_path = work / "model.onnx"
        onnx.save(model, str(onnx_path), save_as_external_data=False)
        calib_path = None
        if calibration is not None:
            calib_path = work / "calibration.npy"
            np.save(calib_path, np.asarray(calibration, np.float32))
        data = run_onnx2tf(onnx_path, work, precision, source.input_name,
                           keep_shape=len(source.input_shape) == 3, calibration=calib_path)
    check_operators(data, f"{source.path} ({precision})")
    return data


def compare_with_torch(model_bytes: bytes, source: Source, n: int = 3
                       ) -> dict[str, float]:
    """Relative max difference and correlation of TFLite vs PyTorch logits on example inputs."""
    from export.backends import TFLiteRunner

    runner = TFLiteRunner(model_bytes)
    got, want = [], []
    for seed in range(n):
        torch.manual_seed(seed)
        x = source.example_input()
        with torch.no_grad():
            want.append(source.exported(x).numpy())
        got.append(runner(x.numpy()))
    got_a, want_a = np.concatenate(got), np.concatenate(want)
    return {"max_rel_diff": float(np.abs(got_a - want_a).max() / max(np.abs(want_a).max(), 1e-6)),
            "correlation": float(np.corrcoef(got_a.ravel(), want_a.ravel())[0, 1])}


def card_for(source: Source, precision: str, **quantization) -> ModelCard:
    import dataclasses

    return dataclasses.replace(source.card, quantization=Quantization(
        mode=QUANTIZATION_MODE[precision], **quantization))


def write_tflite(path: Path, model_bytes: bytes, card: ModelCard) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(embed_card_tflite(model_bytes, card))
    tmp.replace(path)
    return path


def export_tflite(checkpoint: Path, out: Path, precision: str = "fp32",
                  window_s: float | None = None, hop_s: float | None = None
                  ) -> tuple[Path, ModelCard, dict[str, float]]:
    """Checkpoint -> `.tflite` (fp32/fp16/dynamic) with its card, checked against PyTorch
    before it is written: fp32 to `Source.fp32_tolerance` relative (1e-4 for students),
    reduced precisions to correlation 0.99."""
    from export.source import load_source

    if precision == "int8":
        raise UserError("int8 needs calibration data: use `meerkit export quantize`")
    source = load_source(checkpoint, window_s, hop_s)
    data = convert(source, precision)
    check = compare_with_torch(data, source)
    log.info("TFLite %s vs PyTorch: max relative difference %.2e, correlation %.6f", precision,
             check["max_rel_diff"], check["correlation"])
    if ((precision == "fp32" and check["max_rel_diff"] > source.fp32_tolerance)
            or check["correlation"] < 0.99):
        raise UserError(f"{checkpoint}: the {precision} TFLite model does not reproduce PyTorch "
                        f"(relative difference {check['max_rel_diff']:.2e}, correlation "
                        f"{check['correlation']:.4f}); not written")
    return write_tflite(out, data, card_for(source, precision)), card_for(source, precision), check
