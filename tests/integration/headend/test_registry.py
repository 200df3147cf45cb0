"""Registry upserts are idempotent and keep the ledger invariant for opening balances."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg

from headend import registry


def test_register_everything_twice(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        for _ in range(2):
            registry.ensure_tariff(
                conn,
                "flat",
                "Flat",
                effective_from=datetime(2026, 1, 1, tzinfo=UTC),
                definition={"kind": "flat", "price_per_kwh": "0.56", "currency": "CNY"},
            )
            registry.ensure_service_point(conn, "SP1", feeder="F1")
            registry.ensure_meter(conn, "M1", service_point_id="SP1", rated_current_a=60)
            registry.open_account(conn, "A1", service_point_id="SP1", tariff_id="flat", balance_minor=5000)
        row = conn.execute(
            "select a.balance_minor, (select sum(amount_minor) from ledger_entries e where e.account_id = a.id),"
            " (select count(*) from tariff_versions), (select count(*) from meters) from accounts a"
        ).fetchone()
    assert row == (5000, 5000, 1, 1)
