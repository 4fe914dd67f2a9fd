"""PyTorch -> ONNX: the dynamo exporter at opset 20 (GELU stays a native op; at <= 18 it
becomes FlexErf after onnx2tf), static shapes (batch 1, one window), one self-contained file
with the model card in its metadata_props."""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from edge_runtime.contract.card import ModelCard
from edge_runtime.contract.errors import UserError
from export.card import embed_card_onnx
from export.source import Source

log = logging.getLogger(__name__)

OPSET = 20


def to_onnx_model(source: Source):
    """The `onnx.ModelProto` of the source's exported module (weights inline, no card yet)."""
    import onnx

    quiet = [logging.getLogger(n) for n in ("onnx_ir", "onnxscript", "torch.onnx")]
    levels = [q.level for q in quiet]
    with tempfile.TemporaryDirectory(prefix="meerkit-onnx-") as tmp, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()):
        # The exporter narrates every pass (prints and INFO logs): keep the CLI readable.
        warnings.simplefilter("ignore")
        for q in quiet:
            q.setLevel(logging.WARNING)
        path = Path(tmp) / "model.onnx"
        try:
            program = torch.onnx.export(source.exported.eval(), (source.example_input(),),
                                        dynamo=True, opset_version=OPSET,
                                        input_names=[source.input_name],
                                        output_names=["logits"], verbose=False)
        except Exception as err:  # the exporter raises many types; name the model
            raise UserError(f"{source.path}: ONNX export failed ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''})") from None
        finally:
            for q, level in zip(quiet, levels, strict=True):
                q.setLevel(level)
        program.save(str(path))
        return onnx.load(str(path), load_external_data=True)


def write_onnx(model, card: ModelCard, out: Path) -> Path:
    import onnx

    embed_card_onnx(model, card)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".onnx.tmp")
    onnx.save(model, str(tmp), save_as_external_data=False)
    tmp.replace(out)
    return out


def check_against_torch(path: Path, source: Source, rtol: float = 1e-4,
                        n: int = 3) -> float:
    """Relative max |onnx - torch| over a few example inputs; UserError beyond rtol."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for seed in range(n):
        torch.manual_seed(seed)
        x = source.example_input()
        with torch.no_grad():
            want = source.exported(x).numpy()
        got = session.run(None, {source.input_name: x.numpy()})[0]
        worst = max(worst, float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-6)))
    if worst > rtol:
        raise UserError(f"{path}: ONNX Runtime output differs from PyTorch by {worst:.2e} "
                        f"(relative, allowed {rtol:g}); the artifact was not kept")
    return worst


def export_onnx(checkpoint: Path, out: Path, window_s: float | None = None,
                hop_s: float | None = None, rtol: float | None = None) -> tuple[Path, ModelCard]:
    """Checkpoint (student or teacher) -> `.onnx` with its card, checked against PyTorch."""
    from export.source import load_source

    source = load_source(checkpoint, window_s, hop_s)
    model = to_onnx_model(source)
    with tempfile.TemporaryDirectory(prefix="meerkit-onnx-") as tmp:
        candidate = write_onnx(model, source.card, Path(tmp) / "candidate.onnx")
        limit = rtol if rtol is not None else source.fp32_tolerance
        diff = check_against_torch(candidate, source, limit)
        log.info("ONNX Runtime vs PyTorch: max relative difference %.2e", diff)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(candidate, out)
    return Path(out), source.card
