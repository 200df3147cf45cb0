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
from api.auth import Admins, Approvers, Operators, Principal, Readers, Role, requires
from api.deps import Conn, Now
from api.errors import Conflict, NotFound, ProblemRoute, Unprocessable
from api.idempotency import IdempotencyKey, post_once
from api.results import plain
from api.schemas import (
    ID_PATTERN,
    BatchApprovalOut,
    BulkCommandIn,
    BulkOut,
    CancelIn,
    CommandIn,
    CommandOut,
    Page,
    PolicyVersionIn,
    page,
)
from control import operations as control
from control.policy import profile_names

router = APIRouter(route_class=ProblemRoute)
Cancellers = Annotated[Principal, Depends(requires(Role.ADMIN, Role.OPERATOR, Role.APPROVER))]
Limit = Annotated[int, Query(ge=1, le=1000, description="page size")]


def _db_key(who: Principal, key: str) -> str:
    return f"api:{who.key_id}:{key}"


def approver_roles(who: Principal) -> list[str]:
    """control's operator roles for an API key: its role; admins also approve."""
    return ["admin", "approver"] if who.role is Role.ADMIN else [who.role.value]


@router.post(
    "/commands",
    tags=["commands"],
    status_code=202,
    response_model=CommandOut,
    summary="Request a command (disconnect, arm, reconnect, read_now, ...); control applies approvals and guards",
)
async def request_command(
    body: CommandIn, request: Request, conn: Conn, now: Now, who: Operators, idempotency_key: IdempotencyKey
) -> JSONResponse:
    async def run() -> tuple[int, Any]:
        await store.get_meter(conn, body.meter_id)
        command = await control.request_command(
            conn,
            meter_id=body.meter_id,
            action=body.action,
            requested_by=who.actor,
            reason=body.reason,
            idempotency_key=_db_key(who, idempotency_key),
            now=now,
            manual=True,
            authority_copy=body.authority_copy,
            erroneous=body.erroneous,
        )
        return 202, await store.get_command(conn, command.id)

    return await post_once(request, conn, who, idempotency_key, body, run)


@router.post(
    "/commands/bulk",
    tags=["commands"],
    status_code=202,
    response_model=BulkOut,
    summary="Request one command per meter (batches above the policy limit need approval)",
)
async def bulk_request(
    body: BulkCommandIn, request: Request, conn: Conn, now: Now, who: Operators, idempotency_key: IdempotencyKey
) -> JSONResponse:
    async def run() -> tuple[int, Any]:
        missing = await store.missing_meters(conn, body.meter_ids)
        if missing:
            raise Unprocessable(
                f"unknown meter(s): {', '.join(missing[:10])}",
                code="unknown-reference",
                errors=[{"field": "body.meter_ids", "message": f"no such meter: {m}"} for m in missing[:10]],
            )
        commands = await control.bulk_request(
            conn,
            meter_ids=list(dict.fromkeys(body.meter_ids)),
            action=body.action,
            requested_by=who.actor,
            reason=body.reason,
            idempotency_key=_db_key(who, idempotency_key),
            now=now,
        )
        rows = await store.commands_by_ids(conn, [c.id for c in commands])
        return 202, {"batch_id": _db_key(who, idempotency_key), "count": len(rows), "commands": rows}

    return await post_once(request, conn, who, idempotency_key, body, run)


@router.post(
    "/commands/{command_id}/approve",
    tags=["commands"],
    response_model=CommandOut,
    summary="Approve a command (approver role; never one's own request)",
)
async def approve(command_id: int, conn: Conn, now: Now, who: Approvers) -> Any:
    command = await store.get_command(conn, command_id)
    if command["state"] != "awaiting_approval":
        raise Conflict(
            f"command {command_id} is {command['state']}, not awaiting approval", code="not-awaiting-approval"
        )
    # The API key's role is the authority: mirror it into control's operator roles.
    await control.set_operator(conn, who.actor, approver_roles(who))
    await control.approve_command(conn, command_id, who.actor, now)
    return await store.get_command(conn, command_id)


@router.post(
    "/batches/{batch_id}/approve",
    tags=["commands"],
    response_model=BatchApprovalOut,
    summary="Approve every command of a bulk request still awaiting approval (approver role; not one's own)",
)
async def approve_batch(batch_id: str, conn: Conn, now: Now, who: Approvers) -> Any:
    counts = await store.batch_states(conn, batch_id)
    if not counts:
        raise NotFound(f"batch {batch_id} not found")
    if not counts.get("awaiting_approval"):
        raise Conflict(f"no command of batch {batch_id} is awaiting approval", code="not-awaiting-approval")
    await control.set_operator(conn, who.actor, approver_roles(who))
    approved = await control.approve_batch(conn, batch_id, who.actor, now)
    return {"batch_id": batch_id, "approved": approved, "states": await store.batch_states(conn, batch_id)}


@router.post("/commands/{command_id}/cancel", tags=["commands"], response_model=CommandOut, summary="Cancel")
async def cancel(command_id: int, body: CancelIn, conn: Conn, now: Now, who: Cancellers) -> Any:
    await store.get_command(conn, command_id)
    await control.cancel_command(conn, command_id, who.actor, body.reason, now)
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
    return page(rows, limit)


@router.get("/commands/{command_id}", tags=["commands"], response_model=CommandOut, summary="One command")
async def get_command(command_id: int, conn: Conn, _: Readers) -> Any:
    return await store.get_command(conn, command_id)


def _profile(profile: str) -> str:
    if profile not in profile_names():
        raise NotFound(f"no policy profile {profile}; one of {', '.join(profile_names())}")
    return profile


@router.get("/policy", tags=["policy"], summary="The guard policy profiles in force now")
async def list_policies(conn: Conn, now: Now, _: Readers) -> JSONResponse:
    out = {name: plain(await control.get_policy(conn, name, now)) for name in profile_names()}
    return JSONResponse(out)


@router.get("/policy/{profile}", tags=["policy"], summary="One policy profile in force now")
async def get_policy(profile: str, conn: Conn, now: Now, _: Readers) -> JSONResponse:
    return JSONResponse(plain(await control.get_policy(conn, _profile(profile), now)))


@router.get("/policy/{profile}/versions", tags=["policy"], summary="All versions of a policy profile")
async def list_policy_versions(profile: str, conn: Conn, now: Now, _: Readers) -> JSONResponse:
    await control.get_policy(conn, _profile(profile), now)  # seeds the shipped versions on first use
    # control.list_policy_versions cannot load the base version's '-infinity' start; read it here
    return JSONResponse(plain(await store.policy_versions(conn, profile)))


@router.post(
    "/policy/{profile}/versions",
    tags=["policy"],
    status_code=201,
    summary="Add a policy version (admin); only stricter than the jurisdiction floor",
)
async def add_policy_version(profile: str, body: PolicyVersionIn, conn: Conn, now: Now, who: Admins) -> JSONResponse:
    await control.get_policy(conn, _profile(profile), now)
    version = await control.add_policy_version(
        conn, profile=profile, document=body.document, created_by=who.actor, now=now, effective_from=body.effective_from
    )
    return JSONResponse({"profile": profile, "version": version}, status_code=201)
