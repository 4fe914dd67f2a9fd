"""WAV reading and writing in pure numpy (the device install has no libsndfile).

Reads PCM 8/16/24/32-bit and IEEE float 32/64, plain or WAVE_FORMAT_EXTENSIBLE, and returns
float32 samples in [-1, 1] shaped (frames, channels). A truncated data chunk (a recorder that
lost power mid-write) is read up to the last whole frame and reported via `WavInfo.truncated`;
anything that is not a WAV raises `UserError` naming the file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.contract.errors import UserError

_PCM, _FLOAT, _EXTENSIBLE = 0x0001, 0x0003, 0xFFFE


@dataclass(frozen=True)
class WavInfo:
    sample_rate: int
    channels: int
    bits_per_sample: int
    is_float: bool
    frames: int
    truncated: bool = False

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


def _parse(path: Path, buf: bytes, total_size: int) -> tuple[WavInfo, int]:
    """Return the format and the byte offset of the sample data.

    `buf` may be just the head of the file; `total_size` is the whole file's size.
    """
    if len(buf) < 12 or buf[:4] not in (b"RIFF", b"RF64") or buf[8:12] != b"WAVE":
        raise UserError(f"{path}: not a WAV file (no RIFF/WAVE header)")
    pos, fmt, data_off, data_len = 12, None, None, 0
    while pos + 8 <= len(buf):
        chunk_id, size = buf[pos : pos + 4], struct.unpack("<I", buf[pos + 4 : pos + 8])[0]
        body = pos + 8
        if chunk_id == b"fmt ":
            if size < 16 or body + 16 > len(buf):
                raise UserError(f"{path}: WAV 'fmt ' chunk is too short")
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", buf[body : body + 16])
            if tag == _EXTENSIBLE and size >= 40:
                tag = struct.unpack("<H", buf[body + 24 : body + 26])[0]
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            data_off, data_len = body, size
            break
        pos = body + size + (size & 1)  # chunks are word-aligned
    if fmt is None:
        raise UserError(f"{path}: WAV has no 'fmt ' chunk")
    if data_off is None:
        raise UserError(f"{path}: WAV has no 'data' chunk (empty or truncated header)")
    tag, channels, rate, bits = fmt
    if tag not in (_PCM, _FLOAT):
        raise UserError(f"{path}: unsupported WAV encoding (format tag 0x{tag:04x}); use PCM or float")
    if tag == _PCM and bits not in (8, 16, 24, 32) or tag == _FLOAT and bits not in (32, 64):
        raise UserError(f"{path}: unsupported WAV sample size {bits} bits")
    if channels < 1 or rate < 1:
        raise UserError(f"{path}: WAV header says {channels} channels at {rate} Hz")
    available = total_size - data_off
    # 0xFFFFFFFF / 0 are what streaming writers leave when they never patch the size.
    claimed = available if data_len in (0, 0xFFFFFFFF) else data_len
    frame_bytes = channels * bits // 8
    frames = min(claimed, available) // frame_bytes
    info = WavInfo(rate, channels, bits, tag == _FLOAT, frames, truncated=claimed > available)
    return info, data_off


def wav_info(path: str | Path) -> WavInfo:
    """Format and length of a WAV file, reading only its header."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
        return _parse(path, head, path.stat().st_size)[0]
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None


def decode_pcm(raw: bytes | np.ndarray, bits: int, is_float: bool, channels: int) -> np.ndarray:
    """Little-endian interleaved samples -> float32 (frames, channels) in [-1, 1]."""
    raw = np.frombuffer(raw, dtype=np.uint8) if isinstance(raw, (bytes, bytearray, memoryview)) else raw
    width = bits // 8
    raw = raw[: len(raw) - len(raw) % (width * channels)]
    if is_float:
        x = raw.view("<f4" if bits == 32 else "<f8").astype(np.float32)
    elif bits == 8:  # 8-bit WAV is unsigned
        x = (raw.astype(np.float32) - 128.0) / 128.0
    elif bits == 16:
        # one pass, no temporary: int16 * 2**-15 in float32 is exactly int16 / 32768
        x = np.multiply(raw.view("<i2"), np.float32(1.0 / 32768.0), dtype=np.float32)
    elif bits == 24:
        b = raw.reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v)).astype(np.float32) / float(1 << 23)
    elif bits == 32:
        x = raw.view("<i4").astype(np.float32) / float(1 << 31)
    else:
        raise ValueError(f"unsupported sample size {bits}")
    return x.reshape(-1, channels)


def read_wav(path: str | Path) -> tuple[np.ndarray, WavInfo]:
    """Read a whole WAV file: float32 (frames, channels) and its format."""
    path = Path(path)
    try:
        buf = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    info, off = _parse(path, buf, len(buf))
    frame_bytes = info.channels * info.bits_per_sample // 8
    data = np.frombuffer(buf, dtype=np.uint8, count=info.frames * frame_bytes, offset=off)
    return decode_pcm(data, info.bits_per_sample, info.is_float, info.channels), info


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int, bits: int = 16) -> None:
    """Write float samples (frames,) or (frames, channels) as 16/24/32-bit PCM, or float32 with bits=-32."""
    x = np.asarray(samples, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    frames, channels = x.shape
    if bits == -32:
        tag, width, payload = _FLOAT, 4, x.astype("<f4").tobytes()
    else:
        scale = float(1 << (bits - 1))
        q = np.clip(np.round(x * scale), -scale, scale - 1).astype(np.int64)
        if bits == 16:
            payload = q.astype("<i2").tobytes()
        elif bits == 24:
            payload = (q.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3]).tobytes()
        elif bits == 32:
            payload = q.astype("<i4").tobytes()
        else:
            raise ValueError(f"unsupported sample size {bits}")
        tag, width = _PCM, bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, sample_rate, sample_rate * channels * width,
                      channels * width, width * 8)
    with open(path, "wb") as fh:
        fh.write(b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(payload)) + b"WAVE")
        fh.write(b"fmt " + struct.pack("<I", len(fmt)) + fmt)
        fh.write(b"data" + struct.pack("<I", len(payload)) + payload)
