"""Service points and meters: register, list with filters, relay/comms state, last reading,
and resolving a meter's billing hold (prepaid.operations.resolve_billing_hold)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from api import store
from api.auth import Operators, Readers
from api.deps import Conn, Now
from api.errors import ProblemRoute, Unprocessable
from api.schemas import (
    ID_PATTERN,
    HoldResolveIn,
    MeterIn,
    MeterOut,
    MeterPatch,
    Page,
    ServicePointIn,
    ServicePointOut,
    page,
)
from prepaid import operations as prepaid
from prepaid.models import HoldResolution

router = APIRouter(route_class=ProblemRoute, tags=["network"])
Limit = Annotated[int, Query(ge=1, le=1000, description="page size")]
IdQuery = Annotated[str | None, Query(pattern=ID_PATTERN)]
Name = Annotated[str | None, Query(min_length=1, max_length=64)]


@router.post("/service-points", status_code=201, response_model=ServicePointOut, summary="Register a service point")
async def create_service_point(body: ServicePointIn, conn: Conn, _: Operators) -> Any:
    return await store.insert_service_point(conn, body.model_dump(mode="json"))


@router.get("/service-points", response_model=Page[ServicePointOut], summary="List service points")
async def list_service_points(
    conn: Conn, _: Readers, feeder: Name = None, area: Name = None, after: IdQuery = None, limit: Limit = 100
) -> Any:
    rows = await store.list_service_points(conn, feeder=feeder, area=area, after=after, limit=limit)
    return page(rows, limit)


@router.get("/service-points/{service_point_id}", response_model=ServicePointOut, summary="One service point")
async def get_service_point(service_point_id: str, conn: Conn, _: Readers) -> Any:
    return await store.get_service_point(conn, service_point_id)


@router.post("/meters", status_code=201, response_model=MeterOut, summary="Register a meter")
async def create_meter(body: MeterIn, conn: Conn, _: Operators) -> Any:
    data = body.model_dump(mode="json", exclude_none=True)
    if body.protocol.value == "modbus" and not (body.modbus_host and body.modbus_port):
        raise Unprocessable(
            "a modbus meter needs modbus_host and modbus_port",
            code="validation",
            errors=[{"field": "body.modbus_host", "message": "required when protocol is modbus"}],
        )
    row = await store.insert_meter(conn, data)
    return {**row, "last_reading": None}


@router.get("/meters", response_model=Page[MeterOut], summary="List meters with filters")
async def list_meters(
    conn: Conn,
    _: Readers,
    service_point_id: IdQuery = None,
    feeder: Name = None,
    area: Name = None,
    relay_state: Name = None,
    comms_state: Name = None,
    billing_hold: Annotated[bool | None, Query(description="true: only held meters; false: only unheld")] = None,
    after: IdQuery = None,
    limit: Limit = 100,
) -> Any:
    rows = await store.list_meters(
        conn,
        service_point_id=service_point_id,
        feeder=feeder,
        area=area,
        relay_state=relay_state,
        comms_state=comms_state,
        billing_hold=billing_hold,
        after=after,
        limit=limit,
    )
    return page(rows, limit)


@router.get("/meters/{meter_id}", response_model=MeterOut, summary="A meter: relay and comms state, last reading")
async def get_meter(meter_id: str, conn: Conn, _: Readers) -> Any:
    row = await store.get_meter(conn, meter_id)
    return {**row, "last_reading": await store.last_reading(conn, meter_id)}


@router.patch(
    "/meters/{meter_id}",
    response_model=MeterOut,
    summary="Change a meter's registration (e.g. map a Tasmota/Shelly device topic, then replay quarantine)",
)
async def update_meter(meter_id: str, body: MeterPatch, conn: Conn, _: Operators) -> Any:
    row = await store.update_meter(conn, meter_id, body.model_dump(mode="json", exclude_unset=True, exclude_none=True))
    return {**row, "last_reading": await store.last_reading(conn, meter_id)}


@router.post(
    "/meters/{meter_id}/billing-hold/resolve",
    response_model=HoldResolution,
    summary="Clear a meter's billing hold (reset or spike); the reading that caused it becomes the new baseline",
)
async def resolve_billing_hold(
    meter_id: str, conn: Conn, now: Now, who: Operators, body: HoldResolveIn | None = None
) -> HoldResolution:
    await store.get_meter(conn, meter_id)
    actor = who.actor + (f" ({body.note})" if body is not None and body.note else "")
    return await prepaid.resolve_billing_hold(conn, meter_id, actor, now)
