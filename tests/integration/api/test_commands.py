"""Commands and policy through the API, carried out by control.operations: request (idempotent),
approval by a second person only, cancel, bulk, list, explain, policy versions."""

from __future__ import annotations

import httpx
import psycopg

from api.auth import Role
from api.keys import create_key
from tests.integration.api.conftest import Keys


def _cmd(action: str = "disconnect", meter: str = "M-1") -> dict[str, object]:
    return {"meter_id": meter, "action": action, "reason": "arrears, manual"}


async def test_manual_disconnect_needs_a_second_person(client: httpx.AsyncClient, keys: Keys, seeded: str) -> None:
    op = {**keys.headers("operator"), "Idempotency-Key": "cut-1"}
    r = await client.post("/v1/commands", json=_cmd(), headers=op)
    assert r.status_code == 202, r.text
    command = r.json()
    assert command["state"] == "awaiting_approval" and command["requested_by"] == "olga"
    assert command["account_id"] == "A-1"
    again = await client.post("/v1/commands", json=_cmd(), headers=op)
    assert again.status_code == 202 and again.json()["id"] == command["id"]
    assert again.headers["idempotent-replayed"] == "true"
    other = await client.post("/v1/commands", json=_cmd("reconnect"), headers=op)
    assert other.status_code == 422 and other.json()["code"] == "idempotency-mismatch"

    # olga also holds an approver key (same person, same name): she cannot approve her own request
    with psycopg.connect(seeded) as conn:
        olga_approver = create_key(conn, name="olga", role=Role.APPROVER).token
    own = await client.post(
        f"/v1/commands/{command['id']}/approve", headers={"Authorization": f"Bearer {olga_approver}"}
    )
    assert own.status_code == 403, own.text
    assert "requester" in own.json()["detail"]
    assert own.headers["content-type"] == "application/problem+json"
    # the operator role may not approve at all
    assert (
        await client.post(f"/v1/commands/{command['id']}/approve", headers=keys.headers("operator"))
    ).status_code == 403

    ok = await client.post(f"/v1/commands/{command['id']}/approve", headers=keys.headers("approver"))
    assert ok.status_code == 200, ok.text
    assert ok.json()["approved_by"] == "anna" and ok.json()["state"] != "awaiting_approval"
    twice = await client.post(f"/v1/commands/{command['id']}/approve", headers=keys.headers("approver2"))
    assert twice.status_code == 409 and twice.json()["code"] == "not-awaiting-approval"

    cancelled = await client.post(
        f"/v1/commands/{command['id']}/cancel", json={"reason": "paid at the counter"}, headers=keys.headers("operator")
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    listed = await client.get("/v1/commands", params={"state": "cancelled"}, headers=keys.headers("approver"))
    assert [c["id"] for c in listed.json()["items"]] == [command["id"]]
    got = await client.get(f"/v1/commands/{command['id']}", headers=keys.headers("approver"))
    assert got.json()["state"] == "cancelled"
    assert (await client.get("/v1/commands/999999", headers=keys.headers("approver"))).status_code == 404


async def test_read_is_scheduled_without_approval(client: httpx.AsyncClient, keys: Keys) -> None:
    r = await client.post(
        "/v1/commands", json=_cmd("read_now"), headers={**keys.headers("operator"), "Idempotency-Key": "read-1"}
    )
    assert r.status_code == 202, r.text
    assert r.json()["state"] != "awaiting_approval"
    bad = await client.post(
        "/v1/commands", json=_cmd("explode"), headers={**keys.headers("operator"), "Idempotency-Key": "x"}
    )
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "body.action"
    nomodel = await client.post(
        "/v1/commands", json=_cmd("read_now", "NOPE"), headers={**keys.headers("operator"), "Idempotency-Key": "y"}
    )
    assert nomodel.status_code == 404


async def test_bulk(client: httpx.AsyncClient, keys: Keys) -> None:
    h = {**keys.headers("operator"), "Idempotency-Key": "bulk-1"}
    unknown = await client.post(
        "/v1/commands/bulk", json={"meter_ids": ["M-1", "M-X"], "action": "read_now", "reason": "r"}, headers=h
    )
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "body.meter_ids"
    r = await client.post(
        "/v1/commands/bulk", json={"meter_ids": ["M-1", "M-2", "M-1"], "action": "read_now", "reason": "r"}, headers=h
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["count"] == 2 and [c["meter_id"] for c in body["commands"]] == ["M-1", "M-2"]
    assert {c["batch_id"] for c in body["commands"]} == {body["batch_id"]}


async def test_explain_and_policy(client: httpx.AsyncClient, keys: Keys) -> None:
    r = await client.get("/v1/accounts/A-1/explain", headers=keys.headers("operator"))
    assert r.status_code == 200, r.text
    assert r.json()["account_id"] == "A-1" and r.json()["action"] == "disconnect"
    assert r.json()["decision"]["kind"] in ("allowed", "deferred", "refused")
    mine = await client.get(
        "/v1/accounts/A-1/explain", params={"action": "reconnect"}, headers=keys.headers("customer")
    )
    assert mine.status_code == 200 and mine.json()["action"] == "reconnect"

    policies = await client.get("/v1/policy", headers=keys.headers("approver"))
    assert policies.status_code == 200, policies.text
    assert "cn-residential" in policies.json()
    one = await client.get("/v1/policy/cn-residential", headers=keys.headers("approver"))
    assert one.status_code == 200
    versions = await client.get("/v1/policy/cn-residential/versions", headers=keys.headers("approver"))
    assert versions.status_code == 200, versions.text
    assert len(versions.json()) >= 1
    assert (await client.get("/v1/policy/nope", headers=keys.headers("approver"))).status_code == 404
    looser = await client.post(
        "/v1/policy/cn-residential/versions",
        json={"document": {"profile": "cn-residential", "notice": {"lead_h": 1}}},
        headers=keys.headers("admin"),
    )
    assert looser.status_code == 422, looser.text
    assert looser.headers["content-type"] == "application/problem+json"


async def test_cancel_in_terminal_state_is_409(client: httpx.AsyncClient, keys: Keys) -> None:
    r = await client.post(
        "/v1/commands", json=_cmd("read_now"), headers={**keys.headers("operator"), "Idempotency-Key": "c-1"}
    )
    cid = r.json()["id"]
    first = await client.post(f"/v1/commands/{cid}/cancel", json={"reason": "x"}, headers=keys.headers("approver"))
    assert first.status_code == 200 and first.json()["state"] == "cancelled"
    second = await client.post(f"/v1/commands/{cid}/cancel", json={"reason": "x"}, headers=keys.headers("operator"))
    assert second.status_code == 409, second.text
    assert second.json()["code"] == "transition-error"
    missing = await client.post(
        "/v1/topups/reversals",
        json={"channel": "bank", "reference": "never", "reason": "x"},
        headers={**keys.headers("integrator"), "Idempotency-Key": "rv"},
    )
    assert missing.status_code == 404, missing.text


async def test_batch_above_threshold_needs_one_approval(client: httpx.AsyncClient, keys: Keys, seeded: str) -> None:
    """Scenario 20 at the API: a batch above 100 meters waits for an approver, approved at once."""
    with psycopg.connect(seeded) as conn:
        for i in range(101):
            conn.execute("insert into meters (id, service_point_id) values (%s, 'SP-1')", (f"B-{i:03d}",))
    meters = [f"B-{i:03d}" for i in range(101)]
    r = await client.post(
        "/v1/commands/bulk",
        json={"meter_ids": meters, "action": "read_now", "reason": "survey"},
        headers={**keys.headers("operator"), "Idempotency-Key": "survey-1"},
    )
    assert r.status_code == 202, r.text
    batch = r.json()["batch_id"]
    assert {c["state"] for c in r.json()["commands"]} == {"awaiting_approval"}
    assert (await client.post(f"/v1/batches/{batch}/approve", headers=keys.headers("operator"))).status_code == 403
    with psycopg.connect(seeded) as conn:
        olga_approver = create_key(conn, name="olga", role=Role.APPROVER).token
    own = await client.post(f"/v1/batches/{batch}/approve", headers={"Authorization": f"Bearer {olga_approver}"})
    assert own.status_code == 403 and "requester" in own.json()["detail"]
    ok = await client.post(f"/v1/batches/{batch}/approve", headers=keys.headers("approver"))
    assert ok.status_code == 200, ok.text
    assert ok.json()["approved"] == 101 and ok.json()["states"] == {"scheduled": 101}
    again = await client.post(f"/v1/batches/{batch}/approve", headers=keys.headers("approver"))
    assert again.status_code == 409
    assert (await client.post("/v1/batches/nope/approve", headers=keys.headers("approver"))).status_code == 404
