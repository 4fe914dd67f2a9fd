"""Recorder start times from byte-exact AudioMoth/GUANO headers, file names and explicit times."""

from __future__ import annotations

import struct
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.contract.errors import UserError
from edge_runtime.contract.recorder import (
    filename_time,
    parse_audiomoth_comment,
    parse_explicit_start,
    parse_guano,
    read_header_text,
    recording_start,
)
from edge_runtime.contract.wav import read_wav

RATE = 8000
UTC = timezone.utc


def _chunk(chunk_id: bytes, body: bytes) -> bytes:
    return chunk_id + struct.pack("<I", len(body)) + body + (b"\x00" if len(body) & 1 else b"")


def _fixed(text: str, size: int) -> bytes:
    raw = text.encode()
    assert len(raw) < size
    return raw + b"\x00" * (size - len(raw))


def write_recorder_wav(path: Path, comment: str | None = None, artist: str | None = None,
                       guano: str | None = None, guano_first: bool = False,
                       frames: int = 800, audio: np.ndarray | None = None,
                       rate: int = RATE) -> Path:
    """A 16-bit mono WAV laid out as AudioMoth firmware 1.11 writes it: RIFF, fmt, LIST/INFO
    with fixed-size ICMT (384 bytes) and IART (32 bytes), data, then the GUANO chunk. `audio`
    (floats in [-1, 1]) replaces the default tone of `frames` samples."""
    if audio is None:
        samples = (np.sin(np.arange(frames) / 5.0) * 3000).astype("<i2").tobytes()
    else:
        samples = np.clip(np.round(np.asarray(audio) * 32768), -32768, 32767).astype("<i2")
        samples = samples.tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    chunks = [_chunk(b"fmt ", fmt)]
    if comment is not None or artist is not None:
        info = b"INFO"
        if comment is not None:
            info += _chunk(b"ICMT", _fixed(comment, 384))
        if artist is not None:
            info += _chunk(b"IART", _fixed(artist, 32))
        chunks.append(_chunk(b"LIST", info))
    guan = _chunk(b"guan", guano.encode()) if guano is not None else b""
    if guano_first:
        chunks.append(guan)
    chunks.append(_chunk(b"data", samples))
    if not guano_first:
        chunks.append(guan)
    body = b"WAVE" + b"".join(chunks)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


COMMENT_1_11 = ("Recorded at 21:00:00 03/06/2025 (UTC+2) by AudioMoth 24F319055FDF3F2B at medium "
                "gain while battery was 4.1V and temperature was 18.3C.")


def test_audiomoth_comment_with_timezone_gives_exact_utc(tmp_path):
    # The name is local time too (21:00 at UTC+2): the header's offset applies to both.
    path = write_recorder_wav(tmp_path / "20250603_210000.WAV", COMMENT_1_11,
                              artist="AudioMoth 24F319055FDF3F2B")
    start = recording_start(path)
    assert start.utc == datetime(2025, 6, 3, 19, 0, 0, tzinfo=UTC)
    assert start.source == "audiomoth-comment"
    assert start.device_id == "24F319055FDF3F2B"
    assert (start.gain, start.battery_v, start.temperature_c) == ("medium", 4.1, 18.3)
    assert start.tz_offset == timedelta(hours=2)
    assert start.at(1.5) == "2025-06-03T19:00:01.500Z"
    # The header is still readable, and the audio too: the metadata chunks do not disturb it.
    audio, info = read_wav(path)
    assert info.frames == 800 and audio.shape == (800, 1)


def test_audiomoth_comment_without_timezone(tmp_path):
    comment = ("Recorded at 21:00:00 03/06/2025 (UTC) by AudioMoth 24F319055FDF3F2B at medium "
               "gain while battery was 4.1V and temperature was 18.3C.")
    start = recording_start(write_recorder_wav(tmp_path / "20250603_210000.WAV", comment))
    assert start.utc == datetime(2025, 6, 3, 21, 0, 0, tzinfo=UTC)
    assert start.tz_offset == timedelta(0) and start.source == "audiomoth-comment"


@pytest.mark.parametrize("comment, utc, offset, gain, battery, temperature, device", [
    # firmware 1.0: no zone (UTC clock), numeric gain, "battery state"
    ("Recorded at 05:30:00 01/02/2018 by AudioMoth 0FE081F80FE081F0 at gain setting 2 while "
     "battery state was 4.50V", datetime(2018, 2, 1, 5, 30), 0, "medium", 4.5, None,
     "0FE081F80FE081F0"),
    # firmware 1.2.1: bound instead of a value
    ("Recorded at 23:59:59 31/12/2019 (UTC-5) by AudioMoth 0FE081F80FE081F0 at gain setting 4 "
     "while battery state was less than 3.6V.", datetime(2020, 1, 1, 4, 59, 59), -300, "high",
     3.6, None, "0FE081F80FE081F0"),
    # firmware 1.2.2 / 1.4: minutes in the offset, negative temperature
    ("Recorded at 00:15:00 01/07/2021 (UTC+5:30) by AudioMoth 0FE081F80FE081F0 at low-medium "
     "gain setting while battery state was 3.9V and temperature was -3.2C.",
     datetime(2021, 6, 30, 18, 45), 330, "low-medium", 3.9, -3.2, "0FE081F80FE081F0"),
    # firmware 1.4+: hours 0 with negative minutes is written "-0:30"
    ("Recorded at 12:00:00 15/03/2022 (UTC-0:30) by AudioMoth 0FE081F80FE081F0 at high gain "
     "setting while battery state was greater than 4.9V and temperature was 21.0C.",
     datetime(2022, 3, 15, 12, 30), -30, "high", 4.9, 21.0, "0FE081F80FE081F0"),
    # firmware 1.5+: a deployment id instead of the device, external microphone, trailing notes
    ("Recorded at 04:00:00 10/05/2024 (UTC-3:30) during deployment 0123456789ABCDEF using "
     "external microphone at medium-high gain while battery was 4.4V and temperature was 9.9C. "
     "Amplitude threshold was 0.5% with 1s minimum trigger duration. Recording stopped due to "
     "low voltage.", datetime(2024, 5, 10, 7, 30), -210, "medium-high", 4.4, 9.9, None),
])
def test_comment_variants_across_firmware(comment, utc, offset, gain, battery, temperature,
                                          device):
    start = parse_audiomoth_comment(comment)
    assert start is not None
    assert start.utc == utc.replace(tzinfo=UTC)
    assert start.tz_offset == timedelta(minutes=offset)
    assert (start.gain, start.battery_v, start.temperature_c) == (gain, battery, temperature)
    assert start.device_id == device


def test_deployment_comment_takes_device_from_artist(tmp_path):
    comment = ("Recorded at 04:00:00 10/05/2024 (UTC) during deployment 0123456789ABCDEF at "
               "medium gain while battery was 4.4V and temperature was 9.9C.")
    path = write_recorder_wav(tmp_path / "x.wav", comment, artist="AudioMoth 24F319055FDF3F2B")
    start = recording_start(path)
    assert (start.device_id, start.deployment_id) == ("24F319055FDF3F2B", "0123456789ABCDEF")


def test_not_an_audiomoth_comment():
    assert parse_audiomoth_comment("Recorded with my phone") is None
    assert parse_audiomoth_comment("Recorded at 25:00:00 03/06/2025 by AudioMoth "
                                   "24F319055FDF3F2B") is None


GUANO_AM = ("GUANO|Version:1.0\nMake:Open Acoustic Devices\nModel:AudioMoth\n"
            "Serial:24F319055FDF3F2B\nFirmware Version:AudioMoth-Firmware-Basic (1.11.1)\n"
            "Timestamp:2025-06-03T21:00:00+02:00\nLoc Position:52.52 13.40\n"
            "OAD|Loc Source:Configuration app\nOriginal Filename:20250603_210000.WAV\n"
            "OAD|Recording Settings:48000 GAIN 2\nOAD|Battery Voltage:4.1\nTemperature Int:18.3")


def test_guano_with_offset_after_the_samples(tmp_path):
    path = write_recorder_wav(tmp_path / "rec.wav", guano=GUANO_AM)
    assert read_header_text(path).guano.startswith("GUANO|Version:1.0")
    start = recording_start(path)
    assert start.utc == datetime(2025, 6, 3, 19, 0, tzinfo=UTC)
    assert start.source == "guano" and start.tz_offset == timedelta(hours=2)
    assert start.device_id == "24F319055FDF3F2B" and start.location == (52.52, 13.40)
    assert (start.battery_v, start.temperature_c) == (4.1, 18.3)


def test_guano_spec_style_with_spaces_and_zulu(tmp_path):
    guano = ("GUANO|Version:  1.0\n\nTimestamp:  2012-03-29T03:58:01.250Z\nMake:  Pettersson\n"
             "Model:  D1000X\nLoc Position:  37.1878016 -86.1057312\n")
    path = write_recorder_wav(tmp_path / "bat.wav", guano=guano, guano_first=True)
    start = recording_start(path)
    assert start.utc == datetime(2012, 3, 29, 3, 58, 1, 250000, tzinfo=UTC)
    assert start.location == (37.1878016, -86.1057312)
    assert parse_guano(guano)["Make"] == "Pettersson"


def test_naive_guano_needs_a_zone_and_never_falls_back_to_the_name(tmp_path):
    guano = "GUANO|Version:1.0\nTimestamp:2025-06-03T21:00:00\nSerial:SM4-123\n"
    path = write_recorder_wav(tmp_path / "SM4_20250603_210000.wav", guano=guano)
    start = recording_start(path)
    assert start.utc is None and start.source == "unknown"
    assert "no UTC offset" in start.note and start.device_id == "SM4-123"
    assert start.at(3.0) == ""
    # With the zone (CEST in June) it is exact.
    berlin = recording_start(path, local_tz="Europe/Berlin")
    assert berlin.utc == datetime(2025, 6, 3, 19, 0, tzinfo=UTC) and berlin.source == "guano"
    # An explicit time is the last resort, and is used.
    given = recording_start(path, explicit="2025-06-03T19:00:05Z")
    assert given.source == "explicit" and given.utc == datetime(2025, 6, 3, 19, 0, 5, tzinfo=UTC)


def test_comment_wins_over_guano_and_name(tmp_path):
    path = write_recorder_wav(tmp_path / "20990101_000000.WAV", COMMENT_1_11,
                              guano=GUANO_AM.replace("21:00:00+02:00", "22:00:00+02:00"))
    start = recording_start(path, explicit="2000-01-01T00:00:00Z")
    assert start.source == "audiomoth-comment"
    assert start.utc == datetime(2025, 6, 3, 19, 0, tzinfo=UTC)
    assert start.location == (52.52, 13.40)  # GUANO fills what the comment lacks


def test_name_without_header_is_utc_by_default(tmp_path):
    path = write_recorder_wav(tmp_path / "20250603_210000.WAV")
    start = recording_start(path, explicit="2000-01-01T00:00:00Z")  # the name wins
    assert start.source == "filename" and start.utc == datetime(2025, 6, 3, 21, tzinfo=UTC)
    assert "UTC" in start.note
    local = recording_start(path, local_tz="Europe/Berlin")
    assert local.utc == datetime(2025, 6, 3, 19, tzinfo=UTC)
    assert local.tz_offset == timedelta(hours=2)


@pytest.mark.parametrize("name, expected", [
    ("20250603_210000.WAV", datetime(2025, 6, 3, 21)),
    ("24F319055FDF3F2B_20250603_210000.WAV", datetime(2025, 6, 3, 21)),
    ("20250603_210000T.WAV", datetime(2025, 6, 3, 21)),  # triggered recording
    ("SMM04321_20230602_224900.wav", datetime(2023, 6, 2, 22, 49)),
    ("ARIZONA-1_20161023$195550.wav", datetime(2016, 10, 23, 19, 55, 50)),  # GPS-synced SM3
    ("20250631_210000.WAV", None),  # no such date
    ("rec1.wav", None),
    ("1220250603_2100001.wav", None),  # digits run on: not a timestamp
])
def test_filename_time(name, expected):
    assert filename_time(name) == expected


def test_unknown_without_anything(tmp_path):
    path = write_recorder_wav(tmp_path / "rec1.wav")
    start = recording_start(path)
    assert (start.utc, start.source) == (None, "unknown") and start.note
    assert recording_start(path, explicit=datetime(2025, 1, 1, tzinfo=UTC)).source == "explicit"


def test_non_wav_files_fall_back_to_the_name(tmp_path):
    flac = tmp_path / "20250603_210000.flac"
    flac.write_bytes(b"fLaC\x00\x00\x00\x22" + b"\x00" * 64)
    assert recording_start(flac).source == "filename"
    truncated = tmp_path / "20250603_210001.wav"
    truncated.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt ")
    assert recording_start(truncated).utc == datetime(2025, 6, 3, 21, 0, 1, tzinfo=UTC)


def test_user_errors_are_one_line():
    with pytest.raises(UserError, match="no time zone"):
        parse_explicit_start("2025-06-03T21:00:00")
    with pytest.raises(UserError, match="ISO 8601"):
        parse_explicit_start("yesterday")
    with pytest.raises(UserError, match="IANA"):
        recording_start(__file__, local_tz="Mars/Olympus")
