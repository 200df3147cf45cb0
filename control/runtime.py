"""What the parts of the control engine share: settings, the base class (connections,
clock, transports, policy lookup, alerts) and the plan follow-ups both planning and dispatch use.

The engine is split by concern (control/engine.py composes them):
``control.planner`` (account events -> plans, notices, commands), ``control.dispatcher``
(commands -> meters, read-back, retries, UNKNOWN) and ``control.watch`` (timers, late
read-backs, state reports).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg

from control import store
from control.dispatch import MeterAddress, Transport
from control.models import Allowed, Deferred, Reason, Refused
from control.policy import Policy, profile_for

logger = logging.getLogger(__name__)

Conn = psycopg.AsyncConnection[Any]
ConnFactory = Callable[[], Any]  # returns an async context manager yielding a connection

EVENT_KINDS = (
    "emergency_credit_started",
    "credit_exhausted",
    "credit_restored",
    "protection_added",
    "dispute_opened",
)
TARGET_RELAY: dict[str, tuple[str, ...]] = {
    "disconnect": ("disconnected",),
    "load_limit": ("load_limited",),
    "arm": ("armed", "connected"),
    "reconnect": ("connected",),
    "clear_load_limit": ("connected",),
}


@dataclass
class EngineSettings:
    worker_id: str = "control"
    ack_timeout_s: float = 10.0
    readback_timeout_s: float = 10.0
    lease_s: float = 60.0
    recheck_s: float = 900.0  # a deferral with no known end is re-checked this often
    audit_retry_s: float = 30.0
    batch: int = 20
    event_concurrency: int = 4
    backoff_base_s: float = 5.0
    backoff_cap_s: float = 60.0
    jitter_seed: int | None = None
    # Clock seconds per real second (an accelerated demo clock): leases, retry waits and
    # backoff are about real networks and processes, so they are scaled; policy times are not.
    time_scale: float = 1.0
    alerts: list[str] = field(default_factory=list)


class EngineBase:
    """Plans and dispatches.

    ``connect()`` yields an **autocommit** connection (``pool.connection`` of a pool made with
    ``kwargs={"autocommit": True}``): every ``conn.transaction()`` below is then a real
    BEGIN/COMMIT, which is what makes "audit committed before the command leaves" true.
    """

    def __init__(
        self,
        connect: ConnFactory,
        transports: dict[str, Transport],
        now: Callable[[], datetime],
        settings: EngineSettings | None = None,
    ) -> None:
        self._connect = connect
        self._transports = transports
        self._now = now
        self.settings = settings or EngineSettings()
        self._rng = random.Random(self.settings.jitter_seed)

    def _real(self, seconds: float) -> timedelta:
        """A wait in real seconds, expressed on the engine's clock."""
        return timedelta(seconds=seconds * self.settings.time_scale)

    def alert(self, message: str, *args: object) -> None:
        text = message % args if args else message
        self.settings.alerts.append(text)
        logger.error("ALERT " + message, *args)

    async def _address(self, conn: Conn, meter_id: str) -> MeterAddress:
        cur = await conn.execute(
            "select protocol, modbus_host, modbus_port, modbus_unit from meters where id = %s", (meter_id,)
        )
        row = await cur.fetchone()
        await conn.commit()
        assert row is not None
        return MeterAddress(meter_id, str(row[0]), row[1], row[2], row[3])

    async def _policy(self, conn: Conn, site: store.Site, now: datetime) -> Policy | None:
        policies = await store.policies_in_force(conn, now)
        return profile_for(policies, site.country, site.account_class)

    # --- events ------------------------------------------------------------------------

    async def _new_reminder(
        self, conn: Conn, site: store.Site, policy: Policy, plan_id: int, execute_at: datetime | None, now: datetime
    ) -> int:
        due = (execute_at or now) - timedelta(minutes=policy.notice.final_reminder_min)
        return await store.insert_notice(
            conn,
            account_id=site.account_id,
            kind="final_reminder",
            dedupe_key=f"plan:{plan_id}:reminder:{due.isoformat()}",
            body={"meter_id": site.meter_id, "execution_at": execute_at.isoformat() if execute_at else None},
            now=now,
            next_attempt_at=max(due, now),
        )

    async def _follow_up_deferral(
        self,
        conn: Conn,
        command: store.Command,
        site: store.Site,
        policy: Policy,
        decision: Deferred,
        until: datetime,
        now: datetime,
    ) -> None:
        plan_id = command.plan_id
        assert plan_id is not None
        for reason in (Reason.WEATHER_STALE, Reason.WEATHER_UNKNOWN, Reason.CHANNELS_UNKNOWN):
            if reason in decision.reasons:
                self.alert("%s for feeder %s: disconnects held", reason.value, site.feeder)
        if Reason.NOTICE_FAILED in decision.reasons:
            # Delivery failed on its channel(s): a new notice tries the others; the lead restarts.
            cur = await conn.execute(
                "select count(*) from notices where dedupe_key like %s", (f"plan:{plan_id}:notice:%",)
            )
            n = await cur.fetchone()
            attempt = int(n[0]) + 1 if n else 2
            notice_id = await store.insert_notice(
                conn,
                account_id=site.account_id,
                kind="pending_disconnection",
                dedupe_key=f"plan:{plan_id}:notice:{attempt}",
                body={"meter_id": site.meter_id, "retry_other_channels": True, "attempt": attempt},
                now=now,
            )
            await conn.execute("update disconnect_plans set notice_id = %s where id = %s", (notice_id, plan_id))
        if Reason.READING_STALE in decision.reasons or Reason.READING_UNKNOWN in decision.reasons:
            await store.insert_command(
                conn,
                idempotency_key=f"read_now:{command.meter_id}:{now:%Y%m%d%H}",
                meter_id=command.meter_id,
                account_id=command.account_id,
                action="read_now",
                state="scheduled",
                reason="reading_stale",
                requested_by="control",
                now=now,
                not_before=now,
            )
        if decision.until is not None and Reason.REMINDER_PENDING not in decision.reasons:
            # Executing later than planned: the final reminder must precede the new time.
            cur = await conn.execute(
                "select n.next_attempt_at from disconnect_plans p join notices n on n.id = p.reminder_id"
                " where p.id = %s",
                (plan_id,),
            )
            row = await cur.fetchone()
            lead = timedelta(minutes=policy.notice.final_reminder_min)
            if row is None or row[0] < until - lead - timedelta(hours=1):
                reminder_id = await self._new_reminder(conn, site, policy, plan_id, until, now)
                await conn.execute(
                    "update disconnect_plans set reminder_id = %s, execute_at = %s where id = %s",
                    (reminder_id, until, plan_id),
                )


RATE_LIMITED = frozenset({"disconnect", "load_limit", "arm", "reconnect"})


class FeederLock:
    """A session advisory lock on one feeder (autocommit connection), released at most once.

    A worker cancelled while holding it leaves it on the connection: the pool's reset
    (control.service.reset_connection) unlocks everything when the connection comes back."""

    def __init__(self, conn: Conn, feeder: str | None) -> None:
        self._conn = conn
        self._key = f"control-feeder:{feeder}" if feeder is not None else None
        self._held = False

    async def acquire(self) -> None:
        if self._key is not None:
            await self._conn.execute("select pg_advisory_lock(hashtext(%s))", (self._key,))
            self._held = True

    async def release(self) -> None:
        if self._held:
            self._held = False
            await self._conn.execute("select pg_advisory_unlock(hashtext(%s))", (self._key,))


def decision_detail(decision: Allowed | Deferred | Refused) -> dict[str, Any]:
    if isinstance(decision, Allowed):
        return {"kind": "allowed", "action": decision.action, "notes": list(decision.notes)}
    if isinstance(decision, Deferred):
        return {
            "kind": "deferred",
            "until": decision.until.isoformat() if decision.until else None,
            "reasons": [r.value for r in decision.reasons],
        }
    return {"kind": "refused", "reasons": [r.value for r in decision.reasons], "open_case": decision.open_case}
