"""Tariff definitions: the schema (validated with pydantic) and its compiled form.

A tariff has versions, each a definition with an ``effective_from`` instant. An
interval is priced by the version in force at the interval's *start*; a new version
never re-rates an interval that starts before its date.

Definition JSON (decimal strings, never floats; prices per kWh in major units)::

    {"kind": "flat", "currency": "CNY", "price_per_kwh": "0.56",
     "standing_charge_per_day": "0.00"}

    {"kind": "tou", "currency": "CNY", "bands": [
        {"name": "peak",   "start": "08:00", "end": "22:00", "price_per_kwh": "0.62",
         "day_types": ["weekday"]},
        {"name": "valley", "start": "22:00", "end": "08:00", "price_per_kwh": "0.31",
         "day_types": ["weekday"]},
        {"name": "offday", "start": "00:00", "end": "24:00", "price_per_kwh": "0.40",
         "day_types": ["weekend", "holiday"]}]}

    {"kind": "tiered", "currency": "CNY", "period": "year", "blocks": [
        {"up_to_kwh": "2760", "price_per_kwh": "0.5283"},
        {"up_to_kwh": "4800", "price_per_kwh": "0.5783"},
        {"up_to_kwh": null,   "price_per_kwh": "0.8283"}]}

Rules checked at validation:
- TOU bands are local wall-clock times; for every day type (weekday, weekend,
  holiday) the bands cover the 24 h exactly once (no gap, no overlap). A band may
  wrap midnight (22:00-08:00). ``day_types`` defaults to all three.
- Day type of a local date: ``holiday`` if the ``holidays`` calendar of the service
  point's country (and subdivision) lists it, else ``weekend`` on Saturday/Sunday,
  else ``weekday``.
- Tier blocks: increasing ``up_to_kwh`` (whole Wh), the last one open (null).
  Cumulative use restarts at the start of each local calendar month or year.
- Prices convert exactly to integer µ-minor units per Wh (see money.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from prepaid import money
from prepaid.errors import TariffError

DayType = Literal["weekday", "weekend", "holiday"]
DAY_TYPES: tuple[DayType, ...] = ("weekday", "weekend", "holiday")
MINUTES_PER_DAY = 1440
UNBOUNDED_WH = np.iinfo(np.int64).max // 4


def _hhmm(value: str) -> int:
    try:
        hh, mm = value.split(":")
        minutes = int(hh) * 60 + int(mm)
    except ValueError:
        raise ValueError(f"time must be HH:MM, got {value!r}") from None
    if not (0 <= int(mm) < 60 and 0 <= minutes <= MINUTES_PER_DAY):
        raise ValueError(f"time out of range: {value!r}")
    return minutes


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    currency: str = "CNY"
    standing_charge_per_day: str = "0"

    @field_validator("currency")
    @classmethod
    def _currency(cls, v: str) -> str:
        money.minor_digits(v)
        return v

    @model_validator(mode="after")
    def _standing(self) -> _Base:
        if money.to_minor(self.standing_charge_per_day, self.currency) < 0:
            raise ValueError("standing_charge_per_day must not be negative")
        return self

    def standing_minor_per_day(self) -> int:
        return money.to_minor(self.standing_charge_per_day, self.currency)


class Flat(_Base):
    kind: Literal["flat"]
    price_per_kwh: str

    @model_validator(mode="after")
    def _price(self) -> Flat:
        money.price_micro_per_wh(self.price_per_kwh, self.currency)
        return self


class Band(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=32)
    start: str
    end: str
    price_per_kwh: str
    day_types: tuple[DayType, ...] = DAY_TYPES

    @field_validator("start", "end")
    @classmethod
    def _time(cls, v: str) -> str:
        _hhmm(v)
        return v

    def minutes(self) -> list[int]:
        start, end = _hhmm(self.start) % MINUTES_PER_DAY, _hhmm(self.end)
        if end == MINUTES_PER_DAY or (end == 0 and start > 0):
            end = MINUTES_PER_DAY
        if start == end:
            raise ValueError(f"band {self.name} is empty")
        if start < end:
            return list(range(start, end))
        return list(range(start, MINUTES_PER_DAY)) + list(range(0, end))


class Tou(_Base):
    kind: Literal["tou"]
    bands: tuple[Band, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _cover(self) -> Tou:
        for band in self.bands:
            money.price_micro_per_wh(band.price_per_kwh, self.currency)
        if len({b.name for b in self.bands}) != len(self.bands):
            raise ValueError("band names must be unique")
        band_table(self)  # raises on gaps and overlaps
        return self


class Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    up_to_kwh: str | None
    price_per_kwh: str

    def up_to_wh(self) -> int | None:
        if self.up_to_kwh is None:
            return None
        wh = money.parse_decimal(self.up_to_kwh) * 1000
        if wh != wh.to_integral_value() or wh <= 0:
            raise ValueError(f"up_to_kwh {self.up_to_kwh} must be a positive whole number of Wh")
        return int(wh)


class Tiered(_Base):
    kind: Literal["tiered"]
    period: Literal["month", "year"]
    blocks: tuple[Block, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _blocks(self) -> Tiered:
        bounds = [b.up_to_wh() for b in self.blocks]
        if bounds[-1] is not None or any(b is None for b in bounds[:-1]):
            raise ValueError("only the last block is open (up_to_kwh null)")
        closed = [b for b in bounds if b is not None]
        if closed != sorted(set(closed)):
            raise ValueError("block bounds must increase")
        for block in self.blocks:
            money.price_micro_per_wh(block.price_per_kwh, self.currency)
        return self


Definition = Annotated[Flat | Tou | Tiered, Field(discriminator="kind")]
_ADAPTER: TypeAdapter[Flat | Tou | Tiered] = TypeAdapter(Definition)


def parse_definition(raw: object) -> Flat | Tou | Tiered:
    """Validate a tariff definition document; TariffError with the reasons if invalid."""
    try:
        return _ADAPTER.validate_python(raw)
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise TariffError(f"invalid tariff definition: {reasons}") from exc


def band_table(tou: Tou) -> npt.NDArray[np.int16]:
    """Band index for every (day type, local minute of day); raises on gap or overlap."""
    table = np.full((len(DAY_TYPES), MINUTES_PER_DAY), -1, dtype=np.int16)
    for idx, band in enumerate(tou.bands):
        minutes = np.array(band.minutes(), dtype=np.int64)
        for day_type in band.day_types:
            row = DAY_TYPES.index(day_type)
            if (table[row, minutes] >= 0).any():
                raise ValueError(f"band {band.name} overlaps another band on {day_type}")
            table[row, minutes] = idx
    for row, day_type in enumerate(DAY_TYPES):
        gaps = np.flatnonzero(table[row] < 0)
        if gaps.size:
            first = int(gaps[0])
            raise ValueError(f"no band covers {day_type} {first // 60:02d}:{first % 60:02d}")
    return table


@dataclass(frozen=True)
class Version:
    """A compiled tariff version: integer rates ready for vectorised pricing."""

    effective_from: datetime
    definition: Flat | Tou | Tiered
    labels: tuple[str, ...]  # band names (tou) or block labels (tiered) or ("flat",)
    rates: npt.NDArray[np.int64]  # µ-minor per Wh, one per label
    band_of: npt.NDArray[np.int16] | None  # tou: (day type, minute) -> label index
    block_upper_wh: npt.NDArray[np.int64] | None  # tiered: exclusive upper bound of each block
    period: Literal["month", "year"] | None
    standing_minor_per_day: int

    @property
    def effective_from_s(self) -> int:
        return int(self.effective_from.timestamp())


def compile_version(effective_from: datetime, raw: object) -> Version:
    if effective_from.tzinfo is None:
        raise TariffError("effective_from must be timezone-aware")
    d = raw if isinstance(raw, Flat | Tou | Tiered) else parse_definition(raw)
    if isinstance(d, Flat):
        labels: tuple[str, ...] = ("flat",)
        rates = [money.price_micro_per_wh(d.price_per_kwh, d.currency)]
        return Version(
            effective_from, d, labels, np.array(rates, np.int64), None, None, None, d.standing_minor_per_day()
        )
    if isinstance(d, Tou):
        labels = tuple(b.name for b in d.bands)
        rates = [money.price_micro_per_wh(b.price_per_kwh, d.currency) for b in d.bands]
        return Version(
            effective_from, d, labels, np.array(rates, np.int64), band_table(d), None, None, d.standing_minor_per_day()
        )
    labels = tuple(f"block{i + 1}" for i in range(len(d.blocks)))
    rates = [money.price_micro_per_wh(b.price_per_kwh, d.currency) for b in d.blocks]
    upper = [b.up_to_wh() or int(UNBOUNDED_WH) for b in d.blocks]
    return Version(
        effective_from,
        d,
        labels,
        np.array(rates, np.int64),
        None,
        np.array(upper, np.int64),
        d.period,
        d.standing_minor_per_day(),
    )


def compile_versions(rows: list[tuple[datetime, object]]) -> list[Version]:
    """Compile (effective_from, definition) rows, ordered by effective_from."""
    versions = [compile_version(at, raw) for at, raw in sorted(rows, key=lambda r: r[0])]
    currencies = {v.definition.currency for v in versions}
    if len(currencies) > 1:
        raise TariffError(f"a tariff has one currency; versions use {sorted(currencies)}")
    return versions
