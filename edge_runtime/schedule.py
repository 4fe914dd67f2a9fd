"""A recording schedule: when the recorder listens, so a solar-powered one sleeps the rest.

    [schedule]
    timezone = "Europe/Berlin"       # the site's zone: windows are local wall-clock times
    windows = ["21:00-05:00", "sunrise-30m..sunrise+2h", "sunset..sunset+1h30m"]
    polar = "skip"                   # or "all-day"

In edge-runtime (edge_runtime.config.ScheduleConfig) sun windows use `[device]` lat/lon, and
`edge_runtime.recording` runs one listening period per window (`run_scheduled` below): the
microphone is opened when a window opens and closed when it ends. `Schedule.from_config` also
takes `lat`/`lon` keys for other callers.

A window is `HH:MM-HH:MM` (fixed local times; `24:00` ends at midnight) or `A..B` where each
end is `HH:MM` or `sunrise`/`sunset`/`dawn`/`dusk` (civil twilight) with an optional offset
such as `-30m`, `+2h`, `+1h30m` (at most 12 h). A window starts on every local day; when its
end is not after its start it ends on the next day, so `21:00-05:00` and `sunset..sunrise`
cross midnight. Overlapping windows merge. No windows: always recording.

Daylight saving: times are wall-clock times in `timezone` (zoneinfo), so `21:00-05:00` lasts
7 h on the night clocks go forward and 9 h on the night they go back. A time that does not
exist that night (02:30 when clocks jump from 02:00 to 03:00) is read with the offset before
the jump (= 03:30); a time that occurs twice is its first occurrence.

Polar rule: on a day without the sun event a window refers to (no sunrise in polar night or
polar day), `polar = "skip"` drops that window for that day; `polar = "all-day"` records the
whole local day instead. Which days that hit is in `describe()`.

The astral library (pure Python; the `edge` extra) computes the sun; only sun windows need it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from functools import lru_cache
from typing import Any, Literal

from edge_runtime.contract.errors import UserError
from edge_runtime.label_filter import did_you_mean

SUN_EVENTS = ("sunrise", "sunset", "dawn", "dusk")
POLAR_RULES = ("skip", "all-day")
CONFIG_KEYS = ("timezone", "lat", "lon", "windows", "polar")
_MAX_OFFSET_MIN = 12 * 60
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})$")
_SUN = re.compile(r"^(sunrise|sunset|dawn|dusk)((?:[+-](?:\d+(?:h|m|min|s))+)?)$")
_OFFSET_PART = re.compile(r"(\d+)(h|min|m|s)")
_UNIT_MIN = {"h": 60.0, "m": 1.0, "min": 1.0, "s": 1 / 60}
Interval = tuple[datetime, datetime]  # UTC, start inclusive, end exclusive


@dataclass(frozen=True)
class Endpoint:
    anchor: Literal["clock", "sunrise", "sunset", "dawn", "dusk"]
    minutes: float  # clock: after local midnight (0..1440); sun: offset from the event

    @property
    def is_sun(self) -> bool:
        return self.anchor != "clock"


@dataclass(frozen=True)
class Window:
    spec: str
    start: Endpoint
    end: Endpoint


def parse_window(spec: str, where: str = "schedule.windows") -> Window:
    """`"21:00-05:00"` or `"sunrise-30m..sunrise+2h"` -> Window; a UserError naming `where`."""
    text = "".join(str(spec).split()).lower()
    if ".." in text:
        parts = text.split("..")
    else:
        parts = text.split("-") if _CLOCK.match(text.split("-")[0]) else []
    if len(parts) != 2:
        raise UserError(f"{where} {spec!r}: expected HH:MM-HH:MM or START..END with ends such "
                        "as 21:00, sunrise-30m, sunset+1h")
    start, end = (_endpoint(p, spec, where) for p in parts)
    if start == end:
        raise UserError(f"{where} {spec!r}: starts where it ends; for all day write 00:00-24:00")
    if start.anchor == "clock" and start.minutes == 24 * 60:
        raise UserError(f"{where} {spec!r}: a window cannot start at 24:00; use 00:00")
    return Window(str(spec), start, end)


def _endpoint(text: str, spec: str, where: str) -> Endpoint:
    clock = _CLOCK.match(text)
    if clock:
        hours, minutes = int(clock.group(1)), int(clock.group(2))
        if minutes > 59 or hours > 24 or hours == 24 and minutes:
            raise UserError(f"{where} {spec!r}: {text} is not a time of day (00:00..24:00)")
        return Endpoint("clock", hours * 60.0 + minutes)
    sun = _SUN.match(text)
    if not sun:
        raise UserError(f"{where} {spec!r}: {text!r} is neither HH:MM nor "
                        f"{'/'.join(SUN_EVENTS)} with an offset like -30m or +1h30m")
    offset = sum(int(n) * _UNIT_MIN[unit] for n, unit in _OFFSET_PART.findall(sun.group(2)))
    offset = -offset if sun.group(2).startswith("-") else offset
    if abs(offset) > _MAX_OFFSET_MIN:
        raise UserError(f"{where} {spec!r}: offset {sun.group(2)} is over 12 h")
    return Endpoint(sun.group(1), offset)  # type: ignore[arg-type]


class Schedule:
    """When to record. All times in and out are aware datetimes; results are in UTC."""

    def __init__(self, windows: Sequence[Window] = (), tz: tzinfo | str = timezone.utc,
                 lat: float | None = None, lon: float | None = None, polar: str = "skip",
                 where: str = "schedule") -> None:
        self.windows = tuple(windows)
        from edge_runtime.contract.recorder import zone  # lazily: keeps start-up short

        self.tz = zone(tz, f"{where}.timezone")
        if polar not in POLAR_RULES:
            raise UserError(f"{where}.polar {polar!r}: choose {' or '.join(POLAR_RULES)}")
        self.polar = polar
        self._observer = None
        if any(w.start.is_sun or w.end.is_sun for w in self.windows):
            self._observer = _observer(lat, lon, where)
        self.lat, self.lon = lat, lon
        self._day = lru_cache(maxsize=64)(self._day_uncached)
        self.polar_days: set[date] = set()  # local days a sun event did not happen

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None, where: str = "schedule",
                    lat: float | None = None, lon: float | None = None) -> Schedule:
        """From the `[schedule]` table. lat/lon default to the device's location."""
        section = dict(section or {})
        unknown = sorted(set(section) - set(CONFIG_KEYS))
        if unknown:
            raise UserError(f"{where}.{unknown[0]}: unknown key{did_you_mean(unknown[0], CONFIG_KEYS)}"
                            f"; known: {', '.join(CONFIG_KEYS)}")
        windows = section.get("windows", [])
        if isinstance(windows, str) or not isinstance(windows, Sequence):
            raise UserError(f"{where}.windows: expected a list of windows, e.g. "
                            '["21:00-05:00", "sunrise-30m..sunrise+2h"]')
        parsed = [parse_window(w, f"{where}.windows[{i}]") for i, w in enumerate(windows)]
        if parsed and "timezone" not in section:
            raise UserError(f"{where}.timezone: required with windows (the site's IANA zone, "
                            "e.g. Europe/Berlin, or UTC)")
        return cls(parsed, section.get("timezone", "UTC"), section.get("lat", lat),
                   section.get("lon", lon), section.get("polar", "skip"), where)

    # ------------------------------------------------------------------ queries
    def active(self, at_utc: datetime) -> bool:
        """Whether the recorder should be listening at `at_utc`."""
        if not self.windows:
            return True
        day = self._local_date(at_utc)
        return any(s <= at_utc < e for s, e in self._merged(day - timedelta(2), day + timedelta(1)))

    def next_change(self, at_utc: datetime) -> datetime | None:
        """The first moment after `at_utc` when `active` flips (the runtime sleeps until then
        without holding the microphone); None when it never changes (no windows, or a run of
        windows that covers the next two years)."""
        if not self.windows:
            return None
        day = self._local_date(at_utc)
        span = 4
        while span <= 800:
            last = day + timedelta(span)
            # A window of a later day starts at least 12 h before that day's midnight.
            safe = datetime.combine(last, time(0), self.tz).astimezone(timezone.utc) - \
                timedelta(days=1)
            for start, end in self._merged(day - timedelta(2), last):
                if end <= at_utc:
                    continue
                change = start if start > at_utc else end
                if change < safe:
                    return change
                break
            span *= 2
        return None

    def intervals(self, start_utc: datetime, end_utc: datetime) -> list[Interval]:
        """The merged recording intervals overlapping [start_utc, end_utc), clipped to it."""
        if not self.windows:
            return [(start_utc, end_utc)]
        first, last = self._local_date(start_utc), self._local_date(end_utc)
        return [(max(s, start_utc), min(e, end_utc))
                for s, e in self._merged(first - timedelta(2), last + timedelta(1))
                if s < end_utc and e > start_utc]

    def describe(self, at_utc: datetime) -> dict[str, Any]:
        """Schedule state for the stats message: active, next change, today's windows."""
        if not self.windows:
            return {"active": True, "next_change": None, "windows": [], "timezone": str(self.tz),
                    "state": "recording (no schedule)"}
        active, change = self.active(at_utc), self.next_change(at_utc)
        local_change = change.astimezone(self.tz) if change else None
        until = f" until {local_change.isoformat(timespec='minutes')}" if local_change else ""
        day = self._local_date(at_utc)
        midnight = datetime.combine(day, time(0), self.tz)
        today = self.intervals(midnight.astimezone(timezone.utc),
                               datetime.combine(day + timedelta(1), time(0), self.tz)
                               .astimezone(timezone.utc))
        return {
            "active": active,
            "next_change": change.isoformat().replace("+00:00", "Z") if change else None,
            "state": ("recording" if active else "sleeping") + until,
            "timezone": str(self.tz),
            "windows": [w.spec for w in self.windows],
            "today": [[s.astimezone(self.tz).isoformat(timespec="minutes"),
                       e.astimezone(self.tz).isoformat(timespec="minutes")] for s, e in today],
            "polar": self.polar,
            "polar_days": sorted(d.isoformat() for d in self.polar_days
                                 if abs((d - day).days) <= 1),
        }

    # ------------------------------------------------------------------ computing
    def _local_date(self, at_utc: datetime) -> date:
        if at_utc.tzinfo is None:
            raise ValueError("Schedule needs aware datetimes (UTC)")
        return at_utc.astimezone(self.tz).date()

    def _merged(self, first: date, last: date) -> list[Interval]:
        spans = sorted(iv for n in range((last - first).days + 1)
                       for iv in self._day(first + timedelta(n)))
        merged: list[Interval] = []
        for start, end in spans:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return merged

    def _day_uncached(self, day: date) -> list[Interval]:
        """UTC intervals of the windows that start on local `day`."""
        out = []
        for w in self.windows:
            start = self._at(day, w.start)
            end = self._at(day, w.end)
            if start is not None and end is not None and end <= start:
                end = self._at(day + timedelta(1), w.end)
            if start is None or end is None:
                if self.polar == "skip":
                    continue
                start = datetime.combine(day, time(0), self.tz).astimezone(timezone.utc)
                end = datetime.combine(day + timedelta(1), time(0), self.tz).astimezone(
                    timezone.utc)
            out.append((start, end))
        return out

    def _at(self, day: date, point: Endpoint) -> datetime | None:
        if point.anchor == "clock":
            extra, minutes = divmod(point.minutes, 24 * 60)
            wall = datetime.combine(day + timedelta(days=extra), time(0)) + \
                timedelta(minutes=minutes)
            return wall.replace(tzinfo=self.tz).astimezone(timezone.utc)
        event = _sun_event(self._observer, point.anchor, day, self.tz)
        if event is None:
            self.polar_days.add(day)
            return None
        return event.astimezone(timezone.utc) + timedelta(minutes=point.minutes)


def run_scheduled(schedule: Schedule, clock: Callable[[], datetime],
                  sleep: Callable[[float], bool], listen: Callable[[datetime | None], bool],
                  max_sleep_s: float = 300.0) -> None:
    """Drive a recorder by the schedule until told to stop.

    Outside the windows it calls `sleep(seconds)` (False = stop), never longer than
    `max_sleep_s`, so a clock that NTP corrects after boot is noticed. Inside a window it calls
    `listen(until)` (until: the window's end, None = open-ended), which opens the microphone,
    records until `clock() >= until`, closes it and returns False to stop. The microphone is
    therefore held only within windows. `clock` returns an aware UTC datetime.
    """
    while True:
        now = clock()
        change = schedule.next_change(now)
        if schedule.active(now):
            if not listen(change):
                return
            continue
        wait = max_sleep_s if change is None else (change - now).total_seconds()
        if not sleep(min(max(wait, 0.0), max_sleep_s)):
            return


def _observer(lat: float | None, lon: float | None, where: str):
    if lat is None or lon is None:
        raise UserError(f"{where}: sun windows need the site's lat and lon "
                        "(set device.lat and device.lon)")
    try:
        lat, lon = float(lat), float(lon)
    except (TypeError, ValueError):
        raise UserError(f"{where}.lat/lon {lat!r}, {lon!r}: not numbers") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise UserError(f"{where}.lat/lon {lat}, {lon}: out of range (-90..90, -180..180)")
    try:
        from astral import Observer
    except ImportError:
        raise UserError(f"{where}: sun windows need astral: pip install 'meerkit[edge]'") \
            from None
    return Observer(latitude=lat, longitude=lon)


def _sun_event(observer, event: str, day: date, tz: tzinfo) -> datetime | None:
    """The event on local `day`, or None when the sun does not cross that line (polar)."""
    from astral import sun

    try:
        return getattr(sun, event)(observer, day, tz)
    except ValueError:  # "Sun is always above/below the horizon on this day"
        return None
