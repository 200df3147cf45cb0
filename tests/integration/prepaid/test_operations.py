"""Operations control and the api read: credit facts, installment plans, KPIs, tariffs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from headend import registry
from prepaid import operations as ops
from prepaid.engine import bill_batch
from prepaid.errors import Conflict, TariffError
from tests.integration.prepaid.conftest import enqueue, setup_account

NOW = datetime(2026, 3, 10, 2, tzinfo=UTC)


async def test_previous_occupants_debt_stays_on_the_closed_account(db_url: str) -> None:
    setup_account(db_url, account="OLD", meter="M1")
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("update accounts set balance_minor = -2500, status = 'closed' where id = 'OLD'")
        conn.execute(
            "insert into ledger_entries (account_id, kind, amount_minor, balance_after_minor)"
            " values ('OLD', 'adjustment', -2500, -2500)"
        )
        registry.open_account(conn, "NEW", service_point_id="SP-OLD", tariff_id="T1", balance_minor=0)
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        facts = await ops.credit_facts(conn, "NEW", NOW)
        r = await ops.topup(conn, account_id="NEW", channel="app", reference="n1", amount_minor=1000, now=NOW)
    assert facts.previous_occupant_debt_minor == 2500 and facts.only_previous_occupant_debt
    assert facts.debt_minor == 0 and r.debt_recovered_minor == 0 and r.balance_after_minor == 1000


async def test_installment_plan_missed_then_paid(db_url: str) -> None:
    setup_account(db_url, balance_minor=0)
    t = datetime(2026, 2, 2, tzinfo=UTC)
    enqueue(db_url, "M1", [(t, 0.0), (t + timedelta(days=1), 10_000.0)])  # 10 kWh x 0.50 = 5.00
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        await bill_batch(conn, now=t + timedelta(days=1))
        plan = await ops.create_installment_plan(
            conn,
            account_id="A1",
            period_start=datetime(2026, 2, 1, tzinfo=UTC),
            period_end=datetime(2026, 3, 1, tzinfo=UTC),
            count=3,
            first_due=datetime(2026, 3, 5, tzinfo=UTC),
            every_days=30,
            created_by="ops",
            now=NOW - timedelta(days=8),
        )
        assert [i.amount_minor for i in plan.installments] == [167, 167, 166]
        assert plan.state == "good_standing"
        facts = await ops.credit_facts(conn, "A1", NOW)  # first installment due 5 March, unpaid
        assert facts.installment_plan_state == "missed"
        paid = await ops.pay_installment(
            conn, plan_id=plan.id, channel="bank", reference="i1", amount_minor=167, now=NOW
        )
        again = await ops.pay_installment(
            conn, plan_id=plan.id, channel="bank", reference="i1", amount_minor=167, now=NOW
        )
        with pytest.raises(Conflict):
            await ops.create_installment_plan(
                conn,
                account_id="A1",
                period_start=datetime(2026, 2, 1, tzinfo=UTC),
                period_end=datetime(2026, 3, 1, tzinfo=UTC),
                count=2,
                first_due=NOW,
                created_by="ops",
                now=NOW,
            )
    assert paid.state == "good_standing" and paid.paid_minor == 167 and again.paid_minor == 167


async def test_kpis_collection_rate_and_arrears(db_url: str) -> None:
    setup_account(db_url, balance_minor=0)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        await ops.add_debt(
            conn, account_id="A1", kind="arrears", amount_minor=2000, reference="2025", now=start - timedelta(days=1)
        )
        await ops.topup(
            conn, account_id="A1", channel="bank", reference="k1", amount_minor=3000, now=start + timedelta(days=1)
        )
        enqueue(db_url, "M1", [(start, 0.0), (start + timedelta(days=2), 6000.0)])  # 3.00 of charges
        await bill_batch(conn, now=start + timedelta(days=2))
        await conn.commit()
        (k,) = await ops.kpis(conn, start=start, end=start + timedelta(days=365))
    # 3000 paid: 900 recovered old arrears (30 %), 2100 to the balance; 300 charged
    assert (k.charges_minor, k.payments_minor, k.old_arrears_collected_minor) == (300, 3000, 900)
    assert k.arrears_start_minor == 2000 and k.arrears_end_minor == 1100
    assert str(k.old_arrears_recovery_rate) == "0.4500" and str(k.collection_rate) == "1.0000"


async def test_tariff_versions_validate_and_never_rerate_billed_consumption(db_url: str) -> None:
    setup_account(db_url, balance_minor=0)
    t = datetime(2026, 2, 2, tzinfo=UTC)
    enqueue(db_url, "M1", [(t, 0.0), (t + timedelta(hours=1), 500.0)])
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        await bill_batch(conn, now=t + timedelta(hours=1))
        with pytest.raises(TariffError):
            await ops.add_tariff_version(
                conn, tariff_id="T1", effective_from=t, definition={"kind": "flat"}, created_by="x", now=NOW
            )
        with pytest.raises(Conflict):
            await ops.add_tariff_version(
                conn,
                tariff_id="T1",
                effective_from=t,
                definition={"kind": "flat", "price_per_kwh": "0.9"},
                created_by="x",
                now=NOW,
            )
        added = await ops.add_tariff_version(
            conn,
            tariff_id="T1",
            effective_from=t + timedelta(days=1),
            definition={"kind": "flat", "price_per_kwh": "0.9"},
            created_by="x",
            now=NOW,
        )
        versions = await ops.list_tariff_versions(conn, "T1")
    assert added.effective_from == t + timedelta(days=1)
    assert [v.effective_from for v in versions][-1] == t + timedelta(days=1)
