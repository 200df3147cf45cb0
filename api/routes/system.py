"""``/health`` (no key needed) and ``/metrics`` (Prometheus text; admin or operator key)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel

from api.auth import OPERATORS, Principal, requires
from api.deps import Conn
from api.errors import ProblemRoute
from api.health import probe_broker, probe_database
from api.metrics import CONTENT_TYPE, collect, render
from api.settings import ApiSettings

router = APIRouter(route_class=ProblemRoute, tags=["system"])


class CheckOut(BaseModel):
    ok: bool
    latency_ms: float
    detail: str


class HealthOut(BaseModel):
    status: str
    checks: dict[str, CheckOut]


@router.get(
    "/health",
    response_model=HealthOut,
    summary="Database and broker health (200 ok, 503 degraded)",
    responses={503: {"model": HealthOut, "description": "a dependency is down"}},
)
async def health(request: Request) -> Any:
    settings: ApiSettings = request.app.state.settings
    timeout = settings.api_health_timeout_s
    db, broker = await asyncio.gather(
        probe_database(request.app.state.pool, timeout),
        probe_broker(settings.mqtt_host, settings.mqtt_port, timeout),
    )
    checks = {"database": db, "broker": broker}
    ok = all(c.ok for c in checks.values())
    body = HealthOut(
        status="ok" if ok else "degraded",
        checks={k: CheckOut(ok=c.ok, latency_ms=c.latency_ms, detail=c.detail) for k, c in checks.items()},
    )
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics (text format 0.0.4); admin or operator key",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}}}},
)
async def metrics(conn: Conn, _: Annotated[Principal, Depends(requires(*OPERATORS))]) -> PlainTextResponse:
    return PlainTextResponse(render(await collect(conn)), media_type=CONTENT_TYPE)
