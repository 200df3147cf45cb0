"""Notices (list, get, delivery receipt) and quarantine (list, inspect, replay).

A delivery receipt sets ``notices.delivered_at`` (the first receipt wins): control's
guard requires a confirmed delivery before a disconnect. Replay re-submits the raw
payload of a quarantined message through ingest's decoder and writer.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from api import store
from api.auth import OPERATORS, Operators, Principal, Readers, requires_briefly
from api.deps import Conn, Now
from api.errors import ProblemRoute
from api.replay import replay as replay_item
from api.schemas import (
    ID_PATTERN,
    DeliveryReceiptIn,
    NoticeOut,
    Page,
    QuarantineDetailOut,
    QuarantineOut,
    ReplayManyIn,
    ReplayManyOut,
    ReplayOut,
    page,
)
from api.settings import ApiSettings
from ingest.dispatch import Prefixes

router = APIRouter(route_class=ProblemRoute)
BriefOperators = Annotated[Principal, Depends(requires_briefly(*OPERATORS))]
Limit = Annotated[int, Query(ge=1, le=1000, description="page size")]
After = Annotated[int | None, Query(ge=0, le=2**62, description="cursor: 'next' of the previous page")]
Name = Annotated[str | None, Query(min_length=1, max_length=64)]


@router.get("/notices", tags=["notices"], response_model=Page[NoticeOut], summary="List notices")
async def list_notices(
    conn: Conn,
    _: Readers,
    account_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    kind: Name = None,
    status: Name = None,
    after: After = None,
    limit: Limit = 100,
) -> Any:
    rows = await store.list_notices(conn, account_id=account_id, kind=kind, status=status, after=after, limit=limit)
    return page(rows, limit)


@router.get("/notices/{notice_id}", tags=["notices"], response_model=NoticeOut, summary="One notice")
async def get_notice(notice_id: int, conn: Conn, _: Readers) -> Any:
    return await store.get_notice(conn, notice_id)


@router.post(
    "/notices/{notice_id}/delivery",
    tags=["notices"],
    response_model=NoticeOut,
    summary="Delivery receipt: mark a notice delivered (first receipt wins)",
)
async def delivery_receipt(
    notice_id: int, conn: Conn, now: Now, _: Operators, body: DeliveryReceiptIn | None = None
) -> Any:
    receipt = body or DeliveryReceiptIn()
    return await store.mark_delivered(
        conn, notice_id, delivered_at=receipt.delivered_at or now, channel=receipt.channel
    )


@router.get("/quarantine", tags=["quarantine"], response_model=Page[QuarantineOut], summary="Quarantined input")
async def list_quarantine(
    conn: Conn,
    _: Readers,
    source: Name = None,
    meter_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    replayed: bool | None = None,
    after: After = None,
    limit: Limit = 100,
) -> Any:
    rows = await store.list_quarantine(
        conn, source=source, meter_id=meter_id, replayed=replayed, after=after, limit=limit
    )
    return page(rows, limit)


@router.get(
    "/quarantine/{item_id}", tags=["quarantine"], response_model=QuarantineDetailOut, summary="Inspect one item"
)
async def get_quarantined(item_id: int, conn: Conn, _: Readers) -> Any:
    row = await store.get_quarantined(conn, item_id)
    payload = bytes(row.pop("payload"))
    try:
        text: str | None = payload.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {**row, "payload_base64": base64.b64encode(payload).decode(), "payload_text": text}


@router.post(
    "/quarantine/{item_id}/replay",
    tags=["quarantine"],
    response_model=ReplayOut,
    summary="Re-submit the raw payload through ingest's decoder and writer (after a fix)",
)
async def replay(item_id: int, request: Request, now: Now, _: BriefOperators) -> Any:
    return await _replay_one(request, item_id, now)


@router.post(
    "/quarantine/replay",
    tags=["quarantine"],
    response_model=ReplayManyOut,
    summary="Replay every MQTT item matching a filter (oldest first, at most limit)",
)
async def replay_many(body: ReplayManyIn, request: Request, now: Now, _: BriefOperators) -> Any:
    async with request.app.state.pool.connection() as conn:
        ids = await store.quarantine_ids(
            conn,
            meter_id=body.meter_id,
            reason_prefix=body.reason_prefix,
            include_replayed=body.include_replayed,
            limit=body.limit,
        )
    items = [await _replay_one(request, qid, now) for qid in ids]
    return {"replayed": len(items), "accepted": sum(1 for i in items if i["accepted"]), "items": items}


async def _replay_one(request: Request, item_id: int, now: datetime) -> dict[str, Any]:
    # No request-wide connection: ingest's writer borrows its own from the pool.
    settings: ApiSettings = request.app.state.settings
    pool = request.app.state.pool
    async with pool.connection() as conn:
        row = await store.get_quarantined(conn, item_id)
    outcome = await replay_item(
        pool,
        source=row["source"],
        topic=row["topic"],
        payload=bytes(row["payload"]),
        prefixes=Prefixes(settings.mqtt_prefix, settings.mqtt_tasmota_prefix, settings.mqtt_shelly_prefix),
        now=now,
    )
    async with pool.connection() as conn:
        await store.mark_replayed(conn, item_id, at=now, result=outcome.result)
    return {"id": item_id, "accepted": outcome.accepted, "result": outcome.result, "replayed_at": now}
