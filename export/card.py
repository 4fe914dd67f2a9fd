"""Embed a model card into artifacts: a TFLite `Model.metadata` entry or ONNX metadata_props,
both under `CARD_KEY` (read back by `edge_runtime.contract.card.read_card`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_runtime.contract.card import CARD_KEY, ModelCard


def _schema():
    try:  # ships with ai-edge-litert, which the export extra installs
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # pragma: no cover - older images
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


def embed_card_tflite(model_bytes: bytes, card: ModelCard) -> bytes:
    """Return the TFLite flatbuffer with the card as metadata (replacing an older card)."""
    import flatbuffers

    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(card.to_json().encode("utf-8"), dtype=np.uint8)
    model.buffers = list(model.buffers or []) + [buffer]
    entry = schema.MetadataT()
    entry.name = CARD_KEY
    entry.buffer = len(model.buffers) - 1
    kept = [m for m in (model.metadata or []) if _name(m) != CARD_KEY]
    model.metadata = kept + [entry]
    builder = flatbuffers.Builder(len(model_bytes) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _name(entry) -> str:
    name = entry.name
    return name.decode() if isinstance(name, bytes) else str(name)


def write_tflite_with_card(path: Path, model_bytes: bytes, card: ModelCard) -> None:
    Path(path).write_bytes(embed_card_tflite(model_bytes, card))


def embed_card_onnx(onnx_model, card: ModelCard) -> None:
    """Set (or replace) the card in an `onnx.ModelProto`'s metadata_props, in place."""
    props = [p for p in onnx_model.metadata_props if p.key != CARD_KEY]
    del onnx_model.metadata_props[:]
    onnx_model.metadata_props.extend(props)
    entry = onnx_model.metadata_props.add()
    entry.key, entry.value = CARD_KEY, card.to_json()


def read_card_onnx(path: Path) -> ModelCard:
    import onnx

    from edge_runtime.contract.errors import UserError

    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == CARD_KEY:
            return ModelCard.from_json(prop.value, f"{path} (embedded card)")
    raise UserError(f"{path}: ONNX model has no '{CARD_KEY}' metadata")
