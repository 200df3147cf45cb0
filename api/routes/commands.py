"""Commands (request, approve, cancel, bulk, list, get) and the guard policy.

The lifecycle and the guard are control's (control.operations); this module adds
roles, ``Idempotency-Key`` and the HTTP shapes. A command's idempotency key in the
database is ``api:<api key id>:<Idempotency-Key>`` so two clients never collide.
Follow a command's state with GET /v1/commands/{id} or live on /v1/stream?command_id=.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from api import store
from api.auth import ADMINS, APPROVERS, OPERATORS, READERS, Principal, Role, requires
from api.deps import Conn, Now
from api.engines import operation, plain
from api.errors import ProblemRoute
from api.idempotency import run_once
from api.routes.money import IdempotencyKey, _ttl
from api.schemas import ID_PATTERN, BulkCommandIn, CancelIn, CommandIn, CommandOut, Page, PolicyVersionIn

router = APIRouter(route_class=ProblemRoute)
Readers = Annotated[Principal, Depends(requires(*READERS))]
Operators = Annotated[Principal, Depends(requires(*OPERATORS))]
Approvers = Annotated[Principal, Depends(requires(*APPROVERS))]
Cancellers = Annotated[Principal, Depends(requires(Role.ADMIN, Role.OPERATOR, Role.APPROVER))]
Admins = Annotated[Principal, Depends(requires(*ADMINS))]
Limit = Annotated[int, Query(ge=1, le=1000, description="page size")]


def _db_key(who: Principal, key: str) -> str:
    return f"api:{who.key_id}:{key}"


def _command_id(result: Any) -> int | None:
    out = plain(result)
    if isinstance(out, dict):
        for name in ("id", "command_id"):
            if isinstance(out.get(name), int):
                return int(out[name])
    return None


@router.post(
    "/commands",
    tags=["commands"],
    status_code=202,
    summary="Request a command (disconnect, reconnect, read, ...); control applies approvals and guards",
)
async def request_command(
    body: CommandIn, request: Request, conn: Conn, now: Now, who: Operators, idempotency_key: IdempotencyKey
) -> JSONResponse:
    async def run() -> tuple[int, Any]:
        await store.get_meter(conn, body.meter_id)
        fn = operation("control.operations", "request_command")
        result = await fn(
            conn,
            meter_id=body.meter_id,
            action=body.action,
            requested_by=who.actor,
            reason=body.reason,
            idempotency_key=_db_key(who, idempotency_key),
            now=now,
            manual=True,
        )
        cid = _command_id(result)
        out = await store.get_command(conn, cid) if cid is not None else plain(result)
        return 202, out

    return await run_once(
        conn,
        who,
        idempotency_key,
        method="POST",
        path=request.url.path,
        body=body.model_dump(mode="json"),
        ttl_h=_ttl(request),
        operation=run,
    )


@router.post(
    "/commands/bulk",
    tags=["commands"],
    status_code=202,
    summary="Request one command per meter (batches above the policy limit need approval)",
)
async def bulk_request(
    body: BulkCommandIn, request: Request, conn: Conn, now: Now, who: Operators, idempotency_key: IdempotencyKey
) -> JSONResponse:
    async def run() -> tuple[int, Any]:
        fn = operation("control.operations", "bulk_request")
        result = await fn(
            conn,
            meter_ids=list(dict.fromkeys(body.meter_ids)),
            action=body.action,
            requested_by=who.actor,
            reason=body.reason,
            idempotency_key=_db_key(who, idempotency_key),
            now=now,
        )
        return 202, plain(result)

    return await run_once(
        conn,
        who,
        idempotency_key,
        method="POST",
        path=request.url.path,
        body=body.model_dump(mode="json"),
        ttl_h=_ttl(request),
        operation=run,
    )


@router.post(
    "/commands/{command_id}/approve",
    tags=["commands"],
    response_model=CommandOut,
    summary="Approve a command (approver role; never one's own request)",
)
async def approve(command_id: int, conn: Conn, now: Now, who: Approvers) -> Any:
    await store.get_command(conn, command_id)
    await operation("control.operations", "approve_command")(conn, command_id, who.actor, now)
    return await store.get_command(conn, command_id)


@router.post("/commands/{command_id}/cancel", tags=["commands"], response_model=CommandOut, summary="Cancel")
async def cancel(command_id: int, body: CancelIn, conn: Conn, now: Now, who: Cancellers) -> Any:
    await store.get_command(conn, command_id)
    await operation("control.operations", "cancel_command")(conn, command_id, who.actor, body.reason, now)
    return await store.get_command(conn, command_id)


@router.get("/commands", tags=["commands"], response_model=Page[CommandOut], summary="List commands")
async def list_commands(
    conn: Conn,
    _: Readers,
    state: Annotated[str | None, Query(min_length=1, max_length=32)] = None,
    meter_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    account_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    action: Annotated[str | None, Query(min_length=1, max_length=32)] = None,
    after: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    limit: Limit = 100,
) -> Any:
    rows = await store.list_commands(
        conn, state=state, meter_id=meter_id, account_id=account_id, action=action, after=after, limit=limit
    )
    return {"items": rows, "next": str(rows[-1]["id"]) if len(rows) == limit else None}


@router.get("/commands/{command_id}", tags=["commands"], response_model=CommandOut, summary="One command")
async def get_command(command_id: int, conn: Conn, _: Readers) -> Any:
    return await store.get_command(conn, command_id)


@router.get("/policy", tags=["policy"], summary="The guard policy in force now (control)")
async def get_policy(conn: Conn, now: Now, _: Readers) -> JSONResponse:
    return JSONResponse(plain(await operation("control.operations", "get_policy")(conn, now)))


@router.get("/policy/versions", tags=["policy"], summary="All policy versions (control)")
async def list_policy_versions(conn: Conn, _: Readers) -> JSONResponse:
    return JSONResponse(plain(await operation("control.operations", "list_policy_versions")(conn)))


@router.post("/policy/versions", tags=["policy"], status_code=201, summary="Add a policy version (admin; validated)")
async def add_policy_version(body: PolicyVersionIn, conn: Conn, now: Now, who: Admins) -> JSONResponse:
    fn = operation("control.operations", "add_policy_version")
    result = await fn(
        conn, document=body.document, effective_from=body.effective_from or now, created_by=who.actor, now=now
    )
    return JSONResponse(plain(result), status_code=201)
