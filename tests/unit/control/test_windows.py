"""Windows in local time: holidays, the day before, DST gaps and repeated hours."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from control.models import Reason
from control.policy import Window
from control.windows import HolidayCalendar, blocks, calendar_for, next_allowed, zone
from tests.unit.control.factories import cn_residential, local

POLICY = cn_residential()
CN = calendar_for("CN", None)
SH = zone("Asia/Shanghai")
NY = zone("America/New_York")
US = calendar_for("US", None)
# A window 01:00-03:00 on every day: both DST transitions of New York touch it.
NIGHT = POLICY.model_copy(update={"windows": (Window(weekdays=(1, 2, 3, 4, 5, 6, 7), start=time(1), end=time(3)),)})


def test_holiday_and_day_before_block() -> None:
    assert Reason.DAY_BEFORE_HOLIDAY in blocks(local(2026, 9, 30, 10), POLICY, SH, CN)  # Wed before National Day
    assert Reason.HOLIDAY in blocks(local(2026, 10, 1, 10), POLICY, SH, CN)
    assert blocks(local(2026, 10, 8, 10), POLICY, SH, CN) == ()


def test_next_allowed_skips_weekend() -> None:
    friday_17 = local(2026, 11, 27, 17)
    assert next_allowed(friday_17, POLICY, SH, CN) == local(2026, 11, 30, 9)


def test_unknown_calendar_has_no_next_time() -> None:
    unknown = HolidayCalendar("XX")
    assert not unknown.known
    assert Reason.CALENDAR_UNKNOWN in blocks(local(2026, 11, 24, 10), POLICY, SH, unknown)
    assert next_allowed(local(2026, 11, 24, 10), POLICY, SH, unknown) is None


def test_dst_gap_never_inside_window_when_wall_clock_is_not() -> None:
    # 8 March 2026, New York: 02:00 EST jumps to 03:00 EDT. 01:00-02:00 EST exists, 02:xx never does.
    policy = NIGHT.model_copy(update={"country": "US"})
    just_after_jump = datetime(2026, 3, 8, 7, 0, tzinfo=UTC)  # 03:00 EDT: outside 01:00-03:00
    assert Reason.OUTSIDE_WINDOW in blocks(just_after_jump, policy, NY, US)
    last_minute = datetime(2026, 3, 8, 6, 59, tzinfo=UTC)  # 01:59 EST: inside
    assert Reason.OUTSIDE_WINDOW not in blocks(last_minute, policy, NY, US)


def test_dst_gap_next_allowed_starts_inside_window() -> None:
    # Window 02:30-04:00 on the gap day: 02:30 local never happens; the first real instant is 03:00 EDT.
    policy = NIGHT.model_copy(
        update={"country": "US", "windows": (Window(weekdays=(7,), start=time(2, 30), end=time(4)),)}
    )
    found = next_allowed(datetime(2026, 3, 8, 5, 0, tzinfo=UTC), policy, NY, US)  # 00:00 EST
    assert found is not None
    assert found.astimezone(NY).time() >= time(3)
    assert found.astimezone(NY).time() < time(4)
    assert blocks(found, policy, NY, US) == ()


def test_dst_repeated_hour_stays_inside() -> None:
    # 1 November 2026, New York: 01:00-02:00 happens twice; both are inside 01:00-03:00 by the wall clock.
    policy = NIGHT.model_copy(update={"country": "US"})
    first = datetime(2026, 11, 1, 5, 30, tzinfo=UTC)  # 01:30 EDT
    second = first + timedelta(hours=1)  # 01:30 EST
    assert first.astimezone(NY).time() == second.astimezone(NY).time() == time(1, 30)
    assert Reason.OUTSIDE_WINDOW not in blocks(first, policy, NY, US)
    assert Reason.OUTSIDE_WINDOW not in blocks(second, policy, NY, US)
    assert Reason.OUTSIDE_WINDOW in blocks(datetime(2026, 11, 1, 8, 0, tzinfo=UTC), policy, NY, US)  # 03:00 EST


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)),
    st.sampled_from(["America/New_York", "Europe/London", "Australia/Lord_Howe", "Asia/Shanghai"]),
)
def test_property_next_allowed_is_allowed_and_first(after: datetime, tz_name: str) -> None:
    tz = ZoneInfo(tz_name)
    policy = NIGHT.model_copy(update={"country": "US"})
    found = next_allowed(after, policy, tz, US)
    assert found is not None and found >= after
    assert blocks(found, policy, tz, US) == ()
    # nothing allowed in the whole minutes strictly between
    probe = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    while probe < found - timedelta(minutes=1):
        assert blocks(probe, policy, tz, US) != ()
        probe += timedelta(minutes=17)
