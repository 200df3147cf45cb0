"""A month of one meter's 15-minute readings across a tariff change and a tier boundary.

The expected ledger is computed here by hand, independently of prepaid's pricing:
130 Wh per interval; monthly tiers 0-100 kWh then above; prices 0.50 / 0.80 CNY/kWh
until 16 March 00:00 (UTC service point), 0.60 / 0.90 from then on. Interval 769
(the 770th) crosses 100 kWh: 30 Wh in block 1, 100 Wh in block 2.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg

from prepaid.engine import VersionCache, bill_batch
from prepaid.operations import statement, statement_columns, statement_json, verify_ledger
from tests.integration.prepaid.conftest import enqueue, setup_account

MARCH = datetime(2026, 3, 1, tzinfo=UTC)
CHANGE = datetime(2026, 3, 16, tzinfo=UTC)
WH = 130


def tiered(p1: str, p2: str) -> dict[str, object]:
    return {
        "kind": "tiered",
        "currency": "CNY",
        "period": "month",
        "blocks": [{"up_to_kwh": "100", "price_per_kwh": p1}, {"up_to_kwh": None, "price_per_kwh": p2}],
    }


def expected_daily_debits() -> list[int]:
    """Per day: the half-up rounding of the cumulative exact charge, minus what was posted before."""
    posted_total = 0
    cum_micro = 0
    out = []
    for day in range(31):
        for k in range(96):
            i = day * 96 + k
            start = MARCH + timedelta(minutes=15 * i)
            r1, r2 = (50_000, 80_000) if start < CHANGE else (60_000, 90_000)  # µfen per Wh
            before, after = WH * i, WH * (i + 1)
            in1 = max(0, min(after, 100_000) - before)
            cum_micro += in1 * r1 + (WH - in1) * r2
        total = (cum_micro + 500_000) // 1_000_000
        out.append(total - posted_total)
        posted_total = total
    return out


async def test_month_gives_exactly_the_expected_ledger(db_url: str) -> None:
    setup_account(
        db_url,
        balance_minor=50_000,
        versions=[(datetime(2026, 1, 1, tzinfo=UTC), tiered("0.5", "0.8")), (CHANGE, tiered("0.6", "0.9"))],
        timezone="UTC",
    )
    register = 50_000
    enqueue(db_url, "M1", [(MARCH, float(register))])
    cache = VersionCache()
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        for day in range(31):
            rs = []
            for k in range(1, 97):
                register += WH
                rs.append((MARCH + timedelta(days=day, minutes=15 * k), float(register)))
            enqueue(db_url, "M1", rs)
            result = await bill_batch(conn, now=MARCH + timedelta(days=day + 1), limit=500, versions=cache)
            assert result.deleted == len(rs) + (1 if day == 0 else 0)
        await conn.commit()
        st = await statement(conn, "A1", MARCH, MARCH + timedelta(days=31))
        cols = await statement_columns(conn, "A1", MARCH, MARCH + timedelta(days=31))
        doc = json.loads(await statement_json(conn, "A1", MARCH, MARCH + timedelta(days=31)))
        problems = await verify_ledger(conn)

    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "select kind, amount_minor, balance_after_minor from ledger_entries where account_id = 'A1' order by id"
        ).fetchall()
    expected = expected_daily_debits()
    assert sum(expected) == 29947  # 100 kWh x 0.50 + 87.2 kWh x 0.80 + 199.68 kWh x 0.90 = 299.472 CNY
    assert [r[0] for r in rows] == ["opening_balance"] + ["consumption"] * 31
    assert [-r[1] for r in rows[1:]] == expected
    balance = 50_000
    for r, debit in zip(rows[1:], expected, strict=True):
        balance -= debit
        assert r[2] == balance
    assert problems == []

    assert len(st.intervals) == 31 * 96 + 1  # one interval is split across the tier boundary
    split = [x for x in st.intervals if x.interval_start == MARCH + timedelta(minutes=15 * 769)]
    assert [(x.block, x.energy_wh, x.rate_micro) for x in split] == [(1, 30, 50_000), (2, 100, 80_000)]
    first_after_change = [x for x in st.intervals if x.interval_start == CHANGE]
    assert [(x.label, x.rate_micro) for x in first_after_change] == [("block2", 90_000)]
    assert st.energy_wh == 31 * 96 * WH
    assert st.charges_micro == 29_947_200_000
    assert st.intervals[-1].balance_after_minor == 50_000 - 29947

    # the columnar fast path carries exactly the same statement
    c = cols.intervals
    as_rows = list(
        zip(
            c["interval_start_s"].tolist(),
            c["meter_id"],
            c["energy_wh"].tolist(),
            c["label"],
            c["block"].tolist(),
            c["rate_micro"].tolist(),
            c["amount_micro"].tolist(),
            c["balance_after_minor"].tolist(),
            c["ledger_entry_id"].tolist(),
            strict=True,
        )
    )
    assert as_rows == [
        (
            int(x.interval_start.timestamp()),
            x.meter_id,
            x.energy_wh,
            x.label,
            x.block,
            x.rate_micro,
            x.amount_micro,
            x.balance_after_minor,
            x.ledger_entry_id,
        )
        for x in st.intervals
    ]
    assert (cols.energy_wh, cols.charges_micro, cols.entries) == (st.energy_wh, st.charges_micro, st.entries)
    assert (cols.opening_balance_minor, cols.closing_balance_minor) == (
        st.opening_balance_minor,
        st.closing_balance_minor,
    )
    assert doc["intervals"]["interval_start"][:2] == ["2026-03-01T00:00:00Z", "2026-03-01T00:15:00Z"]
    assert doc["intervals"]["amount_micro"] == c["amount_micro"].tolist()
    assert doc["intervals"]["label"] == c["label"]
    assert doc["closing_balance_minor"] == st.closing_balance_minor
    assert len(doc["entries"]) == len(st.entries)
