"""Accounts: balance, ledger (keyset pages), statement, days of credit left, explain,
account events and notices. Customers see only their own accounts (others: 404)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response
from pydantic import AwareDatetime

from api import store
from api.auth import AccountReaders, Principal, Readers, Role, ensure_account_visible
from api.deps import Conn, Now
from api.errors import ProblemRoute
from api.results import plain
from api.schemas import (
    ID_PATTERN,
    AccountEventOut,
    AccountOut,
    Action,
    CreditOut,
    KpisOut,
    LedgerEntryOut,
    NoticeOut,
    Page,
    page,
    period,
)
from control import operations as control
from prepaid import operations as prepaid
from prepaid.models import AreaKpis, CreditFacts, DaysLeft, Statement

router = APIRouter(route_class=ProblemRoute, tags=["accounts"])
Limit = Annotated[int, Query(ge=1, le=1000, description="page size")]
After = Annotated[int | None, Query(ge=0, le=2**62, description="cursor: 'next' of the previous page")]


async def _visible(conn: Conn, who: Principal, account_id: str) -> dict[str, Any]:
    ensure_account_visible(who, account_id)
    return await store.get_account(conn, account_id)


@router.get("/accounts", response_model=Page[AccountOut], summary="List accounts (customers: their own)")
async def list_accounts(
    conn: Conn,
    who: AccountReaders,
    service_point_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    status: Annotated[str | None, Query(pattern="^(open|closed)$")] = None,
    after: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    limit: Limit = 100,
) -> Any:
    only = who.account_ids if who.role is Role.CUSTOMER else None
    rows = await store.list_accounts(
        conn, only=only, service_point_id=service_point_id, status=status, after=after, limit=limit
    )
    return page(rows, limit)


@router.get("/accounts/{account_id}", response_model=AccountOut, summary="An account and its balance")
async def get_account(account_id: str, conn: Conn, who: AccountReaders) -> Any:
    return await _visible(conn, who, account_id)


@router.get(
    "/accounts/{account_id}/ledger",
    response_model=Page[LedgerEntryOut],
    summary="Ledger entries, oldest first, keyset-paginated by entry id",
)
async def ledger(account_id: str, conn: Conn, who: AccountReaders, after: After = None, limit: Limit = 100) -> Any:
    await _visible(conn, who, account_id)
    rows = await store.ledger(conn, account_id, after=after, limit=limit)
    return page(rows, limit)


@router.get(
    "/accounts/{account_id}/statement",
    response_model=Statement,
    summary="Statement for [start, end): every interval charged and every ledger entry",
)
async def statement(
    account_id: str,
    conn: Conn,
    now: Now,
    who: AccountReaders,
    start: Annotated[AwareDatetime | None, Query(description="inclusive; default end minus 30 days")] = None,
    end: Annotated[AwareDatetime | None, Query(description="exclusive; default now")] = None,
) -> Statement:
    await _visible(conn, who, account_id)
    s, e = period(start, end, now, lambda e: e - timedelta(days=30))
    return await prepaid.statement(conn, account_id, s, e)


@router.get(
    "/accounts/{account_id}/statement/columns",
    response_class=Response,
    summary="The same statement as columns (one array per field): the fast form for long periods",
    responses={
        200: {
            "description": "columnar statement; see docs/prepaid.md (statement_columns)",
            "content": {"application/json": {"schema": {"type": "object", "required": ["intervals", "entries"]}}},
        }
    },
)
async def statement_columns(
    account_id: str,
    conn: Conn,
    now: Now,
    who: AccountReaders,
    start: Annotated[AwareDatetime | None, Query(description="inclusive; default end minus 30 days")] = None,
    end: Annotated[AwareDatetime | None, Query(description="exclusive; default now")] = None,
) -> Response:
    await _visible(conn, who, account_id)
    s, e = period(start, end, now, lambda e: e - timedelta(days=30))
    return Response(content=await prepaid.statement_json(conn, account_id, s, e), media_type="application/json")


@router.get("/accounts/{account_id}/credit", response_model=CreditOut, summary="Days of credit left and credit facts")
async def credit(account_id: str, conn: Conn, now: Now, who: AccountReaders) -> Any:
    account = await _visible(conn, who, account_id)
    days: DaysLeft = await prepaid.days_of_credit_left(conn, account_id, now)
    facts: CreditFacts = await prepaid.credit_facts(conn, account_id, now)
    return {
        "account_id": account_id,
        "balance_minor": account["balance_minor"],
        "days_of_credit_left": days,
        "facts": facts,
    }


@router.get(
    "/accounts/{account_id}/explain",
    summary="Would this action (default disconnect) go now for this account, and if not why and until when",
)
async def explain(
    account_id: str,
    conn: Conn,
    now: Now,
    who: AccountReaders,
    action: Annotated[Action, Query(description="the action to explain")] = Action.disconnect,
) -> JSONResponse:
    await _visible(conn, who, account_id)
    result = await control.explain(conn, account_id, now, action.value)
    return JSONResponse({"at": now.isoformat(), **plain(result)})


@router.get("/accounts/{account_id}/events", response_model=Page[AccountEventOut], summary="Account events")
async def account_events(
    account_id: str, conn: Conn, who: AccountReaders, after: After = None, limit: Limit = 100
) -> Any:
    await _visible(conn, who, account_id)
    rows = await store.account_events(conn, account_id, after=after, limit=limit)
    return page(rows, limit)


@router.get("/accounts/{account_id}/notices", response_model=Page[NoticeOut], summary="Notices to this account")
async def account_notices(
    account_id: str, conn: Conn, who: AccountReaders, after: After = None, limit: Limit = 100
) -> Any:
    await _visible(conn, who, account_id)
    rows = await store.list_notices(conn, account_id=account_id, kind=None, status=None, after=after, limit=limit)
    return page(rows, limit)


@router.get("/kpis", response_model=KpisOut, summary="Collection KPIs per service area for [start, end)")
async def kpis(
    conn: Conn,
    now: Now,
    _: Readers,
    start: Annotated[AwareDatetime | None, Query(description="inclusive; default start of the current year")] = None,
    end: Annotated[AwareDatetime | None, Query(description="exclusive; default now")] = None,
    area: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
) -> Any:
    s, e = period(start, end, now, lambda e: e.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0))
    result: list[AreaKpis] = await prepaid.kpis(conn, start=s, end=e, area=area)
    return {"start": s, "end": e, "area": area, "areas": result}
