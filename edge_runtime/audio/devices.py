"""Capture devices through PortAudio (PyAudio, the `mic` extra): import it, list the input
devices, pick one from `audio.mic_device`, and keep ALSA's start-up noise off stderr."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass

from edge_runtime.contract.errors import UserError
from edge_runtime.contract.quiet import quiet_stderr

log = logging.getLogger(__name__)


def import_pyaudio():
    try:
        return importlib.import_module("pyaudio")
    except ImportError:
        raise UserError("microphone input needs PyAudio: `pip install 'meerkit[mic]'` "
                        "(and `apt install portaudio19-dev` before it)") from None


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
