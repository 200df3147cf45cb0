"""Local calendar of a service point, vectorised over UTC epoch seconds.

Tariff bands, day types, tier periods and standing-charge days are local rules.
``LocalCalendar.fields(epoch_s)`` converts a numpy array of UTC epoch seconds to
local fields without a Python loop per instant: the UTC offset is looked up once per
distinct 15-minute slot (every real time-zone transition falls on a quarter hour),
then applied with numpy.

Day types: ``holiday`` (listed by the ``holidays`` package for the country and
subdivision), ``weekend`` (Saturday, Sunday), ``weekday``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import holidays
import numpy as np
import numpy.typing as npt

SLOT_S = 900
_EPOCH = date(1970, 1, 1)
WEEKDAY, WEEKEND, HOLIDAY = 0, 1, 2  # indexes into tariffs.DAY_TYPES


@dataclass(frozen=True)
class LocalFields:
    local_day: npt.NDArray[np.int64]  # days since 1970-01-01 of the local date
    minute: npt.NDArray[np.int64]  # local minute of day, 0..1439
    day_type: npt.NDArray[np.int64]  # WEEKDAY / WEEKEND / HOLIDAY
    month: npt.NDArray[np.int64]  # local year*12 + month-1
    year: npt.NDArray[np.int64]  # local year


@dataclass
class LocalCalendar:
    timezone: str = "Asia/Shanghai"
    country: str = "CN"
    subdivision: str | None = None
    _tz: ZoneInfo = field(init=False, repr=False)
    _holidays: dict[int, frozenset[int]] = field(init=False, default_factory=dict, repr=False)
    _holiday_arrays: dict[tuple[int, ...], npt.NDArray[np.int64]] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._tz = ZoneInfo(self.timezone)

    def holiday_days(self, year: int) -> frozenset[int]:
        """Local day numbers of the public holidays of ``year``."""
        if year not in self._holidays:
            try:
                days = list(holidays.country_holidays(self.country, subdiv=self.subdivision, years=year))
            except NotImplementedError:
                days = []
            self._holidays[year] = frozenset((d - _EPOCH).days for d in days)
        return self._holidays[year]

    def is_holiday(self, day: date) -> bool:
        return (day - _EPOCH).days in self.holiday_days(day.year)

    def offsets_s(self, epoch_s: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        slots = epoch_s // SLOT_S
        uniq, inverse = np.unique(slots, return_inverse=True)
        offs = np.empty(uniq.shape, dtype=np.int64)
        for i, slot in enumerate(uniq.tolist()):
            utc = datetime.fromtimestamp(slot * SLOT_S, UTC)
            delta = utc.astimezone(self._tz).utcoffset() or timedelta(0)
            offs[i] = int(delta.total_seconds())
        return offs[inverse.reshape(epoch_s.shape)]

    def fields(self, epoch_s: npt.NDArray[np.int64]) -> LocalFields:
        epoch_s = np.asarray(epoch_s, dtype=np.int64)
        local = epoch_s + self.offsets_s(epoch_s)
        day = local // 86400
        minute = (local % 86400) // 60
        dt_days = day.astype("datetime64[D]")
        year = dt_days.astype("datetime64[Y]").astype(np.int64) + 1970
        month = dt_days.astype("datetime64[M]").astype(np.int64) + 1970 * 12
        weekday = (day + 3) % 7  # 1970-01-01 was a Thursday (weekday() == 3)
        day_type = np.where(weekday >= 5, WEEKEND, WEEKDAY).astype(np.int64)
        years = tuple(np.unique(year).tolist())
        hol = self._holiday_arrays.get(years)
        if hol is None:
            days: set[int] = set()
            for y in years:
                days |= self.holiday_days(int(y))
            hol = self._holiday_arrays[years] = np.array(sorted(days), np.int64)
        if hol.size:
            day_type = np.where(np.isin(day, hol), HOLIDAY, day_type)
        return LocalFields(day, minute, day_type, month, year)

    def local(self, at: datetime) -> datetime:
        return at.astimezone(self._tz)

    def local_date(self, at: datetime) -> date:
        return at.astimezone(self._tz).date()

    def day_bounds(self, day: date) -> tuple[datetime, datetime]:
        """UTC start and end of a local date (handles 23 h and 25 h days)."""
        start = datetime(day.year, day.month, day.day, tzinfo=self._tz)
        nxt = day + timedelta(days=1)
        end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=self._tz)
        return start.astimezone(UTC), end.astimezone(UTC)
