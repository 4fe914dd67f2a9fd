"""Recording schedules with an injected clock: across midnight, across both DST changes of
Europe/Berlin in 2025, relative to sunrise/sunset, and in polar day and night."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from edge_runtime.contract.errors import UserError
from edge_runtime.schedule import Schedule, parse_window, run_scheduled

pytest.importorskip("astral")

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
BERLIN_LATLON = {"lat": 52.52, "lon": 13.40}
SVALBARD_LATLON = {"lat": 78.22, "lon": 15.65}  # Longyearbyen


def berlin(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN).astimezone(UTC)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def schedule(*windows: str, tz: str = "Europe/Berlin", **extra) -> Schedule:
    return Schedule.from_config({"timezone": tz, "windows": list(windows), **extra})


def run_clock(s: Schedule, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """What a recorder driven by `next_change` does: the intervals it listens in. The clock
    jumps from change to change, as the runtime sleeps between them."""
    now, listening = start, []
    opened = now if s.active(now) else None
    while now < end:
        change = s.next_change(now)
        if change is None or change >= end:
            break
        assert change > now
        assert s.active(change - timedelta(microseconds=1)) != s.active(change)
        now = change
        if s.active(now):
            opened = now
        else:
            listening.append((opened, now))
            opened = None
    if opened is not None:
        listening.append((opened, end))
    return listening


def test_fixed_window_across_midnight():
    s = schedule("21:00-05:00")
    assert not s.active(berlin(2025, 6, 3, 20, 59, 59))
    assert s.active(berlin(2025, 6, 3, 21, 0))
    assert s.active(berlin(2025, 6, 4, 0, 0))
    assert s.active(berlin(2025, 6, 4, 4, 59, 59))
    assert not s.active(berlin(2025, 6, 4, 5, 0))
    assert s.next_change(berlin(2025, 6, 3, 12, 0)) == berlin(2025, 6, 3, 21, 0)
    assert s.next_change(berlin(2025, 6, 3, 23, 0)) == berlin(2025, 6, 4, 5, 0)


def test_a_week_with_an_injected_clock():
    s = schedule("21:00-05:00", "12:00-12:30")
    got = run_clock(s, berlin(2025, 6, 2, 0, 0), berlin(2025, 6, 9, 0, 0))
    # The first night started on June 1; the last one is cut by the end of the run.
    assert got[0] == (berlin(2025, 6, 2, 0, 0), berlin(2025, 6, 2, 5, 0))
    assert got[1] == (berlin(2025, 6, 2, 12, 0), berlin(2025, 6, 2, 12, 30))
    assert len(got) == 1 + 7 * 2
    # 5 h left of June 1's night, 7 noon half-hours, 6 whole nights, 3 h of June 8's night.
    assert sum((e - s).total_seconds() for s, e in got) == (5 + 7 * 0.5 + 6 * 8 + 3) * 3600


def test_spring_forward_night_is_an_hour_shorter():
    # Europe/Berlin, 2025-03-30 02:00 CET -> 03:00 CEST.
    s = schedule("21:00-05:00")
    night = run_clock(s, utc(2025, 3, 29, 12), utc(2025, 3, 30, 12))
    assert night == [(utc(2025, 3, 29, 20), utc(2025, 3, 30, 3))]  # 21:00 CET .. 05:00 CEST: 7 h
    # A time that does not exist that night is read with the offset before the jump.
    gap = run_clock(schedule("02:30-04:00"), utc(2025, 3, 29, 12), utc(2025, 3, 30, 12))
    assert gap == [(utc(2025, 3, 30, 1, 30), utc(2025, 3, 30, 2))]


def test_fall_back_night_is_an_hour_longer():
    # Europe/Berlin, 2025-10-26 03:00 CEST -> 02:00 CET.
    s = schedule("21:00-05:00")
    night = run_clock(s, utc(2025, 10, 25, 12), utc(2025, 10, 26, 12))
    assert night == [(utc(2025, 10, 25, 19), utc(2025, 10, 26, 4))]  # 9 h
    # 02:30 happens twice: the first one (CEST) starts the window.
    twice = run_clock(schedule("02:30-03:00"), utc(2025, 10, 25, 12), utc(2025, 10, 26, 12))
    assert twice == [(utc(2025, 10, 26, 0, 30), utc(2025, 10, 26, 2))]


def test_sunrise_window_in_berlin():
    s = schedule("sunrise-30m..sunrise+2h", **BERLIN_LATLON)
    (start, end), = run_clock(s, berlin(2025, 6, 21, 0, 0), berlin(2025, 6, 21, 23, 0))
    # Sunrise in Berlin on 2025-06-21 is 04:43 CEST (02:43 UTC).
    assert abs(start - utc(2025, 6, 21, 2, 13)) < timedelta(minutes=1.5)
    assert end - start == timedelta(hours=2, minutes=30)


def test_sun_windows_follow_the_sun_not_the_clock_change():
    s = schedule("sunrise..sunrise+1h", **BERLIN_LATLON)
    before = s.intervals(utc(2025, 3, 29), utc(2025, 3, 30))
    after = s.intervals(utc(2025, 3, 30), utc(2025, 3, 31))
    # Sunrise is 05:47 CET on the 29th and 06:45 CEST on the 30th: two minutes earlier in UTC.
    shift = after[0][0] - before[0][0] - timedelta(days=1)
    assert timedelta(minutes=-3) < shift < timedelta(minutes=-1)
    assert abs(before[0][0] - utc(2025, 3, 29, 4, 47)) < timedelta(minutes=1.5)


def test_sunset_to_sunrise_crosses_midnight():
    s = schedule("sunset..sunrise", **BERLIN_LATLON)
    assert s.active(berlin(2025, 6, 21, 23, 59))
    assert s.active(berlin(2025, 6, 22, 3, 0))
    assert not s.active(berlin(2025, 6, 22, 12, 0))
    change = s.next_change(berlin(2025, 6, 22, 3, 0))
    assert abs(change - utc(2025, 6, 22, 2, 43)) < timedelta(minutes=1.5)  # 04:43 CEST


def test_polar_day_and_night_skip_by_default():
    s = schedule("sunrise-1h..sunrise+1h", tz="Arctic/Longyearbyen", **SVALBARD_LATLON)
    midsummer = utc(2025, 6, 21, 12)
    assert s.intervals(midsummer - timedelta(days=1), midsummer + timedelta(days=1)) == []
    assert not s.active(midsummer)
    info = s.describe(midsummer)
    assert info["active"] is False and "2025-06-21" in info["polar_days"]
    # The sun sets again in late August; that is the next change.
    change = s.next_change(midsummer)
    assert change is not None and utc(2025, 8, 10) < change < utc(2025, 9, 5)
    assert s.intervals(utc(2025, 12, 20), utc(2025, 12, 22)) == []  # polar night


def test_polar_all_day_records_the_whole_local_day():
    s = schedule("sunset-1h..sunset", tz="Arctic/Longyearbyen", polar="all-day",
                 **SVALBARD_LATLON)
    day = s.intervals(utc(2025, 6, 20, 22), utc(2025, 6, 21, 22))  # 21 June, local (UTC+2)
    assert day == [(utc(2025, 6, 20, 22), utc(2025, 6, 21, 22))]
    assert s.active(utc(2025, 6, 21, 12))


def test_always_and_all_day():
    always = Schedule.from_config(None)
    assert always.active(utc(2025, 1, 1)) and always.next_change(utc(2025, 1, 1)) is None
    assert always.describe(utc(2025, 1, 1))["state"] == "recording (no schedule)"
    full = schedule("00:00-24:00")
    assert full.active(berlin(2025, 3, 30, 2, 30)) and full.next_change(utc(2025, 3, 30)) is None


def test_describe_for_the_stats_message():
    info = schedule("21:00-05:00").describe(berlin(2025, 6, 3, 12, 0))
    assert info["active"] is False
    assert info["next_change"] == "2025-06-03T19:00:00Z"
    assert info["state"] == "sleeping until 2025-06-03T21:00+02:00"
    assert info["today"] == [["2025-06-03T00:00+02:00", "2025-06-03T05:00+02:00"],
                             ["2025-06-03T21:00+02:00", "2025-06-04T00:00+02:00"]]


def test_overlapping_windows_merge():
    s = schedule("20:00-22:00", "21:00-23:00")
    assert s.next_change(berlin(2025, 6, 3, 20, 30)) == berlin(2025, 6, 3, 23, 0)


@pytest.mark.parametrize("spec, error", [
    ("21:00", "expected HH:MM-HH:MM"),
    ("25:00-05:00", "not a time of day"),
    ("noon..sunset", "neither HH:MM nor"),
    ("sunrise-13h..sunrise", "over 12 h"),
    ("sunrise..sunrise", "starts where it ends"),
    ("24:00-05:00", "cannot start at 24:00"),
])
def test_window_errors(spec, error):
    with pytest.raises(UserError, match=error):
        parse_window(spec)


def test_window_syntax():
    w = parse_window(" Sunset - 1h30m .. sunrise+45s ")
    assert (w.start.anchor, w.start.minutes) == ("sunset", -90)
    assert (w.end.anchor, w.end.minutes) == ("sunrise", 0.75)
    w = parse_window("21:00-05:00")
    assert (w.start.minutes, w.end.minutes) == (21 * 60, 5 * 60)


def test_config_errors_are_one_line():
    with pytest.raises(UserError, match=r"schedule.timezone: required"):
        Schedule.from_config({"windows": ["21:00-05:00"]})
    with pytest.raises(UserError, match=r"schedule.windows\[1\] 'x'"):
        Schedule.from_config({"timezone": "UTC", "windows": ["21:00-05:00", "x"]})
    with pytest.raises(UserError, match="did you mean 'windows'"):
        Schedule.from_config({"timezone": "UTC", "window": ["21:00-05:00"]})
    with pytest.raises(UserError, match="lat and lon"):
        Schedule.from_config({"timezone": "UTC", "windows": ["sunrise..sunrise+1h"]})
    with pytest.raises(UserError, match="IANA"):
        Schedule.from_config({"timezone": "Berlin", "windows": ["21:00-05:00"]})
    with pytest.raises(UserError, match="polar"):
        Schedule.from_config({"timezone": "UTC", "windows": ["1:00-2:00"], "polar": "never"})
    with pytest.raises(UserError, match="a list"):
        Schedule.from_config({"timezone": "UTC", "windows": "21:00-05:00"})
    # The device location is the default site.
    s = Schedule.from_config({"timezone": "UTC", "windows": ["sunrise..sunset"]}, lat=0, lon=0)
    assert s.active(utc(2025, 3, 20, 12))


def test_naive_times_are_a_bug():
    with pytest.raises(ValueError, match="aware"):
        schedule("21:00-05:00").active(datetime(2025, 6, 3, 21))


class SimulatedRecorder:
    """An injected clock and a microphone that reads 1 s blocks: what run_scheduled drives."""

    def __init__(self, start: datetime, end: datetime):
        self.now, self.end = start, end
        self.blocks: list[datetime] = []  # start time of every block read
        self.opened = 0
        self.sleeps: list[float] = []

    def clock(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> bool:
        self.sleeps.append(seconds)
        self.now += timedelta(seconds=seconds)
        return self.now < self.end

    def listen(self, until: datetime | None) -> bool:
        self.opened += 1  # the microphone is open only inside this call
        while (until is None or self.now < until) and self.now < self.end:
            self.blocks.append(self.now)
            self.now += timedelta(seconds=1)
        return self.now < self.end


def test_no_audio_is_read_outside_the_windows():
    s = schedule("21:00-05:00", "sunrise-30m..sunrise+1h", **BERLIN_LATLON)
    start, end = berlin(2025, 10, 24, 12, 0), berlin(2025, 10, 27, 12, 0)  # across fall-back
    rec = SimulatedRecorder(start, end)
    run_scheduled(s, rec.clock, rec.sleep, rec.listen)
    windows = s.intervals(start, end)
    assert all(any(a <= t and t + timedelta(seconds=1) <= b for a, b in windows)
               for t in rec.blocks)
    assert len(rec.blocks) == sum((b - a).total_seconds() for a, b in windows)
    assert rec.opened == len(windows) == 6  # 3 nights and 3 dawns, each opened once
    assert max(rec.sleeps) <= 300  # re-checks the clock at least every 5 minutes


def test_run_scheduled_stops_when_told():
    s = schedule("21:00-05:00")
    rec = SimulatedRecorder(berlin(2025, 6, 3, 12, 0), berlin(2025, 6, 3, 22, 0))
    run_scheduled(s, rec.clock, rec.sleep, rec.listen)
    assert rec.opened == 1 and len(rec.blocks) == 3600
