"""Customer facts, cases, operating conditions and installment plans through the API."""

from __future__ import annotations

from datetime import timedelta

import httpx
import psycopg

from tests.integration.api.conftest import NOW, Keys


async def test_protection_dispute_and_events(client: httpx.AsyncClient, keys: Keys, seeded: str) -> None:
    op = keys.headers("operator")
    r = await client.post("/v1/accounts/A-1/protections", json={"kind": "life_support"}, headers=op)
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    bad = await client.post("/v1/accounts/A-1/protections", json={"kind": "grumpy"}, headers=op)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "body.kind"
    assert (
        await client.post("/v1/accounts/NOPE/protections", json={"kind": "vulnerable"}, headers=op)
    ).status_code == 404
    review = await client.post(f"/v1/protections/{pid}/review", json={"keep": True}, headers=keys.headers("approver"))
    assert review.status_code == 204
    assert (await client.post("/v1/protections/99999/review", json={"keep": True}, headers=op)).status_code == 404
    d = await client.post("/v1/accounts/A-1/disputes", json={"amount_minor": 300}, headers=op)
    assert d.status_code == 201
    events = await client.get("/v1/accounts/A-1/events", headers=keys.headers("customer"))
    assert [e["kind"] for e in events.json()["items"]] == ["protection_added", "dispute_opened"]
    explained = await client.get("/v1/accounts/A-1/explain", headers=op)
    assert explained.json()["decision"]["kind"] == "refused"
    assert "protected_customer" in explained.json()["decision"]["reasons"]
    with psycopg.connect(seeded) as conn:
        conn.execute("insert into cases (kind, account_id) values ('automatic_disconnect_blocked', 'A-1')")
    cases = await client.get("/v1/cases", headers=keys.headers("approver"))
    assert [c["kind"] for c in cases.json()] == ["automatic_disconnect_blocked"]
    closed = await client.post(f"/v1/cases/{cases.json()[0]['id']}/close", headers=op)
    assert closed.status_code == 204
    assert (await client.get("/v1/cases", headers=op)).json() == []
    assert [c["id"] for c in (await client.get("/v1/cases", params={"status": "closed"}, headers=op)).json()]


async def test_operating_conditions(client: httpx.AsyncClient, keys: Keys, seeded: str) -> None:
    op = keys.headers("operator")
    forecast = {
        "area": "north",
        "issued_at": NOW.isoformat(),
        "horizon_start": NOW.isoformat(),
        "horizon_end": (NOW + timedelta(hours=24)).isoformat(),
        "min_c": "-2.0",
        "max_c": "5.5",
    }
    r = await client.post("/v1/weather-forecasts", json=forecast, headers=op)
    assert r.status_code == 201, r.text
    inverted = await client.post("/v1/weather-forecasts", json={**forecast, "min_c": "9", "max_c": "1"}, headers=op)
    assert inverted.status_code == 422
    assert (await client.put("/v1/payment-channels/bank", json={"healthy": False}, headers=op)).status_code == 204
    assert (await client.put("/v1/payment-channels/cash", json={"healthy": False}, headers=op)).status_code == 422
    assert (await client.put("/v1/kill-switch", json={"on": True, "reason": "storm"}, headers=op)).status_code == 403
    assert (
        await client.put("/v1/kill-switch", json={"on": True, "reason": "storm"}, headers=keys.headers("admin"))
    ).status_code == 204
    with psycopg.connect(seeded) as conn:
        assert conn.execute("select is_on from control_switches where name = 'kill_switch'").fetchone() == (True,)
        row = conn.execute("select min_c from weather_forecasts where area = 'north'").fetchone()
    assert row is not None and str(row[0]) == "-2.0"


async def test_installment_plans(client: httpx.AsyncClient, keys: Keys, seeded: str) -> None:
    with psycopg.connect(seeded) as conn:
        conn.execute(
            "insert into ledger_entries (account_id, kind, amount_minor, balance_after_minor, period_start, period_end)"
            " values ('A-1', 'consumption', -3000, 2000, %s, %s)",
            (NOW - timedelta(days=20), NOW - timedelta(days=19)),
        )
        conn.execute("update accounts set balance_minor = 2000 where id = 'A-1'")
    op = keys.headers("operator")
    plan_in = {
        "period_start": (NOW - timedelta(days=30)).isoformat(),
        "period_end": NOW.isoformat(),
        "count": 3,
        "first_due": (NOW + timedelta(days=1)).isoformat(),
    }
    r = await client.post("/v1/accounts/A-1/installment-plans", json=plan_in, headers=op)
    assert r.status_code == 201, r.text
    plan = r.json()
    assert plan["total_minor"] == 3000 and [i["amount_minor"] for i in plan["installments"]] == [1000, 1000, 1000]
    empty = await client.post("/v1/accounts/A-2/installment-plans", json=plan_in, headers=op)
    assert empty.status_code == 422  # no charges in that period
    pay = {"channel": "bank", "reference": "inst-1", "amount_minor": 1000}
    bank = {**keys.headers("integrator"), "Idempotency-Key": "inst-1"}
    paid = await client.post(f"/v1/installment-plans/{plan['id']}/payments", json=pay, headers=bank)
    assert paid.status_code == 201, paid.text
    assert paid.json()["paid_minor"] == 1000
    again = await client.post(f"/v1/installment-plans/{plan['id']}/payments", json=pay, headers=bank)
    assert again.json() == paid.json() and again.headers["idempotent-replayed"] == "true"
    mine = await client.get("/v1/accounts/A-1/installment-plans", headers=keys.headers("customer"))
    assert [p["id"] for p in mine.json()] == [plan["id"]]
    assert (await client.get("/v1/accounts/A-2/installment-plans", headers=keys.headers("customer"))).status_code == 404
