"""Every role boundary, through the real app: 401 without a valid key, 403 for a role
not allowed on a route, 404 (never the data) for a customer asking for another's account."""

from __future__ import annotations

import httpx
import psycopg
import pytest

from api.keys import revoke_key
from headend.cli import main as headend_main
from tests.integration.api.conftest import Keys

ROLES = ("admin", "operator", "approver", "integrator", "customer")

# (method, path, body, roles allowed past auth)
ROUTES: list[tuple[str, str, dict[str, object] | None, set[str]]] = [
    ("GET", "/v1/meters", None, {"admin", "operator", "approver"}),
    ("GET", "/v1/meters/M-1", None, {"admin", "operator", "approver"}),
    ("GET", "/v1/service-points", None, {"admin", "operator", "approver"}),
    ("POST", "/v1/service-points", {"id": "SP-NEW", "feeder": "F-9"}, {"admin", "operator"}),
    ("POST", "/v1/meters", {"id": "M-NEW", "service_point_id": "SP-1"}, {"admin", "operator"}),
    ("PATCH", "/v1/meters/M-1", {"model": "native"}, {"admin", "operator"}),
    ("GET", "/v1/meters/M-1/readings", None, {"admin", "operator", "approver"}),
    ("GET", "/v1/areas/north/readings/aggregate", None, {"admin", "operator", "approver"}),
    ("GET", "/v1/events", None, {"admin", "operator", "approver"}),
    ("GET", "/v1/accounts", None, {"admin", "operator", "approver", "customer"}),
    ("GET", "/v1/accounts/A-1", None, {"admin", "operator", "approver", "customer"}),
    ("GET", "/v1/accounts/A-1/ledger", None, {"admin", "operator", "approver", "customer"}),
    ("GET", "/v1/tariffs", None, {"admin", "operator", "approver"}),
    ("POST", "/v1/tariffs/T-FLAT/versions", {"effective_from": "2027-01-01T00:00:00Z", "definition": {}}, {"admin"}),
    ("GET", "/v1/commands", None, {"admin", "operator", "approver"}),
    ("POST", "/v1/commands", {"meter_id": "M-1", "action": "read_now", "reason": "t"}, {"admin", "operator"}),
    ("POST", "/v1/commands/1/approve", None, {"admin", "approver"}),
    ("POST", "/v1/batches/b-1/approve", None, {"admin", "approver"}),
    ("POST", "/v1/commands/1/cancel", {"reason": "t"}, {"admin", "operator", "approver"}),
    (
        "POST",
        "/v1/topups",
        {"account_id": "A-1", "channel": "bank", "reference": "r", "amount_minor": 1},
        {"admin", "integrator"},
    ),
    ("GET", "/v1/notices", None, {"admin", "operator", "approver"}),
    ("POST", "/v1/notices/1/delivery", None, {"admin", "operator"}),
    ("GET", "/v1/quarantine", None, {"admin", "operator", "approver"}),
    ("POST", "/v1/quarantine/1/replay", None, {"admin", "operator"}),
    ("GET", "/v1/kpis", None, {"admin", "operator", "approver"}),
    ("POST", "/v1/meters/M-1/billing-hold/resolve", None, {"admin", "operator"}),
    ("POST", "/v1/accounts/A-1/protections", {"kind": "vulnerable"}, {"admin", "operator"}),
    ("POST", "/v1/accounts/A-1/disputes", {"amount_minor": 1}, {"admin", "operator"}),
    ("POST", "/v1/protections/1/review", {"keep": True}, {"admin", "operator", "approver"}),
    ("GET", "/v1/cases", None, {"admin", "operator", "approver"}),
    ("PUT", "/v1/kill-switch", {"on": False, "reason": "t"}, {"admin"}),
    ("PUT", "/v1/payment-channels/bank", {"healthy": True}, {"admin", "operator"}),
    ("GET", "/v1/accounts/A-1/installment-plans", None, {"admin", "operator", "approver", "customer"}),
    (
        "POST",
        "/v1/installment-plans/1/payments",
        {"channel": "bank", "reference": "r", "amount_minor": 1},
        {"admin", "integrator"},
    ),
    ("GET", "/v1/policy", None, {"admin", "operator", "approver"}),
    ("GET", "/v1/accounts/A-1/explain", None, {"admin", "operator", "approver", "customer"}),
    ("GET", "/metrics", None, {"admin", "operator"}),
    ("GET", "/v1/stream?max_seconds=0.1", None, {"admin", "operator", "approver"}),
]


async def test_role_boundaries(client: httpx.AsyncClient, keys: Keys) -> None:
    """One app, every (route, role) pair: allowed roles get past auth, the others get 403."""
    wrong: list[str] = []
    for method, path, body, allowed in ROUTES:
        for role in ROLES:
            headers = {**keys.headers(role), "Idempotency-Key": f"k-{role}-{path}"}
            r = await client.request(method, path, json=body, headers=headers)
            if role in allowed:
                if r.status_code == 401 or (r.status_code == 403 and r.json()["code"] == "forbidden"):
                    wrong.append(f"{role} {method} {path}: {r.status_code} {r.text}")
            elif r.status_code != 403 or r.headers["content-type"] != "application/problem+json":
                wrong.append(f"{role} {method} {path}: expected 403, got {r.status_code} {r.text}")
            elif r.json()["code"] != "forbidden":
                wrong.append(f"{role} {method} {path}: code {r.json()['code']}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("path", ["/v1/meters", "/v1/accounts/A-1", "/v1/commands"])
async def test_no_key_is_401(client: httpx.AsyncClient, path: str) -> None:
    r = await client.get(path)
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["www-authenticate"].startswith("Bearer")
    bad = await client.get(path, headers={"Authorization": "Bearer hdk_not-a-real-key"})
    assert bad.status_code == 401
    assert bad.json()["detail"] == "unknown or revoked API key"


async def test_x_api_key_header_works(client: httpx.AsyncClient, keys: Keys) -> None:
    r = await client.get("/v1/meters", headers={"X-API-Key": keys.operator})
    assert r.status_code == 200
    assert [m["id"] for m in r.json()["items"]] == ["M-1", "M-2"]


async def test_revoked_key_is_401(client: httpx.AsyncClient, keys: Keys, seeded: str) -> None:
    assert (await client.get("/v1/meters", headers=keys.headers("operator"))).status_code == 200
    with psycopg.connect(seeded) as conn:
        assert revoke_key(conn, name="olga") == 1
    assert (await client.get("/v1/meters", headers=keys.headers("operator"))).status_code == 401


@pytest.mark.parametrize("suffix", ["", "/ledger", "/events", "/notices", "/statement", "/credit", "/explain"])
async def test_customer_sees_other_account_as_404(client: httpx.AsyncClient, keys: Keys, suffix: str) -> None:
    r = await client.get(f"/v1/accounts/A-2{suffix}", headers=keys.headers("customer"))
    assert r.status_code == 404, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert "5000" not in r.text and "10000" not in r.text  # no balance leaks
    # and exactly the same answer as for an account that does not exist at all
    missing = await client.get(f"/v1/accounts/NOPE{suffix}", headers=keys.headers("customer"))
    assert missing.status_code == 404
    assert missing.json()["detail"] == "account NOPE not found"
    assert r.json()["detail"] == "account A-2 not found"


async def test_customer_sees_own_account(client: httpx.AsyncClient, keys: Keys) -> None:
    r = await client.get("/v1/accounts/A-1", headers=keys.headers("customer"))
    assert r.status_code == 200
    assert r.json()["balance_minor"] == 5000
    listed = await client.get("/v1/accounts", headers=keys.headers("customer"))
    assert [a["id"] for a in listed.json()["items"]] == ["A-1"]
    ledger = await client.get("/v1/accounts/A-1/ledger", headers=keys.headers("customer"))
    assert [e["amount_minor"] for e in ledger.json()["items"]] == [5000]


async def test_integrator_cannot_read_accounts(client: httpx.AsyncClient, keys: Keys) -> None:
    r = await client.get("/v1/accounts/A-1", headers=keys.headers("integrator"))
    assert r.status_code == 403


def test_cli_create_list_revoke(seeded: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert headend_main(["apikey", "--database-url", seeded, "create", "--name", "pos-1", "--role", "integrator"]) == 0
    out = capsys.readouterr().out
    token = out.strip().splitlines()[-1]
    assert token.startswith("hdk_") and len(token) > 40
    with psycopg.connect(seeded) as conn:
        row = conn.execute("select token_sha256 from api_keys where name = 'pos-1'").fetchone()
    assert row is not None and token not in row[0] and len(row[0]) == 64
    assert headend_main(["apikey", "--database-url", seeded, "list"]) == 0
    assert "pos-1\tintegrator\t-\tactive" in capsys.readouterr().out
    assert headend_main(["apikey", "--database-url", seeded, "revoke", "--name", "pos-1"]) == 0
    assert headend_main(["apikey", "--database-url", seeded, "revoke", "--name", "pos-1"]) == 1


def test_cli_customer_needs_existing_account(seeded: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc = headend_main(["apikey", "--database-url", seeded, "create", "--name", "c", "--role", "customer"])
    assert rc == 2
    rc = headend_main(
        ["apikey", "--database-url", seeded, "create", "--name", "c", "--role", "customer", "--account", "ZZ"]
    )
    assert rc == 2
    assert "unknown account(s): ZZ" in capsys.readouterr().out
