"""Policy versions: a plan made under one version is re-checked under the version in force at
dispatch, and the audit keeps both (DOMAIN.md §5.3)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from control import operations
from control.errors import PolicyError
from control.policy import load_profile_document
from tests.integration.control.harness import RecordingTransport, Rig, SettableClock, pool, register_site, rows
from tests.unit.control.factories import TUESDAY_10

pytestmark = pytest.mark.integration


async def test_plan_rechecked_under_the_version_in_force_at_dispatch(db_url: str) -> None:
    async with pool(db_url) as p:
        rig = Rig(db_url, p, SettableClock(TUESDAY_10), RecordingTransport())
        ((account, meter),) = register_site(db_url, now=TUESDAY_10)
        cmd = await rig.at_execution_time(account)
        assert rows(db_url, "select policy_version_planned from commands where id = %s", cmd) == [(1,)]
        # A stricter company policy takes effect before dispatch: no cut below 6 °C.
        doc = load_profile_document("cn-residential")
        doc["company"] = {"weather": {"min_c": 6}}
        async with p.connection() as conn:
            version = await operations.add_policy_version(
                conn, profile="cn-residential", document=doc, created_by="policy-team", now=rig.clock.at
            )
            assert version == 2
            loose = load_profile_document("cn-residential")
            loose["company"] = {"weather": {"min_c": -10}}
            with pytest.raises(PolicyError):
                await operations.add_policy_version(
                    conn, profile="cn-residential", document=loose, created_by="x", now=rig.clock.at
                )
        await rig.engine.dispatch_due()  # the forecast minimum is 5 °C
        assert rig.transport.sent == []
        assert rows(db_url, "select detail->'last_decision'->'reasons' from commands where id = %s", cmd) == [
            (["weather_cold"],)
        ]
        rig.sql("update weather_forecasts set min_c = 8, max_c = 15")
        rig.clock.at = rig.clock.at + timedelta(days=1)  # the next day's window
        rig.sql("update notices set sent_at = %s where kind = 'final_reminder'", rig.clock.at - timedelta(hours=1))
        rig.sql("update notices set delivered_at = %s where kind = 'final_reminder'", rig.clock.at - timedelta(hours=1))
        rig.sql("update weather_forecasts set issued_at = %s", rig.clock.at - timedelta(hours=1))
        rig.sql("update meters set last_seen_at = %s", rig.clock.at)
        await rig.engine.dispatch_due()
        assert rig.transport.sent == [(meter, "disconnect")]
        assert rows(
            db_url, "select policy_version_planned, policy_version_dispatched from commands where id = %s", cmd
        ) == [(1, 2)]
        ((detail,),) = rows(db_url, "select detail from audit_log where action = 'command_send'")
        assert detail["policy_planned"] == ["cn-residential", 1]
        assert detail["policy_dispatched"] == ["cn-residential", 2]
