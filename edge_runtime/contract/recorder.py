"""When did a recording start? Recorder metadata (AudioMoth comments, GUANO) and file names.

Precedence: the file's header (an AudioMoth `ICMT` comment, else a GUANO `guan` chunk), then
its name (`20250603_210000.WAV`), then an explicit start time the user gave. A file whose
time cannot be known gets `utc=None, source="unknown"` and a note saying why; nothing is
guessed.

AudioMoth (OpenAcousticDevices/AudioMoth-Firmware-Basic, `setHeaderComment` and
`generateFolderAndFilename` in src/main.c; the per-version formats as collected by metamoth)
writes its *local* time, i.e. UTC plus the offset configured in the app, into both the comment
and the file name. The comment states that offset; a name alone does not, so without a header
a name is read as UTC (AudioMoth's default) unless the caller names the local time zone.
Comment variants handled (firmware 1.0 to 1.11):

    Recorded at 21:00:00 03/06/2025 by AudioMoth 24F3... at gain setting 2 while battery
        state was 4.1V
    Recorded at 21:00:00 03/06/2025 (UTC) by AudioMoth ... while battery state was less than 3.6V.
    Recorded at 21:00:00 03/06/2025 (UTC+2) by AudioMoth ... at medium gain setting while ...
    Recorded at 21:00:00 03/06/2025 (UTC-3:30) during deployment 0123... using external
        microphone at medium gain while battery was 4.1V and temperature was -3.2C. ...

Firmware 1.0 wrote no "(UTC...)": it had no time zone setting, so its clock was UTC.

GUANO (github.com/riggsd/guano-py, doc/guano_specification.md): `guan` chunk anywhere in the
RIFF file (AudioMoth 1.11 appends it after the samples), UTF-8 `Key: value` lines. `Timestamp`
with `Z` or `+hh:mm` is exact; without an offset it is local time of an unknown zone, usable
only when the caller names the zone.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import BinaryIO, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from edge_runtime.contract.errors import UserError
from edge_runtime.contract.times import iso_utc

TimeSource = Literal["audiomoth-comment", "guano", "filename", "explicit", "unknown"]
GAINS = ("low", "low-medium", "medium", "medium-high", "high")  # AudioMoth's 0..4
_MAX_META_CHUNK = 1 << 20  # a comment or GUANO block is a few hundred bytes; never load audio


@dataclass(frozen=True)
class RecordingStart:
    """The first sample's time and what the recorder said about itself."""

    utc: datetime | None  # aware, UTC; None when it cannot be known
    source: TimeSource
    device_id: str | None = None
    gain: str | None = None
    battery_v: float | None = None  # a bound ("less than 2.5V") reads as the bound
    temperature_c: float | None = None
    tz_offset: timedelta | None = None  # recorder's local time = utc + tz_offset
    deployment_id: str | None = None
    location: tuple[float, float] | None = None  # (lat, lon) from GUANO Loc Position
    note: str = ""  # why the time is unknown, or what was assumed

    @property
    def unix(self) -> float | None:
        return self.utc.timestamp() if self.utc is not None else None

    def at(self, offset_s: float) -> str:
        """ISO 8601 UTC (ms) of a moment `offset_s` into the file; "" when the start is unknown."""
        return iso_utc(self.utc.timestamp() + offset_s) if self.utc is not None else ""


@dataclass(frozen=True)
class HeaderText:
    """The metadata text chunks of a WAV file (empty strings when absent)."""

    comment: str = ""  # LIST/INFO/ICMT
    artist: str = ""  # LIST/INFO/IART
    guano: str = ""  # the `guan` chunk
    info: dict[str, str] = field(default_factory=dict)  # every LIST/INFO entry by id


# ------------------------------------------------------------------------- RIFF chunks
def read_header_text(path: str | Path) -> HeaderText:
    """ICMT/IART/INFO and GUANO text of a WAV file; empty for anything that is not RIFF/WAVE
    (FLAC, a damaged file): the caller falls back to the name, and the decoder reports the
    damage. Chunks after `data` are found by seeking, so hours of audio are never read."""
    try:
        with open(path, "rb") as fh:
            return _walk(fh, Path(path).stat().st_size)
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None


def _walk(fh: BinaryIO, size: int) -> HeaderText:
    head = fh.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return HeaderText()
    info: dict[str, str] = {}
    guano = ""
    pos = 12
    while pos + 8 <= size:
        fh.seek(pos)
        chunk_id, length = struct.unpack("<4sI", fh.read(8))
        body = pos + 8
        if chunk_id == b"data" and length in (0, 0xFFFFFFFF):
            break  # a streaming writer never patched the size: nothing can follow reliably
        if chunk_id in (b"LIST", b"guan") and length <= _MAX_META_CHUNK:
            data = fh.read(length)
            if chunk_id == b"guan":
                guano = _text(data)
            elif data[:4] == b"INFO":
                info.update(_info_entries(data[4:]))
        pos = body + length + (length & 1)  # chunks are word-aligned
    return HeaderText(info.get("ICMT", ""), info.get("IART", ""), guano, info)


def _info_entries(data: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos + 8 <= len(data):
        sub_id, length = struct.unpack("<4sI", data[pos : pos + 8])
        out[sub_id.decode("latin-1")] = _text(data[pos + 8 : pos + 8 + length])
        pos += 8 + length + (length & 1)
    return out


def _text(raw: bytes) -> str:
    raw = raw.split(b"\x00", 1)[0]  # C strings padded with NULs to a fixed size
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return raw.decode("latin-1").strip()


# ------------------------------------------------------------------------- AudioMoth comment
_AM_TIME = re.compile(
    r"Recorded at (\d{2}):(\d{2}):(\d{2}) (\d{2})/(\d{2})/(\d{4})"
    r"(?: \(UTC(?:([+-])(\d{1,2})(?::(\d{2}))?)?\))?")
_AM_DEVICE = re.compile(r"by AudioMoth ([0-9A-Fa-f]{16})")
_AM_DEPLOYMENT = re.compile(r"during deployment ([0-9A-Fa-f]{16})")
_AM_GAIN_NAMED = re.compile(r"at (low-medium|medium-high|low|medium|high) gain")
_AM_GAIN_NUMBER = re.compile(r"gain setting (\d)")
_AM_BATTERY = re.compile(r"battery (?:state )?was (?:less than |greater than |< |> )?"
                         r"(\d+(?:\.\d+)?)V")
_AM_TEMPERATURE = re.compile(r"temperature was (-?\d+(?:\.\d+)?)C")


def parse_audiomoth_comment(text: str) -> RecordingStart | None:
    """An AudioMoth ICMT comment -> its start time and device state; None if it is not one."""
    m = _AM_TIME.search(text)
    if m is None or "AudioMoth" not in text and "deployment" not in text:
        return None
    hh, mi, ss, dd, mo, yy, sign, tz_h, tz_m = m.groups()
    try:
        local = datetime(int(yy), int(mo), int(dd), int(hh), int(mi), int(ss))
    except ValueError:
        return None
    note = ""
    if m.group(0).endswith(")"):
        minutes = int(tz_h or 0) * 60 + int(tz_m or 0)
        offset = timedelta(minutes=-minutes if sign == "-" else minutes)
    else:
        offset, note = timedelta(0), "comment gives no UTC offset (firmware 1.0 recorded UTC)"
    gain = _AM_GAIN_NAMED.search(text)
    gain_number = _AM_GAIN_NUMBER.search(text)
    if gain is None and gain_number is not None and int(gain_number.group(1)) < len(GAINS):
        gain_name = GAINS[int(gain_number.group(1))]
    else:
        gain_name = gain.group(1) if gain else None
    return RecordingStart(
        utc=(local - offset).replace(tzinfo=timezone.utc),
        source="audiomoth-comment",
        device_id=_group(_AM_DEVICE, text, upper=True),
        gain=gain_name,
        battery_v=_number(_AM_BATTERY, text),
        temperature_c=_number(_AM_TEMPERATURE, text),
        tz_offset=offset,
        deployment_id=_group(_AM_DEPLOYMENT, text, upper=True),
        note=note,
    )


def _group(pattern: re.Pattern[str], text: str, upper: bool = False) -> str | None:
    m = pattern.search(text)
    return (m.group(1).upper() if upper else m.group(1)) if m else None


def _number(pattern: re.Pattern[str], text: str) -> float | None:
    m = pattern.search(text)
    return float(m.group(1)) if m else None


# ------------------------------------------------------------------------- GUANO
def parse_guano(text: str) -> dict[str, str]:
    """GUANO `Key: value` lines -> dict (keys keep their namespace, e.g. `OAD|Battery Voltage`).
    Surrounding whitespace is trimmed, as the spec asks of readers."""
    fields = {}
    for line in text.replace("\r\n", "\n").split("\n"):
        key, sep, value = line.partition(":")
        if sep and key.strip():
            fields[key.strip()] = value.strip().replace("\\n", "\n")
    return fields


def guano_start(fields: dict[str, str], local_tz: tzinfo | None = None) -> RecordingStart | None:
    """GUANO fields -> start time etc.; None without a Timestamp. A Timestamp without offset is
    local time of an unknown zone: exact only with `local_tz`, else utc=None with a note."""
    stamp = fields.get("Timestamp")
    if not stamp:
        return None
    try:
        when = _guano_time(stamp)
    except ValueError:
        return RecordingStart(None, "unknown", note=f"GUANO Timestamp {stamp!r} is not ISO 8601")
    note, offset = "", when.utcoffset()
    if offset is None:
        if local_tz is None:
            return RecordingStart(None, "unknown", **_guano_extras(fields),
                                  note=f"GUANO Timestamp {stamp!r} has no UTC offset; "
                                       "give the recorder's time zone")
        when = when.replace(tzinfo=local_tz)
        offset, note = when.utcoffset(), f"GUANO Timestamp read in {local_tz}"
    return RecordingStart(when.astimezone(timezone.utc), "guano", tz_offset=offset, note=note,
                          **_guano_extras(fields))


def _guano_time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace(" ", "T", 1).replace("Z", "+00:00"))


def _guano_extras(fields: dict[str, str]) -> dict:
    def num(key: str) -> float | None:
        try:
            return float(fields[key])
        except (KeyError, ValueError):
            return None

    location = None
    try:
        lat, lon = (float(v) for v in fields["Loc Position"].split())
        location = (lat, lon)
    except (KeyError, ValueError):
        pass
    return {"device_id": fields.get("Serial") or None,
            "deployment_id": fields.get("OAD|Deployment ID") or None,
            "battery_v": num("OAD|Battery Voltage"),
            "temperature_c": num("Temperature Int") if "Temperature Int" in fields
            else num("Temperature Ext"),
            "location": location}


# ------------------------------------------------------------------------- file names
# AudioMoth: [YYYYMMDD/][DEVICEID_]YYYYMMDD_HHMMSS[T].WAV; Wildlife Acoustics:
# PREFIX_YYYYMMDD_HHMMSS, with `$` instead of `_` when GPS-synchronised.
_NAME_TIME = re.compile(r"(?<!\d)(\d{8})[_$](\d{6})(?!\d)")


def filename_time(path: str | Path) -> datetime | None:
    """The naive wall-clock time in a recorder's file name, or None if it has none."""
    m = _NAME_TIME.search(Path(path).stem)
    if m is None:
        return None
    try:
        return datetime.strptime(m.group(1) + m.group(2), "%Y%m%d%H%M%S")
    except ValueError:
        return None


# ------------------------------------------------------------------------- precedence
def zone(name: str | tzinfo | None, where: str = "time zone") -> tzinfo | None:
    """A configured zone: an IANA name ("Europe/Berlin"), "UTC", or a tzinfo."""
    if name is None or isinstance(name, tzinfo):
        return name
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise UserError(f"{where} {name!r}: not an IANA time zone name such as "
                        "Europe/Berlin or UTC") from None


def parse_explicit_start(spec: str, where: str = "--audio-start-time") -> datetime:
    """An ISO 8601 time with zone (2025-06-03T19:00:00Z, ...+02:00) -> aware UTC datetime."""
    try:
        when = datetime.fromisoformat(spec.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"{where} {spec!r}: expected an ISO 8601 time such as "
                        "2025-06-03T21:00:00+02:00") from None
    if when.tzinfo is None:
        raise UserError(f"{where} {spec!r} has no time zone; add Z or +hh:mm")
    return when.astimezone(timezone.utc)


def recording_start(path: str | Path, explicit: datetime | str | None = None,
                    local_tz: str | tzinfo | None = None) -> RecordingStart:
    """The first sample's UTC time of `path`, by header, then file name, then `explicit`.

    local_tz: the recorder's zone, for times that carry no offset (a GUANO Timestamp without
    one; a file name when the header gives no offset). Without it a name is read as UTC.
    """
    tz = zone(local_tz, "recorder time zone")
    header = read_header_text(path)
    from_header = _from_header(header, tz)
    if from_header is not None and from_header.utc is not None:
        return from_header
    known = from_header or RecordingStart(None, "unknown")
    if tz is None and _guano_is_local(header):
        # The header says the clock is local but not which zone: the name is that same
        # local clock, so reading it as UTC would be a guess.
        return _explicit_or(known, explicit)
    named = filename_time(path)
    if named is not None:
        if known.tz_offset is not None:
            utc, offset, note = named - known.tz_offset, known.tz_offset, ""
        elif tz is not None:
            aware = named.replace(tzinfo=tz)
            utc, offset, note = aware.astimezone(timezone.utc).replace(tzinfo=None), \
                aware.utcoffset(), f"file name read in {tz}"
        else:
            utc, offset, note = named, timedelta(0), "file name read as UTC (AudioMoth default)"
        return replace(known, utc=utc.replace(tzinfo=timezone.utc), source="filename",
                       tz_offset=offset, note=note)
    return _explicit_or(known, explicit)


def _from_header(header: HeaderText, tz: tzinfo | None) -> RecordingStart | None:
    comment = parse_audiomoth_comment(header.comment) if header.comment else None
    guano = guano_start(parse_guano(header.guano), tz) if header.guano else None
    if comment is None:
        return guano
    if comment.device_id is None and header.artist.startswith("AudioMoth "):
        comment = replace(comment, device_id=header.artist.split()[1].upper())
    if guano is not None and comment.location is None:
        comment = replace(comment, location=guano.location)
    return comment


def _guano_is_local(header: HeaderText) -> bool:
    stamp = parse_guano(header.guano).get("Timestamp", "") if header.guano else ""
    try:
        return bool(stamp) and _guano_time(stamp).tzinfo is None
    except ValueError:
        return False


def _explicit_or(known: RecordingStart, explicit: datetime | str | None) -> RecordingStart:
    if explicit is None:
        return replace(known, utc=None, source="unknown",
                       note=known.note or "no recorder header, no date in the file name and "
                                          "no --audio-start-time")
    when = parse_explicit_start(explicit) if isinstance(explicit, str) else explicit
    if when.tzinfo is None:
        raise UserError(f"explicit start time {when.isoformat()} has no time zone")
    return replace(known, utc=when.astimezone(timezone.utc), source="explicit", note="")
