"""Top-ups for payment integrators (idempotent) and tariff versions.

Money is moved only by prepaid.operations (topup, reverse_topup); tariff versions
are validated and added by prepaid too. This module adds the HTTP rules:
``Idempotency-Key`` (api.idempotency) on top of prepaid's own (channel, reference)
idempotency.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api import store
from api.auth import Admins, Integrators, Readers
from api.deps import Conn, Now
from api.errors import ProblemRoute
from api.idempotency import IdempotencyKey, post_once
from api.results import plain
from api.schemas import TariffOut, TariffVersionIn, TopupIn, TopupReversalIn
from prepaid import operations as prepaid
from prepaid.models import ReversalResult, TopupResult

router = APIRouter(route_class=ProblemRoute)


@router.post(
    "/topups",
    tags=["top-ups"],
    status_code=201,
    summary="Credit an account (payment integrators). 201 new, 200 when (channel, reference) was seen before",
    response_model=TopupResult,
    responses={200: {"model": TopupResult, "description": "duplicate (channel, reference): the first result"}},
)
async def create_topup(
    body: TopupIn, request: Request, conn: Conn, now: Now, who: Integrators, idempotency_key: IdempotencyKey
) -> JSONResponse:
    async def run() -> tuple[int, Any]:
        await store.get_account(conn, body.account_id)
        result = await prepaid.topup(
            conn,
            account_id=body.account_id,
            channel=body.channel.value,
            reference=body.reference,
            amount_minor=body.amount_minor,
            now=now,
        )
        return (200 if result.duplicate else 201), plain(result)

    return await post_once(request, conn, who, idempotency_key, body, run)


@router.post(
    "/topups/reversals",
    tags=["top-ups"],
    status_code=201,
    response_model=ReversalResult,
    summary="Reverse a top-up by its (channel, reference)",
)
async def reverse_topup(
    body: TopupReversalIn, request: Request, conn: Conn, now: Now, who: Integrators, idempotency_key: IdempotencyKey
) -> JSONResponse:
    async def run() -> tuple[int, Any]:
        result = await prepaid.reverse_topup(
            conn, channel=body.channel.value, reference=body.reference, reason=body.reason, now=now
        )
        return 201, plain(result)

    return await post_once(request, conn, who, idempotency_key, body, run)


@router.get("/tariffs", tags=["tariffs"], response_model=list[TariffOut], summary="Tariffs (without versions)")
async def list_tariffs(conn: Conn, _: Readers) -> Any:
    return await store.list_tariffs(conn)


@router.get("/tariffs/{tariff_id}", tags=["tariffs"], response_model=TariffOut, summary="A tariff and its versions")
async def get_tariff(tariff_id: str, conn: Conn, _: Readers) -> Any:
    return await store.get_tariff(conn, tariff_id)


@router.post(
    "/tariffs/{tariff_id}/versions",
    tags=["tariffs"],
    status_code=201,
    response_model=TariffOut,
    summary="Add a tariff version (admin); it never re-rates consumption before effective_from",
)
async def add_tariff_version(tariff_id: str, body: TariffVersionIn, conn: Conn, now: Now, who: Admins) -> Any:
    await store.get_tariff(conn, tariff_id)
    await prepaid.add_tariff_version(
        conn,
        tariff_id=tariff_id,
        effective_from=body.effective_from,
        definition=body.definition,
        created_by=who.actor,
        now=now,
    )
    return await store.get_tariff(conn, tariff_id)
