"""The model card: everything the runtime needs to run an artifact correctly, travelling inside
it (TFLite metadata entry / ONNX metadata_props under `CARD_KEY`; a sidecar `<stem>.json` is
accepted). The runtime refuses an artifact without a complete card and says what is missing.

Reading TFLite metadata here is a ~40-line flatbuffer walk with `struct`, so the device needs
no flatbuffers/schema package; writing lives in `export/card.py`.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.contract.errors import UserError
from edge_runtime.contract.events import DecoderConfig
from edge_runtime.contract.settings import from_mapping

CARD_KEY = "meerkit_card"
CARD_SCHEMA = 1
QUANTIZATIONS = ("none", "fp16", "dynamic", "int8")
FRONTENDS = ("waveform", "logmel")


@dataclass(frozen=True)
class Frontend:
    """How audio becomes the model input. `waveform`: raw samples (batch, samples).
    `logmel`: the runtime computes log-mel features in numpy (edge_runtime/contract/frontend.py), bit
    for bit as in training: (batch, frames, n_mels), normalised by `mean`/`std`."""

    kind: str = "waveform"
    n_fft: int = 0
    win_length: int = 0
    hop_length: int = 0
    n_mels: int = 0
    fmin: float = 0.0
    fmax: float = 0.0
    log_offset: float = 1e-6
    center: bool = True
    mean: float = 0.0  # input normalisation: (x - mean) / std
    std: float = 1.0


@dataclass(frozen=True)
class Quantization:
    mode: str = "none"  # none | fp16 | dynamic | int8
    calibration_sha256: str = ""
    calibration_clips: int = 0


@dataclass(frozen=True)
class LabelDecoder:
    """How one label's frame probabilities become events (`edge_runtime.contract.events`), chosen on
    `val` for event F1 (`export/decoder_search.py`)."""

    label: str
    threshold: float  # on: p >= threshold
    hysteresis: float = 0.1  # stay on while p >= threshold - hysteresis (the off threshold)
    min_duration_s: float = 0.0
    merge_gap_s: float = 0.0

    @property
    def off_threshold(self) -> float:
        return max(self.threshold - self.hysteresis, 0.0)


@dataclass(frozen=True)
class UndetectableLabel:
    """A label the model cannot detect usefully (the runtime does not emit it by default)."""

    label: str
    reason: str  # e.g. "no events in val", "best val event F1 0.08 < 0.2"
    best_f1: float | None = None  # best event F1 on val; None when val had no events of it


@dataclass(frozen=True)
class ModelCard:
    name: str
    version: str
    sha256: str  # of the weights the artifact was made from
    sample_rate: int
    window_s: float  # model input length
    hop_s: float  # stride between windows when streaming
    frame_rate_hz: float  # output frames per second
    labels: tuple[str, ...]
    thresholds: tuple[float, ...]  # per label, decision threshold on the sigmoid
    frontend: Frontend = field(default_factory=Frontend)
    # Per label, in label order (thresholds repeat `thresholds`); () on cards made before the
    # decoder was tuned: the runtime then uses `thresholds` and its configured defaults.
    decoder: tuple[LabelDecoder, ...] = ()
    undetectable_labels: tuple[UndetectableLabel, ...] = ()
    output: str = "logits"  # "logits" (runtime applies sigmoid) or "probabilities"
    quantization: Quantization = field(default_factory=Quantization)
    lineage: dict[str, Any] = field(default_factory=dict)  # teacher name/sha256, student arch
    metrics: dict[str, Any] = field(default_factory=dict)  # verified AP teacher vs artifact
    schema: int = CARD_SCHEMA

    def __post_init__(self) -> None:
        problems = validate_card_values(self)
        if problems:
            raise UserError("invalid model card: " + "; ".join(problems))

    @property
    def window_samples(self) -> int:
        return round(self.window_s * self.sample_rate)

    @property
    def hop_samples(self) -> int:
        return round(self.hop_s * self.sample_rate)

    @property
    def frames_per_window(self) -> int:
        return round(self.window_s * self.frame_rate_hz)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    def label_decoders(self) -> tuple[LabelDecoder, ...]:
        """Per-label decoder settings; a card without them gives its thresholds with the
        defaults the runtime always used (hysteresis 0.1, no min duration, no merge)."""
        return self.decoder or tuple(LabelDecoder(label, t)
                                     for label, t in zip(self.labels, self.thresholds, strict=True))

    def suppressed(self, emit_undetectable: bool = False) -> tuple[UndetectableLabel, ...]:
        """The labels the runtime does not emit: the undetectable ones, unless asked to."""
        return () if emit_undetectable else self.undetectable_labels

    def decoder_config(self, thresholds: Sequence[float] | None = None,
                       hysteresis: float | None = None, min_duration_s: float | None = None,
                       merge_gap_s: float | None = None, max_duration_s: float | None = None,
                       emit_undetectable: bool = False) -> DecoderConfig:
        """The decoder this card prescribes. A value given here replaces the card's for every
        label (`thresholds`: one per label); a label whose threshold is replaced keeps its
        tuned off/on ratio (an absolute hysteresis tuned for 0.6 would leave a 0.2 threshold
        no off threshold at all). Undetectable labels are off unless `emit_undetectable`."""
        per_label = self.label_decoders()
        off = {u.label for u in self.suppressed(emit_undetectable)}
        on = [d.threshold for d in per_label] if thresholds is None else list(thresholds)
        if len(on) != len(self.labels):
            raise UserError(f"{len(on)} thresholds given for {len(self.labels)} labels "
                            f"({', '.join(self.labels)})")

        def pick(given: float | None, name: str) -> list[float]:
            return [float(getattr(d, name)) if given is None else given for d in per_label]

        def scaled(d: LabelDecoder, t: float) -> float:
            if not self.decoder or t == d.threshold or d.threshold <= 0:
                return d.hysteresis  # cards without tuned settings: 0.1 as always
            return d.hysteresis * t / d.threshold

        return DecoderConfig(
            threshold=on,
            hysteresis=[scaled(d, t) for d, t in zip(per_label, on, strict=True)]
            if hysteresis is None else pick(hysteresis, "hysteresis"),
            min_duration_s=pick(min_duration_s, "min_duration_s"),
            merge_gap_s=pick(merge_gap_s, "merge_gap_s"),
            max_duration_s=max_duration_s,
            emit=[label not in off for label in self.labels])

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "model card") -> ModelCard:
        """The card in `data` (parsed JSON); a `UserError` naming `where` and the field that
        is missing, unknown or of the wrong type, or the values that do not fit together."""
        return from_mapping(cls, data, where, what="model card")

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "model card") -> ModelCard:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(f"{where}: model card is not valid JSON ({err})") from None
        return cls.from_dict(data, where)


def validate_card_values(card: ModelCard) -> list[str]:
    problems = []
    if card.schema > CARD_SCHEMA:
        problems.append(f"schema {card.schema} is newer than this runtime ({CARD_SCHEMA})")
    if card.sample_rate <= 0:
        problems.append("sample_rate must be > 0")
    if not 0 < card.hop_s <= card.window_s:
        problems.append(f"need 0 < hop_s ({card.hop_s}) <= window_s ({card.window_s})")
    if card.frame_rate_hz <= 0:
        problems.append("frame_rate_hz must be > 0")
    if not card.labels:
        problems.append("labels is empty")
    if len(card.thresholds) != len(card.labels):
        problems.append(f"{len(card.thresholds)} thresholds for {len(card.labels)} labels")
    if any(not 0.0 <= t <= 1.0 for t in card.thresholds):
        problems.append("thresholds must be in [0, 1]")
    problems += _decoder_problems(card)
    if card.frontend.kind not in FRONTENDS:
        problems.append(f"frontend.kind {card.frontend.kind!r} is not one of {FRONTENDS}")
    if card.frontend.kind == "logmel" and not (card.frontend.n_fft and card.frontend.hop_length
                                               and card.frontend.n_mels):
        problems.append("a logmel frontend needs n_fft, hop_length and n_mels")
    if card.quantization.mode not in QUANTIZATIONS:
        problems.append(f"quantization.mode {card.quantization.mode!r} is not one of {QUANTIZATIONS}")
    if card.output not in ("logits", "probabilities"):
        problems.append(f"output {card.output!r} must be logits or probabilities")
    return problems


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _decoder_problems(card: ModelCard) -> list[str]:
    problems = []
    if card.decoder:
        names = [d.label for d in card.decoder]
        if names != list(card.labels):
            problems.append(f"decoder labels {names} must be the card's labels in order "
                            f"{list(card.labels)}")
    for i, d in enumerate(card.decoder):
        where = f"decoder[{d.label}]"
        if not _number(d.threshold) or not 0.0 <= d.threshold <= 1.0:
            problems.append(f"{where}.threshold must be in [0, 1], got {d.threshold!r}")
        elif i < len(card.thresholds) and abs(d.threshold - card.thresholds[i]) > 1e-9:
            problems.append(f"{where}.threshold {d.threshold} differs from thresholds[{i}] "
                            f"{card.thresholds[i]}")
        for name in ("hysteresis", "min_duration_s", "merge_gap_s"):
            v = getattr(d, name)
            if not _number(v) or v < 0:
                problems.append(f"{where}.{name} must be a finite number >= 0, got {v!r}")
    seen = set()
    for u in card.undetectable_labels:
        if u.label not in card.labels:
            problems.append(f"undetectable label {u.label!r} is not one of the labels")
        if u.label in seen:
            problems.append(f"undetectable label {u.label!r} is listed twice")
        seen.add(u.label)
        if not isinstance(u.reason, str) or not u.reason.strip():
            problems.append(f"undetectable label {u.label!r} needs a reason")
        if u.best_f1 is not None and (not _number(u.best_f1) or not 0.0 <= u.best_f1 <= 1.0):
            problems.append(f"undetectable label {u.label!r}: best_f1 must be in [0, 1] or "
                            f"null, got {u.best_f1!r}")
    return problems


# ---------------------------------------------------------------- TFLite metadata (read)
def _u32(buf: bytes, pos: int) -> int:
    return struct.unpack_from("<I", buf, pos)[0]


def _field(buf: bytes, table: int, index: int) -> int | None:
    """Absolute position of field `index` of the table at `table`, or None if absent."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    vt_size = struct.unpack_from("<H", buf, vtable)[0]
    slot = 4 + 2 * index
    if slot >= vt_size:
        return None
    off = struct.unpack_from("<H", buf, vtable + slot)[0]
    return table + off if off else None


def _deref(buf: bytes, pos: int) -> int:
    return pos + _u32(buf, pos)


def tflite_metadata(buf: bytes) -> dict[str, bytes]:
    """All `Model.metadata` entries of a TFLite flatbuffer: name -> buffer bytes."""
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise ValueError("no TFL3 identifier")
    model = _deref(buf, 0)
    meta_pos, buffers_pos = _field(buf, model, 6), _field(buf, model, 4)
    if meta_pos is None or buffers_pos is None:
        return {}
    buffers = _deref(buf, buffers_pos)
    out = {}
    meta = _deref(buf, meta_pos)
    for i in range(_u32(buf, meta)):
        entry = _deref(buf, meta + 4 + 4 * i)
        name_pos, index_pos = _field(buf, entry, 0), _field(buf, entry, 1)
        if name_pos is None or index_pos is None:
            continue
        name_at = _deref(buf, name_pos)
        name = buf[name_at + 4 : name_at + 4 + _u32(buf, name_at)].decode("utf-8", "replace")
        buffer = _deref(buf, buffers + 4 + 4 * _u32(buf, index_pos))
        data_pos = _field(buf, buffer, 0)
        if data_pos is None:
            continue
        data = _deref(buf, data_pos)
        out[name] = bytes(buf[data + 4 : data + 4 + _u32(buf, data)])
    return out


def read_card(artifact: str | Path) -> ModelCard:
    """The card of a `.tflite` (embedded, else sidecar `<stem>.json`); clear error otherwise."""
    path = Path(artifact)
    try:
        buf = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read model ({err.strerror})") from None
    sidecar = path.with_suffix(".json")
    if path.suffix == ".tflite" or buf[4:8] == b"TFL3":
        try:
            embedded = tflite_metadata(buf).get(CARD_KEY)
        except (ValueError, struct.error):
            raise UserError(f"{path}: not a TFLite model (corrupt or wrong file type)") from None
        if embedded is not None:
            return ModelCard.from_json(embedded, f"{path} (embedded card)")
    if sidecar.is_file():
        return ModelCard.from_json(sidecar.read_bytes(), str(sidecar))
    raise UserError(f"{path}: has no model card (no '{CARD_KEY}' metadata entry and no "
                    f"sidecar {sidecar.name}); export it with `meerkit export` or add the card")
