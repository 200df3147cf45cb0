"""/health against the real database and broker; problem+json for unknown routes."""

from __future__ import annotations

import httpx

from api.app import create_app
from api.settings import ApiSettings


async def test_health_ok_with_database_and_broker(client: httpx.AsyncClient) -> None:
    r = await client.get("/health")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["broker"]["ok"] is True
    assert "CONNACK accepted" in body["checks"]["broker"]["detail"]


async def test_health_degraded_when_broker_unreachable(settings: ApiSettings) -> None:
    bad = settings.model_copy(update={"mqtt_port": 1, "api_health_timeout_s": 1.0})
    app = create_app(bad)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            r = await c.get("/health")
    assert r.status_code == 503
    assert r.json()["checks"]["broker"]["ok"] is False
    assert r.json()["checks"]["database"]["ok"] is True


async def test_unknown_route_is_problem_json(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/nothing-here")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == 404
    assert r.json()["instance"] == "/v1/nothing-here"


async def test_openapi_served(client: httpx.AsyncClient) -> None:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    assert r.json()["info"]["title"] == "headend API"
    assert (await client.get("/docs")).status_code == 200


async def test_wrong_method_is_problem_json_with_allow(client: httpx.AsyncClient) -> None:
    r = await client.delete("/v1/meters")
    assert r.status_code == 405
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["allow"]  # Starlette names the methods of the first matching route
