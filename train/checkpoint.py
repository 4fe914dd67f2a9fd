"""The model file every later stage reads (`model.pt`): architecture spec, weights, label
list and provenance, loadable with `torch.load(weights_only=True)` (no pickled classes)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from edge_runtime.contract.errors import UserError
from train.engine import load_checkpoint, save_checkpoint
from train.model.animal2vec import Animal2Vec

FORMAT = "meerkit-animal2vec"
VERSION = 1


def save_model(path: Path, model: Animal2Vec, labels: list[str], stage: str,
               extra: dict[str, Any] | None = None) -> None:
    save_checkpoint(Path(path), {
        "format": FORMAT, "version": VERSION, "stage": stage, "spec": model.spec(),
        "labels": list(labels), "state": model.state_dict(), "extra": extra or {},
    })


def load_model(path: str | Path, map_location: str | torch.device = "cpu"
               ) -> tuple[Animal2Vec, dict[str, Any]]:
    """(model in eval mode, the whole record). Refuses files that are not meerkit models."""
    record = load_checkpoint(path)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise UserError(f"{path}: not a meerkit model file (a resume checkpoint `last.pt`? "
                        "use the `model.pt` a training run writes)")
    if record.get("version", 0) > VERSION:
        raise UserError(f"{path}: written by a newer meerkit (format version {record['version']})")
    model = Animal2Vec.from_spec(record["spec"])
    try:
        model.load_state_dict(record["state"])
    except RuntimeError as err:
        raise UserError(f"{path}: weights do not match the stored architecture ({err})") from None
    return model.to(map_location).eval(), record


def weights_sha256(model: torch.nn.Module) -> str:
    """Hash of the weights in a fixed order: identifies a teacher in model cards."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
