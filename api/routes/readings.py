"""Readings (raw and aggregated with TimescaleDB ``time_bucket``) and meter events.

Aggregates bucket by 15 min, hour, day or month in a time zone (default UTC; day and
month buckets follow local midnight in that zone), per meter or per area (the
service points' ``area``). Time ranges are half-open ``[start, end)``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import AwareDatetime

from api import store
from api.auth import Readers
from api.deps import Conn, Now
from api.errors import NotFound, ProblemRoute, Unprocessable
from api.schemas import (
    BUCKET_INTERVAL,
    ID_PATTERN,
    OBIS_PATTERN,
    AggregateOut,
    AreaAggregateOut,
    Bucket,
    EventOut,
    Page,
    ReadingOut,
    TimeZone,
    period,
)

router = APIRouter(route_class=ProblemRoute, tags=["readings"])
Limit = Annotated[int, Query(ge=1, le=10000, description="page size")]
Start = Annotated[AwareDatetime | None, Query(description="inclusive; default: end minus the default span")]
End = Annotated[AwareDatetime | None, Query(description="exclusive; default: now")]
Obis = Annotated[str, Query(pattern=OBIS_PATTERN, description="OBIS code")]
Zone = Annotated[TimeZone, Query(description="IANA zone for bucket boundaries")]
MAX_BUCKETS = 10_000
DEFAULT_SPAN = {
    Bucket.m15: timedelta(days=1),
    Bucket.hour: timedelta(days=7),
    Bucket.day: timedelta(days=31),
    Bucket.month: timedelta(days=366),
}
APPROX_WIDTH = {
    Bucket.m15: timedelta(minutes=15),
    Bucket.hour: timedelta(hours=1),
    Bucket.day: timedelta(days=1),
    Bucket.month: timedelta(days=28),
}


def _bucket_range(
    start: datetime | None, end: datetime | None, now: datetime, bucket: Bucket
) -> tuple[datetime, datetime]:
    """The range of an aggregate: the bucket's default span, at most MAX_BUCKETS buckets."""
    start, end = period(start, end, now, lambda e: e - DEFAULT_SPAN[bucket])
    if (end - start) / APPROX_WIDTH[bucket] > MAX_BUCKETS:
        raise Unprocessable(
            f"the range holds more than {MAX_BUCKETS} {bucket.value} buckets; narrow it or use a wider bucket",
            code="validation",
            errors=[{"field": "query.start", "message": f"range too long for bucket {bucket.value}"}],
        )
    return start, end


def _cursor(value: str | None) -> tuple[datetime, str] | None:
    if value is None:
        return None
    ts, sep, obis = value.partition("|")
    try:
        parsed = datetime.fromisoformat(ts)
    except ValueError:
        parsed = None
    if not sep or parsed is None or parsed.tzinfo is None:
        raise Unprocessable(
            "after must be a cursor returned as 'next'",
            code="validation",
            errors=[{"field": "query.after", "message": "not a cursor returned by this API"}],
        )
    return parsed, obis


@router.get("/meters/{meter_id}/readings", response_model=Page[ReadingOut], summary="Raw readings of a meter")
async def readings(
    meter_id: str,
    conn: Conn,
    now: Now,
    _: Readers,
    obis: Annotated[str | None, Query(pattern=OBIS_PATTERN)] = None,
    start: Start = None,
    end: End = None,
    after: Annotated[str | None, Query(max_length=100, description="cursor: 'next' of the previous page")] = None,
    limit: Limit = 1000,
) -> Any:
    await store.get_meter(conn, meter_id)
    s, e = period(start, end, now, lambda e: e - timedelta(days=1))
    rows = await store.readings(conn, meter_id=meter_id, obis=obis, start=s, end=e, after=_cursor(after), limit=limit)
    last = rows[-1] if len(rows) == limit else None
    # UTC with "Z": a cursor pasted into a URL unencoded has no "+" to lose
    nxt = f"{last['ts'].astimezone(UTC).isoformat().replace('+00:00', 'Z')}|{last['obis']}" if last else None
    return {"items": rows, "next": nxt}


@router.get(
    "/meters/{meter_id}/readings/aggregate",
    response_model=AggregateOut,
    summary="Readings of one meter aggregated by 15min, hour, day or month",
)
async def meter_aggregate(
    meter_id: str,
    conn: Conn,
    now: Now,
    _: Readers,
    bucket: Bucket = Bucket.hour,
    obis: Obis = "1-0:1.8.0",
    tz: Zone = "UTC",
    start: Start = None,
    end: End = None,
) -> Any:
    await store.get_meter(conn, meter_id)
    s, e = _bucket_range(start, end, now, bucket)
    rows = await store.aggregate_meter(
        conn, meter_id=meter_id, obis=obis, interval=BUCKET_INTERVAL[bucket], timezone=tz, start=s, end=e
    )
    return {"meter_id": meter_id, "obis": obis, "bucket": bucket, "timezone": tz, "rows": rows}


@router.get(
    "/areas/{area}/readings/aggregate",
    response_model=AreaAggregateOut,
    summary="Register increase summed over an area's meters, by 15min, hour, day or month",
)
async def area_aggregate(
    area: str,
    conn: Conn,
    now: Now,
    _: Readers,
    bucket: Bucket = Bucket.day,
    obis: Obis = "1-0:1.8.0",
    tz: Zone = "UTC",
    start: Start = None,
    end: End = None,
) -> Any:
    if not await store.area_exists(conn, area):
        raise NotFound(f"area {area} not found")
    s, e = _bucket_range(start, end, now, bucket)
    rows = await store.aggregate_area(
        conn, area=area, obis=obis, interval=BUCKET_INTERVAL[bucket], timezone=tz, start=s, end=e
    )
    return {"area": area, "obis": obis, "bucket": bucket, "timezone": tz, "rows": rows}


@router.get("/events", response_model=list[EventOut], summary="Meter events (all meters or one)")
async def events(
    conn: Conn,
    now: Now,
    _: Readers,
    meter_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    kind: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    start: Start = None,
    end: End = None,
    limit: Limit = 1000,
) -> Any:
    s, e = period(start, end, now, lambda e: e - timedelta(days=7))
    return await store.events(conn, meter_id=meter_id, kind=kind, start=s, end=e, limit=limit)
