"""Customer facts and operating conditions the guard reads, and the cases it opens.

Protections, disputes, cases, weather forecasts, payment-channel health and the kill
switch are written by control.operations; installment plans by prepaid.operations.
The API adds roles, validation and HTTP shapes only.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from api import store
from api.auth import (
    AccountReaders,
    Admins,
    Integrators,
    Operators,
    Principal,
    Readers,
    Role,
    ensure_account_visible,
    requires,
)
from api.deps import Conn, Now
from api.errors import NotFound, ProblemRoute, Unprocessable
from api.idempotency import IdempotencyKey, post_once
from api.results import plain
from api.schemas import (
    CaseOut,
    Channel,
    ChannelHealthIn,
    CreatedOut,
    DisputeIn,
    InstallmentPaymentIn,
    InstallmentPlanIn,
    KillSwitchIn,
    ProtectionIn,
    ReviewIn,
    WeatherIn,
)
from control import operations as control
from prepaid import operations as prepaid
from prepaid.models import InstallmentPlan

router = APIRouter(route_class=ProblemRoute)
Reviewers = Annotated[Principal, Depends(requires(Role.ADMIN, Role.OPERATOR, Role.APPROVER))]


@router.post(
    "/accounts/{account_id}/protections",
    tags=["customer facts"],
    status_code=201,
    response_model=CreatedOut,
    summary="Add a customer protection (blocks automatic disconnection; reconnects with priority)",
)
async def add_protection(account_id: str, body: ProtectionIn, conn: Conn, now: Now, who: Operators) -> Any:
    await store.get_account(conn, account_id)
    pid = await control.add_protection(
        conn,
        account_id=account_id,
        kind=body.kind.value,
        by=who.actor,
        now=now,
        valid_until=body.valid_until,
        detail=body.detail,
    )
    return {"id": pid}


@router.post(
    "/protections/{protection_id}/review",
    tags=["customer facts"],
    status_code=204,
    summary="A person reviews a lapsed protection: keep (renew) it or let it end",
)
async def review_protection(protection_id: int, body: ReviewIn, conn: Conn, now: Now, who: Reviewers) -> None:
    if not await store.protection_exists(conn, protection_id):
        raise NotFound(f"protection {protection_id} not found")
    await control.review_protection(conn, protection_id, reviewer=who.actor, keep=body.keep, now=now)


@router.post(
    "/accounts/{account_id}/disputes",
    tags=["customer facts"],
    status_code=201,
    response_model=CreatedOut,
    summary="Open a dispute (no disconnect while open; the disputed amount is not recovered)",
)
async def open_dispute(account_id: str, body: DisputeIn, conn: Conn, now: Now, who: Operators) -> Any:
    await store.get_account(conn, account_id)
    did = await control.open_dispute(
        conn, account_id=account_id, amount_minor=body.amount_minor, by=who.actor, now=now, detail=body.detail
    )
    return {"id": did}


@router.get("/cases", tags=["cases"], response_model=list[CaseOut], summary="Cases opened for a person")
async def list_cases(
    conn: Conn,
    _: Readers,
    status: Annotated[str, Query(pattern="^(open|closed)$")] = "open",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Any:
    return await control.list_cases(conn, status=status, limit=limit)


@router.post("/cases/{case_id}/close", tags=["cases"], status_code=204, summary="Close a case")
async def close_case(case_id: int, conn: Conn, now: Now, who: Operators) -> None:
    if not await store.case_exists(conn, case_id):
        raise NotFound(f"case {case_id} not found")
    await control.close_case(conn, case_id, by=who.actor, now=now)


@router.post(
    "/weather-forecasts",
    tags=["operating conditions"],
    status_code=201,
    response_model=CreatedOut,
    summary="Record a forecast for an area (the guard blocks disconnects at or beyond the limits)",
)
async def add_forecast(body: WeatherIn, conn: Conn, _: Operators) -> Any:
    if body.horizon_end <= body.horizon_start or body.min_c > body.max_c:
        raise Unprocessable(
            "horizon_end must be after horizon_start and min_c at most max_c",
            code="validation",
            errors=[{"field": "body.horizon_end", "message": "inverted horizon or range"}],
        )
    fid = await control.set_weather(
        conn,
        area=body.area,
        issued_at=body.issued_at,
        horizon_start=body.horizon_start,
        horizon_end=body.horizon_end,
        min_c=body.min_c,
        max_c=body.max_c,
        source=body.source,
    )
    return {"id": fid}


@router.put(
    "/payment-channels/{channel}",
    tags=["operating conditions"],
    status_code=204,
    summary="Record a payment channel's health (prepaid disconnects wait until 2 h healthy)",
)
async def set_channel_health(channel: Channel, body: ChannelHealthIn, conn: Conn, now: Now, _: Operators) -> None:
    await control.set_channel_health(conn, channel=channel.value, healthy=body.healthy, at=now, detail=body.detail)


@router.put("/kill-switch", tags=["operating conditions"], status_code=204, summary="Stop (or allow) all disconnects")
async def set_kill_switch(body: KillSwitchIn, conn: Conn, now: Now, who: Admins) -> None:
    await control.set_kill_switch(conn, on=body.on, by=who.actor, reason=body.reason, now=now)


@router.get(
    "/accounts/{account_id}/installment-plans",
    tags=["installment plans"],
    response_model=list[InstallmentPlan],
    summary="Installment plans of an account (state good_standing / missed / completed / cancelled)",
)
async def list_plans(account_id: str, conn: Conn, now: Now, who: AccountReaders) -> Any:
    ensure_account_visible(who, account_id)
    await store.get_account(conn, account_id)
    return await prepaid.list_installment_plans(conn, account_id, now)


@router.post(
    "/accounts/{account_id}/installment-plans",
    tags=["installment plans"],
    status_code=201,
    response_model=InstallmentPlan,
    summary="Split the account's charges of a period into dated installments",
)
async def create_plan(account_id: str, body: InstallmentPlanIn, conn: Conn, now: Now, who: Operators) -> Any:
    await store.get_account(conn, account_id)
    return await prepaid.create_installment_plan(
        conn,
        account_id=account_id,
        period_start=body.period_start,
        period_end=body.period_end,
        count=body.count,
        first_due=body.first_due,
        every_days=body.every_days,
        created_by=who.actor,
        now=now,
    )


@router.post(
    "/installment-plans/{plan_id}/payments",
    tags=["installment plans"],
    status_code=201,
    response_model=InstallmentPlan,
    summary="Pay towards a plan (payment integrators; idempotent on Idempotency-Key and on reference)",
)
async def pay_plan(
    plan_id: int,
    body: InstallmentPaymentIn,
    request: Request,
    conn: Conn,
    now: Now,
    who: Integrators,
    idempotency_key: IdempotencyKey,
) -> JSONResponse:
    async def run() -> tuple[int, Any]:
        plan = await prepaid.pay_installment(
            conn,
            plan_id=plan_id,
            channel=body.channel.value,
            reference=body.reference,
            amount_minor=body.amount_minor,
            now=now,
        )
        return 201, plain(plan)

    return await post_once(request, conn, who, idempotency_key, body, run)
