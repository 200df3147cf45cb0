"""The application factory: ``create_app(settings)`` builds the FastAPI app.

The lifespan opens one ``psycopg_pool.AsyncConnectionPool`` (autocommit
connections; writes open their own transaction) and starts the event hub that
LISTENs for live updates (``/v1/stream``). Every route lives under ``/v1`` except
``/health``, ``/metrics`` and the OpenAPI pages (``/docs``, ``/openapi.json``).
Errors are rendered in one place, :mod:`api.errors`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from psycopg_pool import AsyncConnectionPool

from api import errors, keys
from api.routes import ROUTERS, system
from api.settings import ApiSettings
from api.stream import EventHub

API_VERSION = "1.0.0"

DESCRIPTION = """\
HTTP API of **headend**: meters and service points, readings, accounts and the
prepaid ledger, top-ups, tariffs and policy, guarded commands, notices, quarantine.

Authenticate with an API key: `Authorization: Bearer <token>` or `X-API-Key: <token>`.
Errors are `application/problem+json`. See docs/api.md for roles and examples.
"""


def _utcnow() -> datetime:
    return datetime.now(UTC)


PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "RFC 9457 problem details; ``errors`` is present on validation failures",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string", "example": "urn:headend:problem:not-found"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string", "example": "not-found"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_PROBLEM_STATUSES = {
    "401": "missing, unknown or revoked API key",
    "403": "the key's role may not use this route",
    "404": "not found (customers: also any account that is not theirs)",
    "409": "conflict with the current state (duplicate, idempotency key in flight, lifecycle)",
    "422": "invalid request (errors[] names each field) or a domain refusal",
}


def _openapi_with_problems(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, with every error documented as application/problem+json."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = PROBLEM_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    problem = {"content": {"application/problem+json": {"schema": _PROBLEM_REF}}}
    for path, item in schema.get("paths", {}).items():
        for op in item.values():
            responses = op.setdefault("responses", {})
            secured = bool(op.get("security"))
            for status, why in _PROBLEM_STATUSES.items():
                if status in ("401", "403") and not secured:
                    continue
                responses[status] = {"description": why, **problem}
            if path.startswith("/v1/") or path == "/metrics":
                responses.setdefault("500", {"description": "internal error", **problem})
                responses.setdefault("503", {"description": "the database is unavailable", **problem})
    app.openapi_schema = schema
    return schema


def create_app(settings: ApiSettings, *, clock: Callable[[], datetime] | None = None) -> FastAPI:
    """Build the app. ``clock`` (default: UTC wall clock) is the ``now`` passed to every operation."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            settings.database_url,
            min_size=settings.api_pool_min,
            max_size=settings.api_pool_max,
            kwargs={"autocommit": True},
            check=AsyncConnectionPool.check_connection,
            timeout=10.0,
            open=False,
            name="api",
        )
        await pool.open()

        hub = EventHub(settings.database_url)
        app.state.pool = pool
        app.state.key_lookup = keys.lookup
        app.state.hub = hub
        try:
            async with asyncio.TaskGroup() as tg:
                listener = tg.create_task(hub.run(), name="api-event-hub")
                try:
                    yield
                finally:
                    hub.close()
                    listener.cancel()
        finally:
            await pool.close()

    app = FastAPI(
        title="headend API",
        version=API_VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.settings = settings
    app.state.clock = clock or _utcnow
    errors.install(app)
    app.openapi = lambda: _openapi_with_problems(app)  # type: ignore[method-assign]
    app.include_router(system.router)
    for router in ROUTERS:
        app.include_router(router, prefix="/v1")
    return app
