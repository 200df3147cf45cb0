"""Fixtures of the API's integration tests: the real app over a fresh TimescaleDB database.

``seeded`` registers two service points, meters and accounts (A-1 on SP-1, A-2 on SP-2)
with headend.registry; ``keys`` creates one API key per role (the customer key sees A-1
only); ``client`` is an httpx.AsyncClient over the app (lifespan running).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import psycopg
import pytest

from api.app import create_app
from api.auth import Role
from api.keys import create_key
from api.settings import ApiSettings
from headend import registry

NOW = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)  # a Tuesday, 10:00 in Asia/Shanghai


@dataclass
class Keys:
    admin: str
    operator: str
    approver: str
    integrator: str
    customer: str
    approver2: str

    def headers(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {getattr(self, role)}"}


@pytest.fixture
def seeded(db_url: str) -> str:
    with psycopg.connect(db_url) as conn:
        registry.ensure_tariff(
            conn,
            "T-FLAT",
            "flat",
            effective_from=datetime(2026, 1, 1, tzinfo=UTC),
            definition={"kind": "flat", "price_per_kwh": "0.56", "currency": "CNY"},
        )
        for n, (feeder, area) in enumerate([("F-1", "north"), ("F-2", "south")], start=1):
            registry.ensure_service_point(conn, f"SP-{n}", feeder=feeder, area=area)
            registry.ensure_meter(conn, f"M-{n}", service_point_id=f"SP-{n}")
            registry.open_account(
                conn, f"A-{n}", service_point_id=f"SP-{n}", tariff_id="T-FLAT", balance_minor=5000 * n
            )
    return db_url


@pytest.fixture
def keys(seeded: str) -> Keys:
    with psycopg.connect(seeded) as conn:

        def make(name: str, role: Role, accounts: list[str] | None = None) -> str:
            return create_key(conn, name=name, role=role, account_ids=accounts).token

        return Keys(
            admin=make("root", Role.ADMIN),
            operator=make("olga", Role.OPERATOR),
            approver=make("anna", Role.APPROVER),
            integrator=make("bank", Role.INTEGRATOR),
            customer=make("cust1", Role.CUSTOMER, ["A-1"]),
            approver2=make("arne", Role.APPROVER),
        )


@pytest.fixture
def settings(seeded: str, mqtt_host: str, mqtt_port: int) -> ApiSettings:
    return ApiSettings(database_url=seeded, mqtt_host=mqtt_host, mqtt_port=mqtt_port, api_pool_max=4)


@pytest.fixture
async def client(settings: ApiSettings, keys: Keys) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, clock=lambda: NOW)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as c:
            yield c
