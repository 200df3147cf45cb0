"""Money through the API: top-ups (idempotent twice over), reversals, ledger, statement,
days of credit left, KPIs, tariff versions and billing holds — all via prepaid.operations."""

from __future__ import annotations

import json
from datetime import timedelta

import httpx
import psycopg

from tests.integration.api.conftest import NOW, Keys


def _topup(ref: str, amount: int = 700, account: str = "A-1") -> dict[str, object]:
    return {"account_id": account, "channel": "bank", "reference": ref, "amount_minor": amount}


async def test_topup_idempotency_key_and_reference(client: httpx.AsyncClient, keys: Keys) -> None:
    bank = keys.headers("integrator")
    missing_key = await client.post("/v1/topups", json=_topup("r1"), headers=bank)
    assert missing_key.status_code == 422
    assert missing_key.json()["errors"][0]["field"] == "header.Idempotency-Key"

    first = await client.post("/v1/topups", json=_topup("r1"), headers={**bank, "Idempotency-Key": "pay-1"})
    assert first.status_code == 201, first.text
    assert first.json()["balance_after_minor"] == 5700 and first.json()["duplicate"] is False
    replay = await client.post("/v1/topups", json=_topup("r1"), headers={**bank, "Idempotency-Key": "pay-1"})
    assert replay.status_code == 201 and replay.json() == first.json()
    assert replay.headers["idempotent-replayed"] == "true"
    mismatch = await client.post("/v1/topups", json=_topup("r1", 800), headers={**bank, "Idempotency-Key": "pay-1"})
    assert mismatch.status_code == 422 and mismatch.json()["code"] == "idempotency-mismatch"
    # a new key but the same (channel, reference): prepaid answers with the first top-up, flagged duplicate
    dup = await client.post("/v1/topups", json=_topup("r1"), headers={**bank, "Idempotency-Key": "pay-2"})
    assert dup.status_code == 200 and dup.json()["duplicate"] is True
    assert dup.json()["topup_id"] == first.json()["topup_id"]
    # the same reference for another amount is a conflict
    conflict = await client.post("/v1/topups", json=_topup("r1", 900), headers={**bank, "Idempotency-Key": "pay-3"})
    assert conflict.status_code == 409, conflict.text
    assert conflict.headers["content-type"] == "application/problem+json"
    account = await client.get("/v1/accounts/A-1", headers=keys.headers("operator"))
    assert account.json()["balance_minor"] == 5700  # credited exactly once


async def test_topup_validation_and_unknown_account(client: httpx.AsyncClient, keys: Keys) -> None:
    h = {**keys.headers("integrator"), "Idempotency-Key": "x"}
    bad = await client.post("/v1/topups", json={**_topup("r"), "amount_minor": -5, "channel": "cash"}, headers=h)
    assert bad.status_code == 422
    assert {e["field"] for e in bad.json()["errors"]} == {"body.amount_minor", "body.channel"}
    floaty = await client.post("/v1/topups", json={**_topup("r"), "amount_minor": 1.5}, headers=h)
    assert floaty.status_code == 422 and floaty.json()["errors"][0]["field"] == "body.amount_minor"
    nobody = await client.post("/v1/topups", json=_topup("r", account="A-404"), headers=h)
    assert nobody.status_code == 404
    retry = await client.post("/v1/topups", json=_topup("r"), headers=h)  # the failed attempt released the key
    assert retry.status_code == 201


async def test_reversal_ledger_statement_credit(client: httpx.AsyncClient, keys: Keys) -> None:
    bank = keys.headers("integrator")
    await client.post("/v1/topups", json=_topup("r1", 1000), headers={**bank, "Idempotency-Key": "a"})
    rev = await client.post(
        "/v1/topups/reversals",
        json={"channel": "bank", "reference": "r1", "reason": "chargeback"},
        headers={**bank, "Idempotency-Key": "rev-1"},
    )
    assert rev.status_code == 201, rev.text
    assert rev.json()["reversed_minor"] == 1000 and rev.json()["balance_after_minor"] == 5000
    again = await client.post(
        "/v1/topups/reversals",
        json={"channel": "bank", "reference": "r1", "reason": "chargeback"},
        headers={**bank, "Idempotency-Key": "rev-2"},
    )
    assert again.status_code == 409  # AlreadyReversed

    cust = keys.headers("customer")
    ledger = await client.get("/v1/accounts/A-1/ledger", params={"limit": 2}, headers=cust)
    assert ledger.status_code == 200
    assert [e["amount_minor"] for e in ledger.json()["items"]] == [5000, 1000]
    rest = await client.get("/v1/accounts/A-1/ledger", params={"after": ledger.json()["next"]}, headers=cust)
    assert [e["amount_minor"] for e in rest.json()["items"]] == [-1000]

    st = await client.get(
        "/v1/accounts/A-1/statement",
        params={"start": (NOW - timedelta(days=400)).isoformat(), "end": (NOW + timedelta(days=400)).isoformat()},
        headers=cust,
    )
    assert st.status_code == 200, st.text
    assert st.json()["closing_balance_minor"] == 5000
    cols = await client.get("/v1/accounts/A-1/statement/columns", params=st.request.url.params, headers=cust)
    assert cols.status_code == 200 and cols.headers["content-type"] == "application/json", cols.text
    body = cols.json()
    assert body["closing_balance_minor"] == 5000 and body["opening_balance_minor"] == st.json()["opening_balance_minor"]
    assert [e["amount_minor"] for e in body["entries"]] == [e["amount_minor"] for e in st.json()["entries"]]
    assert len(body["intervals"]["interval_start"]) == len(st.json()["intervals"])
    other = await client.get("/v1/accounts/A-2/statement/columns", headers=cust)
    assert other.status_code == 404  # a customer sees only its own accounts
    credit = await client.get("/v1/accounts/A-1/credit", headers=cust)
    assert credit.status_code == 200, credit.text
    assert credit.json()["balance_minor"] == 5000
    assert credit.json()["facts"]["account_id"] == "A-1"
    assert credit.json()["days_of_credit_left"]["days"] is None  # no recent use


async def test_kpis(client: httpx.AsyncClient, keys: Keys) -> None:
    r = await client.get("/v1/kpis", params={"area": "north"}, headers=keys.headers("operator"))
    assert r.status_code == 200, r.text
    assert [a["area"] for a in r.json()["areas"]] == ["north"]
    inverted = await client.get(
        "/v1/kpis",
        params={"start": NOW.isoformat(), "end": (NOW - timedelta(days=1)).isoformat()},
        headers=keys.headers("operator"),
    )
    assert inverted.status_code == 422


async def test_tariff_versions(client: httpx.AsyncClient, keys: Keys) -> None:
    admin = keys.headers("admin")
    good = {
        "effective_from": "2027-01-01T00:00:00Z",
        "definition": {"kind": "flat", "price_per_kwh": "0.60", "currency": "CNY"},
    }
    r = await client.post("/v1/tariffs/T-FLAT/versions", json=good, headers=admin)
    assert r.status_code == 201, r.text
    assert [v["effective_from"][:10] for v in r.json()["versions"]] == ["2026-01-01", "2027-01-01"]
    dup = await client.post("/v1/tariffs/T-FLAT/versions", json=good, headers=admin)
    assert dup.status_code == 409
    bad = {"effective_from": "2027-02-01T00:00:00Z", "definition": {"kind": "flat", "price_per_kwh": 0.6}}
    invalid = await client.post("/v1/tariffs/T-FLAT/versions", json=bad, headers=admin)
    assert invalid.status_code == 422, invalid.text
    assert invalid.headers["content-type"] == "application/problem+json"
    assert (await client.post("/v1/tariffs/NOPE/versions", json=good, headers=admin)).status_code == 404
    listed = await client.get("/v1/tariffs", headers=keys.headers("approver"))
    assert [t["id"] for t in listed.json()] == ["T-FLAT"]


async def test_billing_hold_resolve(client: httpx.AsyncClient, keys: Keys, seeded: str) -> None:
    with psycopg.connect(seeded) as conn:
        conn.execute("update meters set billing_hold = 'register_reset' where id = 'M-1'")
        conn.execute(
            "insert into meter_events (meter_id, ts, kind, detail) values ('M-1', %s, 'register_reset', %s)",
            (NOW - timedelta(hours=1), json.dumps({"prev_wh": 9, "next_wh": 1})),
        )
    op = keys.headers("operator")
    held = await client.get("/v1/meters", params={"billing_hold": "true"}, headers=op)
    assert [m["id"] for m in held.json()["items"]] == ["M-1"]
    r = await client.post("/v1/meters/M-1/billing-hold/resolve", json={"note": "meter swapped"}, headers=op)
    assert r.status_code == 200, r.text
    assert r.json()["previous_hold"] == "register_reset"
    assert r.json()["resolved_by"] == "olga (meter swapped)"
    assert (await client.get("/v1/meters/M-1", headers=op)).json()["billing_hold"] is None
    assert (await client.post("/v1/meters/NOPE/billing-hold/resolve", headers=op)).status_code == 404


async def test_integrity_checks(client: httpx.AsyncClient, keys: Keys, seeded: str) -> None:
    op = keys.headers("operator")
    ok = await client.get("/v1/integrity/ledger", headers=op)
    assert ok.status_code == 200 and ok.json() == {"ok": True, "problems": []}
    with psycopg.connect(seeded) as conn:
        conn.execute("update accounts set balance_minor = balance_minor + 1 where id = 'A-2'")
    broken = await client.get("/v1/integrity/ledger", headers=op)
    assert broken.json()["ok"] is False
    assert [p["account_id"] for p in broken.json()["problems"]] == ["A-2"]
    audit = await client.get("/v1/integrity/audit", headers=op)
    assert audit.status_code == 200 and audit.json()["ok"] is True
    assert (await client.get("/v1/integrity/audit", headers=keys.headers("customer"))).status_code == 403
