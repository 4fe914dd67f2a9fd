"""Reading dataset audio (wav/flac, any rate, any channel count) through soundfile.

Only headers are read to list and validate a dataset (`audio_info`); samples are decoded
when a file is loaded. Loading mixes channels to mono by their mean and resamples with soxr
(scipy's polyphase filter if soxr is not installed).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf

from edge_runtime.contract.errors import UserError

AUDIO_EXTENSIONS = (".wav", ".flac")

try:  # soxr is the better (and faster) resampler; scipy is the fallback.
    import soxr

    RESAMPLER = "soxr"
except ImportError:  # pragma: no cover - depends on the install
    soxr = None
    RESAMPLER = "scipy"


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    frames: int
    channels: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


def is_audio(path: str | Path) -> bool:
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS


def list_audio(folder: str | Path) -> list[str]:
    """Relative POSIX paths of every .wav/.flac under `folder`, sorted; hidden files skipped
    (macOS leaves `._name.wav` resource forks next to copied audio)."""
    folder = Path(folder)
    found = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not is_audio(path):
            continue
        if path.is_file():
            found.append(rel.as_posix())
    return sorted(found)


def audio_info(path: str | Path) -> AudioInfo:
    """Sample rate, length and channels from the header; `UserError` if unreadable or empty."""
    try:
        info = sf.info(str(path))
    except (RuntimeError, OSError) as err:  # LibsndfileError is a RuntimeError
        raise UserError(f"{path}: unreadable audio ({_reason(err)})") from None
    if info.frames <= 0:
        raise UserError(f"{path}: audio file has no samples")
    return AudioInfo(int(info.samplerate), int(info.frames), int(info.channels))


def read_audio(path: str | Path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Decode `path` to float32 mono (channel mean), resampled to `sample_rate` if given."""
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError) as err:
        raise UserError(f"{path}: unreadable audio ({_reason(err)})") from None
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if sample_rate is not None and sample_rate != sr:
        return resample(mono, sr, sample_rate), int(sample_rate)
    return np.ascontiguousarray(mono, dtype=np.float32), int(sr)


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample a 1-D float signal; the output has round(len * sr_out / sr_in) samples."""
    if sr_in == sr_out:
        return np.asarray(x, dtype=np.float32)
    if soxr is not None:
        return soxr.resample(np.asarray(x, dtype=np.float32), sr_in, sr_out, quality="HQ")
    from scipy.signal import resample_poly

    g = gcd(int(sr_in), int(sr_out))
    return resample_poly(x, int(sr_out) // g, int(sr_in) // g).astype(np.float32)


def _reason(err: Exception) -> str:
    text = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    # libsndfile prefixes its message with the path again; keep only the reason.
    return text.split("': ", 1)[-1].rstrip(".") if text.startswith("Error opening") else text
