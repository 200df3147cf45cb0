"""Top-ups: idempotency on (channel, reference), the split, too-small, reversal, events."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest

from prepaid import operations as ops
from prepaid.errors import AlreadyReversed, NotFound, TopupConflict
from tests.integration.prepaid.conftest import setup_account

NOW = datetime(2026, 3, 3, 2, tzinfo=UTC)  # Tuesday 10:00 Shanghai


def set_balance(db_url: str, account: str, amount: int, state: str) -> None:
    """Bring the account to a balance through a ledger entry, as the engine would."""
    with psycopg.connect(db_url) as conn:
        bal = conn.execute("select balance_minor from accounts where id = %s", (account,)).fetchone()
        assert bal is not None
        conn.execute(
            "insert into ledger_entries (account_id, kind, amount_minor, balance_after_minor)"
            " values (%s, 'adjustment', %s, %s)",
            (account, amount - bal[0], amount),
        )
        conn.execute("update accounts set balance_minor = %s where id = %s", (amount, account))
        conn.execute(
            "insert into credit_state (account_id, state) values (%s, %s)"
            " on conflict (account_id) do update set state = excluded.state",
            (account, state),
        )


async def test_same_reference_twice_is_one_topup(db_url: str) -> None:
    setup_account(db_url, balance_minor=0)
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        a = await ops.topup(conn, account_id="A1", channel="bank", reference="TX-1", amount_minor=5000, now=NOW)
        b = await ops.topup(conn, account_id="A1", channel="bank", reference="TX-1", amount_minor=5000, now=NOW)
        c = await ops.topup(conn, account_id="A1", channel="app", reference="TX-1", amount_minor=100, now=NOW)
        with pytest.raises(TopupConflict):
            await ops.topup(conn, account_id="A1", channel="bank", reference="TX-1", amount_minor=4000, now=NOW)
        with pytest.raises(NotFound):
            await ops.topup(conn, account_id="nope", channel="bank", reference="TX-2", amount_minor=1, now=NOW)
    assert not a.duplicate and b.duplicate and not c.duplicate
    assert b.topup_id == a.topup_id and b.balance_after_minor == a.balance_after_minor == 5000
    with psycopg.connect(db_url) as conn:
        assert conn.execute("select balance_minor from accounts").fetchone() == (5100,)
        n = conn.execute("select count(*) from ledger_entries where kind = 'topup'").fetchone()
        events = conn.execute("select kind from account_events where kind = 'topup'").fetchall()
    assert n == (2,) and len(events) == 2


async def test_split_repays_emergency_credit_recovers_capped_debt_and_restores(db_url: str) -> None:
    setup_account(db_url)
    set_balance(db_url, "A1", -1000, "exhausted")  # emergency credit used up
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        debt_id = await ops.add_debt(
            conn, account_id="A1", kind="arrears", amount_minor=10_000, reference="old", now=NOW
        )
        r = await ops.topup(conn, account_id="A1", channel="counter", reference="C-1", amount_minor=5000, now=NOW)
        facts = await ops.credit_facts(conn, "A1", NOW)
    # 30 % of 5000 = 1500 would leave 2500 >= 500: allowed
    assert (r.emergency_repaid_minor, r.debt_recovered_minor, r.balance_after_minor) == (1000, 1500, 2500)
    assert r.restored and r.still_needed_minor == 0
    assert facts.debt_minor == 8500 and facts.credit_state == "normal"
    with psycopg.connect(db_url) as conn:
        kinds = [k for (k,) in conn.execute("select kind from account_events order by id").fetchall()]
        rec = conn.execute(
            "select amount_minor, detail->>'debt_id' from ledger_entries where kind = 'debt_recovery'"
        ).fetchall()
    assert kinds == ["credit_restored", "topup"]
    assert rec == [(-1500, str(debt_id))]


async def test_too_small_topup_tells_the_exact_amount_still_needed(db_url: str) -> None:
    setup_account(db_url)
    set_balance(db_url, "A1", -1000, "exhausted")
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        await ops.add_debt(conn, account_id="A1", kind="arrears", amount_minor=10_000, reference="old", now=NOW)
        small = await ops.topup(conn, account_id="A1", channel="app", reference="A-1", amount_minor=1200, now=NOW)
        exact = await ops.topup(
            conn, account_id="A1", channel="app", reference="A-2", amount_minor=small.still_needed_minor, now=NOW
        )
    assert (small.balance_after_minor, small.debt_recovered_minor, small.still_needed_minor) == (200, 0, 300)
    assert not small.restored
    assert exact.restored and exact.balance_after_minor == 500 and exact.debt_recovered_minor == 0
    with psycopg.connect(db_url) as conn:
        notice = conn.execute("select kind, body->>'still_needed_minor' from notices").fetchall()
    assert notice == [("topup_too_small", "300")]


async def test_friendly_credit_use_becomes_debt(db_url: str) -> None:
    setup_account(db_url)
    set_balance(db_url, "A1", -3000, "friendly")  # 2000 below the emergency floor
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        r = await ops.topup(conn, account_id="A1", channel="atm", reference="X", amount_minor=2000, now=NOW)
        facts = await ops.credit_facts(conn, "A1", NOW)
    assert r.friendly_to_debt_minor == 2000 and r.balance_after_minor == 1000 and r.restored
    assert facts.debt_minor == 2000 and facts.balance_minor == 1000
    assert await _verify(db_url) == []


async def test_reversal_takes_the_money_back_once(db_url: str) -> None:
    setup_account(db_url)
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        await ops.add_debt(conn, account_id="A1", kind="arrears", amount_minor=1000, reference="old", now=NOW)
        await ops.topup(conn, account_id="A1", channel="pos", reference="P-1", amount_minor=3000, now=NOW)
        rev = await ops.reverse_topup(conn, channel="pos", reference="P-1", reason="chargeback", now=NOW)
        with pytest.raises(AlreadyReversed):
            await ops.reverse_topup(conn, channel="pos", reference="P-1", reason="again", now=NOW)
        facts = await ops.credit_facts(conn, "A1", NOW)
    assert rev.reversed_minor == 3000 and rev.debt_restored_minor == 900 and rev.balance_after_minor == 0
    assert facts.debt_minor == 1000
    assert await _verify(db_url) == []


async def _verify(db_url: str) -> list[object]:
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        return list(await ops.verify_ledger(conn))


async def test_disputed_part_of_a_debt_is_not_recovered(db_url: str) -> None:
    """DOMAIN scenario 15: a dispute open on 300 of 500 debt; only 200 may be recovered."""
    setup_account(db_url)
    with psycopg.connect(db_url) as conn:
        conn.execute("insert into disputes (account_id, amount_minor) values ('A1', 300)")
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        await ops.add_debt(conn, account_id="A1", kind="arrears", amount_minor=500, reference="d", now=NOW)
        r = await ops.topup(conn, account_id="A1", channel="bank", reference="big", amount_minor=10_000, now=NOW)
        facts = await ops.credit_facts(conn, "A1", NOW)
    assert r.debt_recovered_minor == 200
    assert (facts.debt_minor, facts.disputed_minor, facts.recoverable_debt_minor) == (300, 300, 0)
