"""Load profiles: realistic daily shapes of demand, and a simple PV generation shape.

The shapes are the BDEW standard load profiles (German utility association), read from the
data file that ships inside the installed ``demandlib`` package (``bdew/bdew_data/selp_series.csv``,
no network, no pandas): quarter-hour values for three seasons x seven day types of

    h0  household                    g0  commercial, general     g1  commercial, weekdays 8-18
    g2  commercial, evening focus    g3  commercial, continuous  g4  shop / hairdresser
    g5  bakery                       g6  weekend business        l0  agriculture, general
    l1  agriculture, dairy           l2  agriculture, other

plus ``constant`` (flat, for tests and base loads). BDEW seasons: winter 1 Nov - 20 Mar,
summer 15 May - 14 Sep, transition otherwise; Sundays and public holidays use the Sunday
shape. H0 is "dynamised" with BDEW's daily polynomial (winter ~1.24x, summer ~0.8x), the
published seasonal variation of household demand.

Every profile is normalised so that a meter with ``annual_kwh`` consumes that much over a
(non-leap) year: ``demand_w = shape[profile, season, day type, quarter] * annual_kwh * 1000``.
Pure: the data file is read once; no clock, no other I/O.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import math
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from simulators.errors import ProfileError

FloatArray = npt.NDArray[np.float64]

BDEW_PROFILES = ("h0", "g0", "g1", "g2", "g3", "g4", "g5", "g6", "l0", "l1", "l2")
PROFILES = (*BDEW_PROFILES, "constant")
SEASONS = ("winter", "summer", "transition")
QUARTERS_PER_DAY = 96


def season_of(day: date) -> int:
    """BDEW season index (into ``SEASONS``) of a local date."""
    md = (day.month, day.day)
    if md >= (11, 1) or md <= (3, 20):
        return 0
    if (5, 15) <= md <= (9, 14):
        return 1
    return 2


def h0_dynamisation(day_of_year: float) -> float:
    """BDEW's H0 dynamisation factor for a day of the year (1..366)."""
    t = day_of_year
    return -3.92e-10 * t**4 + 3.2e-7 * t**3 - 7.02e-5 * t**2 + 2.1e-3 * t + 1.24


def _bdew_csv() -> Path:
    spec = importlib.util.find_spec("demandlib")
    if spec is None or not spec.submodule_search_locations:
        raise ProfileError("demandlib is not installed; it carries the BDEW profile data")
    path = Path(next(iter(spec.submodule_search_locations))) / "bdew" / "bdew_data" / "selp_series.csv"
    if not path.is_file():
        raise ProfileError(f"BDEW profile data not found at {path}")
    return path


@dataclass(frozen=True)
class ProfileTable:
    """Normalised shapes: ``shapes[profile, season, weekday 0=Mon..6=Sun, quarter]`` in kW per kWh/a."""

    names: tuple[str, ...]
    shapes: FloatArray

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise ProfileError(f"unknown load profile {name!r}; known: {', '.join(self.names)}") from None

    def factors(self, local: datetime, holiday: bool = False) -> FloatArray:
        """kW per kWh/a of every profile at a local time (one value per profile)."""
        day = local.date()
        weekday = 6 if holiday else day.weekday()
        quarter = (local.hour * 60 + local.minute) // 15
        f: FloatArray = self.shapes[:, season_of(day), weekday, quarter].copy()
        f[self.names.index("h0")] *= h0_dynamisation(day.timetuple().tm_yday)
        return f

    def demand_w(
        self, profile_idx: npt.NDArray[np.int16], annual_kwh: FloatArray, local: datetime, holiday: bool = False
    ) -> FloatArray:
        """Mean demand in W of each meter (profile index, annual consumption) at a local time."""
        out: FloatArray = self.factors(local, holiday)[profile_idx] * annual_kwh * 1000.0
        return out

    def annual_kwh(self, name: str, year: int = 2023) -> float:
        """Energy over one year for 1 kWh/a (1.0 by construction; used by tests)."""
        return _year_sum(self.shapes[self.index(name)], year, dynamise=(name == "h0"))


def _year_sum(shape: FloatArray, year: int, *, dynamise: bool) -> float:
    total = 0.0
    day = date(year, 1, 1)
    while day.year == year:
        f = h0_dynamisation(day.timetuple().tm_yday) if dynamise else 1.0
        total += float(shape[season_of(day), day.weekday()].sum()) * 0.25 * f
        day = date.fromordinal(day.toordinal() + 1)
    return total


@functools.cache
def load_profiles() -> ProfileTable:
    """Read the BDEW shapes once and normalise each to 1 kWh per year (reference year 2023)."""
    raw = np.zeros((len(PROFILES), len(SEASONS), 7, QUARTERS_PER_DAY))
    seen = np.zeros((len(SEASONS), 7, QUARTERS_PER_DAY), dtype=bool)
    with _bdew_csv().open(newline="") as fh:
        reader = csv.DictReader(fh)
        for row in reader:
            season = SEASONS.index(row["period"])
            weekday = int(row["weekday"]) - 1  # file: 1 = Monday .. 7 = Sunday/holiday
            hh, mm = row[""].split(" ")[1].split(":")[:2]  # "2007-01-01 00:15:00": only the time counts
            quarter = (int(hh) * 60 + int(mm)) // 15
            for p, name in enumerate(BDEW_PROFILES):
                raw[p, season, weekday, quarter] = float(row[name])
            seen[season, weekday, quarter] = True
    if not seen.all():
        raise ProfileError("BDEW profile data is incomplete")
    raw[PROFILES.index("constant")] = 1.0
    for p, name in enumerate(PROFILES):
        raw[p] /= _year_sum(raw[p], 2023, dynamise=(name == "h0"))
    return ProfileTable(PROFILES, raw)


def pv_factor(local: datetime) -> float:
    """Clear-sky PV output per kWp (kW) at a local time: a sine over the day, longer and higher in summer."""
    doy = local.timetuple().tm_yday
    summer = math.cos(2 * math.pi * (doy - 172) / 365.0)  # +1 at the June solstice, -1 in December
    day_length_h = 12.0 + 3.0 * summer
    sunrise = 12.0 - day_length_h / 2
    hour = local.hour + local.minute / 60 + local.second / 3600
    if not sunrise < hour < sunrise + day_length_h:
        return 0.0
    peak_kw_per_kwp = 0.55 + 0.2 * summer
    return peak_kw_per_kwp * math.sin(math.pi * (hour - sunrise) / day_length_h)
