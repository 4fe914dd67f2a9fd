"""Audio in: sources (microphone, WAV file, raw PCM on stdin), capture devices, and
conversion to the model's mono rate.

    sources.py   Source, WavSource, SoundFileSource (open_file_source), StdinSource,
                 MicSource; the recording's start time
    devices.py   PortAudio: import, list and select input devices, quiet start-up
    resample.py  Conformer (channels, non-finite samples, soxr resampling)
"""

from edge_runtime.audio.devices import (
    InputDevice,
    import_pyaudio,
    input_devices,
    list_devices,
    quiet_stderr,
    select_device,
)
from edge_runtime.audio.resample import RESAMPLERS, Conformer, SoxrResampler, make_resampler
from edge_runtime.audio.sources import (
    SOUNDFILE_HINT,
    STDIN_PACES,
    MicSource,
    Put,
    SoundFileSource,
    Source,
    StdinSource,
    WavSource,
    open_file_source,
    parse_start_time,
    recording_start,
    stdin_pace_for,
)

__all__ = [
    "RESAMPLERS", "SOUNDFILE_HINT", "STDIN_PACES", "Conformer", "InputDevice", "MicSource",
    "Put", "SoundFileSource", "Source", "StdinSource", "SoxrResampler", "WavSource",
    "import_pyaudio", "input_devices", "list_devices", "make_resampler", "open_file_source",
    "parse_start_time", "quiet_stderr", "recording_start", "select_device", "stdin_pace_for",
]
