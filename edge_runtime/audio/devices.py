"""Capture devices through PortAudio (PyAudio, the `mic` extra): import it, list the input
devices, pick one from `audio.mic_device`, and keep ALSA's start-up noise off stderr."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from edge_runtime.contract.errors import UserError

log = logging.getLogger(__name__)


def import_pyaudio():
    try:
        return importlib.import_module("pyaudio")
    except ImportError:
        raise UserError("microphone input needs PyAudio: `pip install 'meerkit[mic]'` "
                        "(and `apt install portaudio19-dev` before it)") from None


@contextlib.contextmanager
def quiet_stderr(logger: logging.Logger | None = None) -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the duration, unless `logger` (default: the
    edge_runtime logger) is at debug level.

    PortAudio's start-up and format probing make ALSA and JACK print dozens of lines
    ("ALSA lib pcm.c: Unknown PCM cards.pcm.rear", "jack server is not running") straight
    to fd 2, from C, at every start of a recorder; they bury the journal's real messages.
    Only the file descriptor can silence C code; anything another thread logs meanwhile is
    lost too, so keep the block short (device set-up happens before the threads start)."""
    logger = logger or logging.getLogger("edge_runtime")
    if logger.isEnabledFor(logging.DEBUG):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


@dataclass(frozen=True)
class InputDevice:
    index: int
    name: str
    channels: int
    default_rate: int


def input_devices(pa) -> list[InputDevice]:
    """The capture devices PortAudio sees (devices without input channels are left out)."""
    out = []
    for i in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(i)
        if int(info.get("maxInputChannels", 0)) > 0:
            out.append(InputDevice(i, str(info.get("name", "")), int(info["maxInputChannels"]),
                                   int(info.get("defaultSampleRate", 0))))
    return out


def select_device(devices: list[InputDevice], spec: str, default: int | None = None
                  ) -> InputDevice:
    """`spec`: "" = the default input (else the first), a device index, or a name substring
    (case-insensitive; must match exactly one device)."""
    if not devices:
        raise UserError("no audio input device found: PortAudio lists no capture devices "
                        "(is the USB microphone / sound card connected? check `arecord -l`; "
                        "is the user in the 'audio' group?)")
    listing = "; ".join(f"{d.index}: {d.name}" for d in devices)
    if not spec:
        return next((d for d in devices if d.index == default), devices[0])
    if spec.strip().isdigit():
        for d in devices:
            if d.index == int(spec):
                return d
        raise UserError(f"audio.mic_device {spec}: no input device with that index ({listing})")
    matches = [d for d in devices if spec.lower() in d.name.lower()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UserError(f"audio.mic_device {spec!r} matches no input device ({listing})")
    raise UserError(f"audio.mic_device {spec!r} matches {len(matches)} devices "
                    f"({'; '.join(f'{d.index}: {d.name}' for d in matches)}); use the index")


def list_devices() -> list[InputDevice]:
    """The input devices, without PortAudio's stderr noise (see `quiet_stderr`)."""
    pyaudio = import_pyaudio()
    with quiet_stderr():
        pa = pyaudio.PyAudio()
        try:
            return input_devices(pa)
        finally:
            pa.terminate()
