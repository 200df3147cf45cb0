"""A mass top-up on one feeder: staged and jittered reconnects, protected customers first,
never more than the feeder's reconnect rate."""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg
import pytest

from tests.integration.control.harness import (
    RecordingTransport,
    Rig,
    SettableClock,
    account_event,
    pool,
    register_site,
    rows,
)
from tests.unit.control.factories import TUESDAY_10

pytestmark = pytest.mark.integration


async def test_mass_reconnect_is_staged_protected_first(db_url: str) -> None:
    sites = register_site(db_url, n=45, now=TUESDAY_10)
    protected_account, protected_meter = sites[-1]
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("update meters set relay_state = 'disconnected'")
        conn.execute(
            "insert into protections (account_id, kind, valid_from) values (%s, 'life_support', %s)",
            (protected_account, TUESDAY_10 - timedelta(days=1)),
        )
    async with pool(db_url, size=6) as p:
        rig = Rig(db_url, p, SettableClock(TUESDAY_10), RecordingTransport())
        rig.engine.settings.jitter_seed = 7
        for account, meter in sites:
            rig.transport.relay[meter] = "disconnected"
            account_event(db_url, account, "credit_restored", TUESDAY_10)
        await rig.engine.process_events()
        # Past the feeder's rate (30 queued), reconnects are jittered over up to 10 minutes;
        # the protected customer is not delayed and goes first.
        ((jittered,),) = rows(db_url, "select count(*) from commands where not_before > %s", TUESDAY_10)
        assert jittered >= 10
        assert rows(db_url, "select priority, not_before from commands where meter_id = %s", protected_meter) == [
            (10, TUESDAY_10)
        ]
        sent_at: dict[str, datetime] = {}
        t = TUESDAY_10
        while t <= TUESDAY_10 + timedelta(minutes=20):
            rig.clock.at = t
            while await rig.engine.dispatch_due():
                pass
            for meter, _ in rig.transport.sent:
                sent_at.setdefault(meter, t)
            t += timedelta(seconds=30)
        assert rig.transport.sent[0] == (protected_meter, "arm")
        assert len(sent_at) == 45  # everyone reconnected within 20 minutes
        times = sorted(sent_at.values())
        for start in times:
            assert sum(1 for s in times if start <= s < start + timedelta(minutes=5)) <= 30
        assert rows(db_url, "select state, count(*) from commands group by state") == [("confirmed", 45)]
