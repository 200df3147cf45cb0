"""The control engine: turns account events into plans and commands, and carries commands out.

This is the shell around the pure guard (control/guard.py) and lifecycle (control/lifecycle.py):

* **events** (:meth:`Engine.process_events`): account_events are handled exactly once across
  control processes (control_processed_events, inserted in the handling transaction).
  ``emergency_credit_started`` opens a plan and sends the pending-disconnection notice with the
  earliest execution time; ``credit_exhausted`` adds the disconnect command (scheduled at that
  time) and its final reminder; ``credit_restored`` / ``protection_added`` / ``dispute_opened``
  cancel the plan and, if supply is off, issue a reconnect (arm by default) at once.
* **dispatch** (:meth:`Engine.dispatch_due`): due commands are leased with ``FOR UPDATE SKIP
  LOCKED``; every guard is re-checked immediately before sending; the audit row and the move
  to ``sent`` are committed before anything is published; the relay is read back; a
  disagreement after the last attempt gives UNKNOWN and a field work order, never a false
  "disconnected". An expired disconnect is never resent: a new command (new idempotency key)
  is made and goes through the guards again. A ``sent`` command whose worker died is read back
  first.
* **timers** (:meth:`Engine.check_timers`): armed meters not pressed within the armed timeout
  are escalated (SLA breach).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg

from control import audit, store
from control.dispatch import Ack, MeterAddress, Outgoing, Transport
from control.errors import AuditUnavailable, ControlError, DispatchError, TransitionError
from control.guard import decide
from control.ladder import execution_plan, self_disconnecting
from control.models import SUPPLY_OFF_ACTIONS, Allowed, Deferred, Reason, Refused, Request
from control.policy import Policy, profile_for
from control.windows import calendar_for, zone
from headend.backoff import delays

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


class Engine:
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

    async def _policy(self, conn: Conn, site: store.Site, now: datetime) -> Policy | None:
        policies = await store.policies_in_force(conn, now)
        return profile_for(policies, site.country, site.account_class)

    # --- events ------------------------------------------------------------------------

    async def process_events(self, limit: int = 200) -> int:
        """Handle account events not handled yet; returns how many were handled.

        Accounts are handled concurrently (a mass top-up is a burst of events), each account's
        events strictly in order, also across control processes: a per-account advisory lock,
        and an event waits while an earlier one of its account is unhandled.
        """
        async with self._connect() as conn:
            cur = await conn.execute(
                "select e.id, e.account_id from account_events e where e.kind = any(%s) and not exists"
                " (select 1 from control_processed_events p where p.event_id = e.id) order by e.id limit %s",
                (list(EVENT_KINDS), limit),
            )
            by_account: dict[str, list[int]] = {}
            for event_id, account_id in await cur.fetchall():
                by_account.setdefault(str(account_id), []).append(int(event_id))
        if not by_account:
            return 0
        gate = asyncio.Semaphore(self.settings.event_concurrency)
        counts: list[int] = []

        async def one_account(account_id: str, ids: list[int]) -> None:
            n = 0
            try:
                async with gate, self._connect() as c:
                    for event_id in ids:
                        outcome = await self._handle_one(c, account_id, event_id)
                        if outcome == "blocked":
                            break  # an earlier event of this account is not handled yet: keep the order
                        n += outcome == "handled"
            except (psycopg.Error, ControlError) as exc:
                # Not marked handled: the event is retried on the next pass.
                logger.exception("events of account %s not handled: %s", account_id, exc)
            counts.append(n)

        async with asyncio.TaskGroup() as tg:
            for account_id, ids in by_account.items():
                tg.create_task(one_account(account_id, ids), name=f"events-{account_id}")
        return sum(counts)

    async def _handle_one(self, conn: Conn, account_id: str, event_id: int) -> str:
        """'handled', 'skipped' (another process did) or 'blocked' (an earlier event is pending)."""
        async with conn.transaction():
            await conn.execute("select pg_advisory_xact_lock(hashtext(%s))", (f"control-account:{account_id}",))
            cur = await conn.execute(
                "select exists (select 1 from account_events e where e.account_id = %s and e.id < %s"
                " and e.kind = any(%s) and not exists"
                " (select 1 from control_processed_events p where p.event_id = e.id))",
                (account_id, event_id, list(EVENT_KINDS)),
            )
            earlier = await cur.fetchone()
            if earlier and earlier[0]:
                return "blocked"
            cur = await conn.execute(
                "insert into control_processed_events (event_id, outcome) values (%s, 'handling')"
                " on conflict do nothing returning event_id",
                (event_id,),
            )
            if await cur.fetchone() is None:
                return "skipped"  # another control process handled it
            cur = await conn.execute("select id, account_id, kind from account_events where id = %s", (event_id,))
            row = await cur.fetchone()
            assert row is not None
            outcome = await self._handle_event(conn, int(row[0]), str(row[1]), str(row[2]), self._now())
            await conn.execute(
                "update control_processed_events set outcome = %s where event_id = %s", (outcome, event_id)
            )
        return "handled"

    async def _handle_event(self, conn: Conn, event_id: int, account_id: str, kind: str, now: datetime) -> str:
        site = await store.site_for_account(conn, account_id)
        if site is None:
            return "no_meter"
        policy = await self._policy(conn, site, now)
        if policy is None:
            await store.open_case(
                conn, kind="no_policy", dedupe_key=f"no_policy:{account_id}", now=now, account_id=account_id
            )
            return "no_policy"
        if kind in ("emergency_credit_started", "credit_exhausted"):
            return await self._plan_disconnect(conn, site, policy, event_id, kind, now)
        return await self._reconnect(conn, site, policy, event_id, kind, now)

    async def _plan_disconnect(
        self, conn: Conn, site: store.Site, policy: Policy, event_id: int, kind: str, now: datetime
    ) -> str:
        if kind == "credit_exhausted":
            await self._check_self_disconnection(conn, site, policy, now)
        facts = await store.load_facts(conn, site, now, policy, Request())
        decision = decide(facts, policy, now, "disconnect")
        if isinstance(decision, Refused):
            reasons = [r.value for r in decision.reasons]
            if decision.open_case:
                await store.open_case(
                    conn,
                    kind="automatic_disconnect_blocked",
                    dedupe_key=f"blocked:{site.account_id}:{event_id}",
                    now=now,
                    account_id=site.account_id,
                    meter_id=site.meter_id,
                    detail={"reasons": reasons, "event_id": event_id},
                )
                await audit.append(
                    conn,
                    actor="control",
                    action="disconnect_blocked",
                    subject=site.account_id,
                    detail={"reasons": reasons, "event_id": event_id, "policy": [policy.profile, policy.version]},
                    at=now,
                )
                return "case_opened"
            if kind == "credit_exhausted" and Reason.NOT_EXHAUSTED not in decision.reasons:
                return "refused:" + ",".join(reasons)
        tz, cal = zone(site.timezone), calendar_for(policy.country, policy.subdivision)
        plan = await store.open_plan(conn, site.account_id)
        if plan is None:
            ep = execution_plan(None, now, policy, tz, cal)
            plan_id = await store.insert_plan(
                conn,
                account_id=site.account_id,
                meter_id=site.meter_id,
                event_id=event_id,
                execute_at=ep.execute_at if ep else None,
                policy=policy,
            )
            if plan_id is None:
                return "plan_exists"
            notice_id = await store.insert_notice(
                conn,
                account_id=site.account_id,
                kind="pending_disconnection",
                dedupe_key=f"plan:{plan_id}:notice:1",
                body={
                    "meter_id": site.meter_id,
                    "earliest_execution_at": ep.execute_at.isoformat() if ep else None,
                    "timezone": site.timezone,
                },
                now=now,
            )
            await conn.execute("update disconnect_plans set notice_id = %s where id = %s", (notice_id, plan_id))
            plan = await store.open_plan(conn, site.account_id)
            assert plan is not None
        if kind != "credit_exhausted":
            return "plan_opened"
        existing = await store.open_command_for(conn, site.meter_id, ("disconnect", "load_limit"))
        if existing is not None:
            return "command_exists"
        cur = await conn.execute("select delivered_at from notices where id = %s", (plan["notice_id"],))
        delivered = await cur.fetchone()
        ep = execution_plan(delivered[0] if delivered else None, now, policy, tz, cal)
        execute_at = max(ep.execute_at, plan["execute_at"] or now) if ep else None
        reminder_id = await self._new_reminder(conn, site, policy, plan["id"], execute_at, now)
        await conn.execute(
            "update disconnect_plans set reminder_id = %s, execute_at = %s where id = %s",
            (reminder_id, execute_at, plan["id"]),
        )
        command, _ = await store.insert_command(
            conn,
            idempotency_key=f"plan:{plan['id']}:1",
            meter_id=site.meter_id,
            account_id=site.account_id,
            action="disconnect",
            state="scheduled",
            reason="credit_exhausted",
            requested_by="control",
            now=now,
            not_before=execute_at or now + timedelta(seconds=self.settings.recheck_s),
            plan_id=plan["id"],
            policy=policy,
        )
        await audit.append(
            conn,
            actor="control",
            action="disconnect_planned",
            subject=site.meter_id,
            detail={
                "command_id": command.id,
                "plan_id": plan["id"],
                "execute_at": execute_at,
                "policy": [policy.profile, policy.version],
                "decision_now": _decision_detail(decision),
            },
            at=now,
        )
        return "command_scheduled"

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

    async def _check_self_disconnection(self, conn: Conn, site: store.Site, policy: Policy, now: datetime) -> None:
        rule = policy.self_disconnection
        cur = await conn.execute(
            "select at from account_events where account_id = %s and kind = 'credit_exhausted' and at > %s",
            (site.account_id, now - timedelta(days=rule.period_days)),
        )
        times = [r[0] for r in await cur.fetchall()]
        if self_disconnecting(times, now, rule.episodes, rule.period_days):
            await store.open_case(
                conn,
                kind="self_disconnecting",
                dedupe_key=f"self_disconnecting:{site.account_id}:{now:%Y-%m}",
                now=now,
                account_id=site.account_id,
                detail={"episodes": len(times), "period_days": rule.period_days, "offer": "support"},
            )

    async def _reconnect(
        self, conn: Conn, site: store.Site, policy: Policy, event_id: int, kind: str, now: datetime
    ) -> str:
        plan = await store.open_plan(conn, site.account_id)
        cancelled = 0
        if plan is not None:
            cur = await conn.execute(
                f"select {store.COMMAND_COLUMNS} from commands where plan_id = %s"
                " and state in ('requested', 'awaiting_approval', 'scheduled') for update",
                (plan["id"],),
            )
            for row in await cur.fetchall():
                await store.transition(conn, store.Command(*row), "cancel", now, last_error=f"cancelled by {kind}")
                cancelled += 1
            await store.close_plan(conn, plan["id"], "cancelled", kind, now)
        off = site.relay_state in ("disconnected", "load_limited", "unknown")
        if not off:
            off_cmd = await store.open_command_for(conn, site.meter_id, ("disconnect", "load_limit"))
            off = off_cmd is not None and off_cmd.state in ("sent", "unknown")
        if not off:
            return f"plan_cancelled:{cancelled}"
        if site.relay_state == "load_limited":
            action = "clear_load_limit"
        else:
            action = policy.reconnect.mode
        cur = await conn.execute(
            "select exists (select 1 from protections where account_id = %s and revoked_at is null)",
            (site.account_id,),
        )
        has_protection = await cur.fetchone()
        protected = kind == "protection_added" or bool(has_protection and has_protection[0])
        not_before = now
        cur = await conn.execute(
            "select count(*) from commands c join meters m on m.id = c.meter_id join service_points sp"
            " on sp.id = m.service_point_id where sp.feeder = %s and c.state = 'scheduled'"
            " and c.action in ('arm', 'reconnect', 'clear_load_limit')",
            (site.feeder,),
        )
        queued = await cur.fetchone()
        if queued and int(queued[0]) >= policy.grid.reconnects_per_feeder and not protected:
            # A mass event: stage and jitter (protected customers are not delayed).
            not_before = now + timedelta(seconds=self._rng.uniform(0, policy.grid.reconnect_jitter_max_s))
        command, created = await store.insert_command(
            conn,
            idempotency_key=f"reconnect:event:{event_id}",
            meter_id=site.meter_id,
            account_id=site.account_id,
            action=action,
            state="scheduled",
            reason=kind,
            requested_by="control",
            now=now,
            not_before=not_before,
            priority=10 if protected else 0,
            policy=policy,
            deadline_at=now + timedelta(hours=policy.reconnect.armed_timeout_h),
            detail={"trigger": kind, "event_id": event_id, "target_s": policy.reconnect.target_s},
        )
        if created:
            await audit.append(
                conn,
                actor="control",
                action="reconnect_requested",
                subject=site.meter_id,
                detail={"command_id": command.id, "trigger": kind, "policy": [policy.profile, policy.version]},
                at=now,
            )
        await conn.execute("select pg_notify('control_commands', %s)", (str(command.id),))
        return f"reconnect:{command.id}"

    # --- dispatch ----------------------------------------------------------------------

    async def dispatch_due(self) -> int:
        """Claim and carry out due commands; returns how many were processed."""
        now = self._now()
        async with self._connect() as conn:
            async with conn.transaction():
                claimed = await store.claim_due(
                    conn,
                    self.settings.worker_id,
                    now,
                    self._real(self.settings.lease_s),
                    self.settings.batch,
                )
        # Higher priority (protected customers' reconnects) strictly first, then concurrently.
        for priority in sorted({c.priority for c in claimed}, reverse=True):
            async with asyncio.TaskGroup() as tg:
                for command in (c for c in claimed if c.priority == priority):
                    tg.create_task(self._process_one(command), name=f"command-{command.id}")
        return len(claimed)

    async def _process_one(self, command: store.Command) -> None:
        """One claimed command on its own connection (autocommit); errors are logged, not raised.

        If anything fails the lease is released (or lapses): the command is picked up again, a
        ``sent`` one by reading the relay back first."""
        try:
            async with self._connect() as conn:
                try:
                    await self._process(conn, command)
                except TransitionError as exc:
                    logger.info("command %s moved under us: %s", command.id, exc)
                except (psycopg.Error, ControlError) as exc:
                    logger.exception("command %s failed: %s", command.id, exc)
                finally:
                    if not conn.closed:
                        async with conn.transaction():
                            await store.release(conn, command.id, self.settings.worker_id)
        except psycopg.Error as exc:  # no connection (pool timeout, database down): the lease lapses
            logger.warning("command %s not processed: %s", command.id, exc)

    async def _request_for(self, conn: Conn, command: store.Command) -> Request:
        roles = await store.operator_roles(conn, command.approved_by) if command.approved_by else frozenset()
        return Request(
            manual=command.manual,
            requested_by=command.requested_by or "control",
            approved_by=command.approved_by,
            approver_roles=roles,
            batch_size=command.batch_size,
            authority_copy=bool(command.detail.get("authority_copy", False)),
            erroneous_disconnect=bool(command.detail.get("erroneous", False)),
        )

    async def _process(self, conn: Conn, command: store.Command) -> None:
        now = self._now()
        if command.state == "awaiting_approval":
            async with conn.transaction():
                await store.transition(conn, command, "expire", now, last_error="approval deadline passed")
            return
        site = await store.site_for_meter(conn, command.meter_id)
        meter = await self._address(conn, command.meter_id)
        if command.state == "sent":
            await self._recover_sent(conn, command, meter, now)
            return
        if command.action in SUPPLY_OFF_ACTIONS and command.expires_at is not None and command.expires_at <= now:
            await self._expire_and_replace(conn, command, now)
            return
        if command.deadline_at is not None and command.deadline_at <= now:
            async with conn.transaction():
                await store.transition(conn, command, "expire", now, last_error="deadline passed")
                await store.open_case(
                    conn,
                    kind="command_deadline_missed",
                    dedupe_key=f"deadline:{command.id}",
                    now=now,
                    account_id=command.account_id,
                    meter_id=command.meter_id,
                    command_id=command.id,
                    detail={"action": command.action, "sla_breach": True},
                )
            return
        if command.action in ("read_now", "status"):
            await self._send(conn, command, meter, command.action, None, now)
            return
        if site is None:
            async with conn.transaction():
                await store.transition(conn, command, "cancel", now, last_error="meter has no open account")
            return
        # The feeder's rate is read and the send committed under one per-feeder lock, so
        # concurrent workers (and processes) cannot all pass the same rate check.
        feeder_lock = FeederLock(conn, site.feeder if command.action in RATE_LIMITED else None)
        await feeder_lock.acquire()
        try:
            async with conn.transaction():
                policy = await self._policy(conn, site, now)
                request = await self._request_for(conn, command)
                facts = await store.load_facts(conn, site, now, policy, request, command.action)
            decision = decide(facts, policy, now, command.action)
            if isinstance(decision, Allowed):
                await self._send(conn, command, meter, decision.action, policy, now, decision.notes, feeder_lock)
            elif isinstance(decision, Deferred):
                await self._defer(conn, command, site, policy, decision, now)
            else:
                await self._refuse(conn, command, decision, now)
        finally:
            await feeder_lock.release()

    async def _address(self, conn: Conn, meter_id: str) -> MeterAddress:
        cur = await conn.execute(
            "select protocol, modbus_host, modbus_port, modbus_unit from meters where id = %s", (meter_id,)
        )
        row = await cur.fetchone()
        await conn.commit()
        assert row is not None
        return MeterAddress(meter_id, str(row[0]), row[1], row[2], row[3])

    async def _defer(
        self,
        conn: Conn,
        command: store.Command,
        site: store.Site,
        policy: Policy | None,
        decision: Deferred,
        now: datetime,
    ) -> None:
        until = decision.until or now + timedelta(seconds=self.settings.recheck_s)
        async with conn.transaction():
            detail = {**command.detail, "last_decision": _decision_detail(decision)}
            await store.transition(conn, command, "defer", now, not_before=until, detail=detail)
            if policy is not None and command.plan_id is not None:
                await self._follow_up_deferral(conn, command, site, policy, decision, until, now)

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

    async def _refuse(self, conn: Conn, command: store.Command, decision: Refused, now: datetime) -> None:
        reasons = [r.value for r in decision.reasons]
        async with conn.transaction():
            await store.transition(
                conn,
                command,
                "cancel",
                now,
                last_error="refused: " + ",".join(reasons),
                detail={**command.detail, "last_decision": _decision_detail(decision)},
            )
            await audit.append(
                conn,
                actor="control",
                action="command_refused",
                subject=command.meter_id,
                detail={"command_id": command.id, "reasons": reasons},
                at=now,
            )
            if command.plan_id is not None:
                await store.close_plan(
                    conn, command.plan_id, "case" if decision.open_case else "cancelled", ",".join(reasons), now
                )
            if decision.open_case:
                await store.open_case(
                    conn,
                    kind="automatic_disconnect_blocked",
                    dedupe_key=f"refused:{command.id}",
                    now=now,
                    account_id=command.account_id,
                    meter_id=command.meter_id,
                    command_id=command.id,
                    detail={"reasons": reasons},
                )

    async def _send(
        self,
        conn: Conn,
        command: store.Command,
        meter: MeterAddress,
        action: str,
        policy: Policy | None,
        now: datetime,
        notes: tuple[str, ...] = (),
        feeder_lock: FeederLock | None = None,
    ) -> None:
        expiry = None
        if action in SUPPLY_OFF_ACTIONS and policy is not None:
            expiry = now + timedelta(minutes=policy.command.disconnect_expiry_min)
        elif command.deadline_at is not None:
            expiry = command.deadline_at
        try:
            async with conn.transaction():
                await audit.append(
                    conn,
                    actor=command.requested_by or "control",
                    action="command_send",
                    subject=command.meter_id,
                    detail={
                        "command_id": command.id,
                        "correlation_id": str(command.correlation_id),
                        "action": action,
                        "attempt": command.attempts + 1,
                        "approved_by": command.approved_by,
                        "policy_planned": [command.policy_profile, command.policy_version_planned],
                        "policy_dispatched": [policy.profile, policy.version] if policy else None,
                        "notes": list(notes),
                    },
                    at=now,
                )
                sent = await store.transition(
                    conn,
                    command,
                    "send",
                    now,
                    action=action,
                    sent_at=now,
                    expires_at=command.expires_at or expiry,
                    attempts=command.attempts + 1,
                    policy_version_dispatched=policy.version if policy else None,
                    claimed_until=now + self._real(self.settings.lease_s),
                )
        except AuditUnavailable as exc:
            self.alert("audit unavailable, command %s not sent: %s", command.id, exc)
            async with conn.transaction():
                await store.transition(
                    conn,
                    command,
                    "defer",
                    now,
                    not_before=now + self._real(self.settings.audit_retry_s),
                    last_error="audit unavailable",
                )
            return
        if feeder_lock is not None:
            await feeder_lock.release()  # committed as sent: the next one may count it
        if notes:
            logger.info("command %s: %s", command.id, ", ".join(notes))
        transport = self._transports.get(meter.protocol)
        ack: Ack | None = None
        error: str | None = None
        if transport is None:
            error = f"no transport for {meter.protocol}"
        else:
            limit_w = policy.load_limit.limit_w if (policy and action == "load_limit") else None
            try:
                ack = await transport.send(
                    meter,
                    Outgoing(str(command.correlation_id), action, now, sent.expires_at, limit_w),
                    self.settings.ack_timeout_s,
                )
            except DispatchError as exc:
                error = str(exc)
        await self._settle(conn, sent, meter, transport, ack, error)

    async def _settle(
        self,
        conn: Conn,
        command: store.Command,
        meter: MeterAddress,
        transport: Transport | None,
        ack: Ack | None,
        error: str | None,
        read_back: str | None = None,
    ) -> None:
        """After the ack (or its absence): read back, then confirm / fail / retry / UNKNOWN."""
        if command.action in ("read_now", "status"):
            async with conn.transaction():
                if ack is not None and ack.status == "ok":
                    await store.transition(conn, command, "confirm", self._now(), confirmed_at=self._now())
                else:
                    await self._retry_or_unknown(conn, command, error or "no ack", None)
            return
        if ack is not None and ack.status == "rejected":
            if ack.reason == "expired":
                # The meter saw it too late: never re-sent as is; a disconnect gets a new command.
                async with conn.transaction():
                    await store.transition(conn, command, "expire", self._now(), last_error="meter: expired")
                if command.action in SUPPLY_OFF_ACTIONS:
                    await self._replace(conn, command, self._now())
                return
            if ack.relay not in TARGET_RELAY.get(command.action, ()):
                await self._rejected(conn, command, ack)
                return
            # Rejected because it is already in the target state (e.g. invalid_state): the
            # read-back below decides.
        relay = read_back
        if relay is None and transport is not None:
            try:
                relay = await transport.read_relay(meter, self.settings.readback_timeout_s)
            except DispatchError as exc:
                error = f"{error + '; ' if error else ''}read-back: {exc}"
        now = self._now()
        targets = TARGET_RELAY.get(command.action, ())
        async with conn.transaction():
            if relay is not None:
                await store.set_relay_state(conn, command.meter_id, relay, now)
            if relay in targets:
                await store.transition(
                    conn, command, "confirm", now, confirmed_at=now, relay_read_back=relay, last_error=None
                )
                await audit.append(
                    conn,
                    actor="control",
                    action="command_confirmed",
                    subject=command.meter_id,
                    detail={"command_id": command.id, "relay": relay, "action": command.action},
                    at=now,
                )
                await self._after_confirm(conn, command, now)
            else:
                await self._retry_or_unknown(
                    conn, command, error or f"read-back {relay!r} disagrees with {command.action}", relay
                )

    async def _after_confirm(self, conn: Conn, command: store.Command, now: datetime) -> None:
        if command.action == "disconnect" and command.plan_id is not None:
            await store.close_plan(conn, command.plan_id, "done", "disconnected", now)
        elif command.action == "load_limit" and command.plan_id is not None:
            site = await store.site_for_meter(conn, command.meter_id)
            policy = await self._policy(conn, site, now) if site else None
            hours = policy.load_limit.duration_h if policy else 24
            await store.insert_command(
                conn,
                idempotency_key=f"plan:{command.plan_id}:after_load_limit",
                meter_id=command.meter_id,
                account_id=command.account_id,
                action="disconnect",
                state="scheduled",
                reason="load_limit_stage_over",
                requested_by="control",
                now=now,
                not_before=now + timedelta(hours=hours),
                plan_id=command.plan_id,
                policy=policy,
            )
        elif command.action in ("arm", "reconnect", "clear_load_limit") and command.account_id:
            await store.insert_notice(
                conn,
                account_id=command.account_id,
                kind="reconnected",
                dedupe_key=f"reconnected:{command.id}",
                body={"meter_id": command.meter_id, "action": command.action},
                now=now,
            )

    async def _rejected(self, conn: Conn, command: store.Command, ack: Ack) -> None:
        now = self._now()
        async with conn.transaction():
            if ack.reason == "load_side_voltage" and command.action in ("arm", "reconnect"):
                # Supply cannot close safely: stay pending, tell the customer; the deadline keeps running.
                await store.transition(
                    conn,
                    command,
                    "hold",
                    now,
                    not_before=now + self._real(self.settings.backoff_cap_s),
                    last_error="load_side_voltage",
                )
                if command.account_id:
                    await store.insert_notice(
                        conn,
                        account_id=command.account_id,
                        kind="reconnect_pending",
                        dedupe_key=f"reconnect_pending:{command.id}",
                        body={"meter_id": command.meter_id, "reason": "load_side_voltage"},
                        now=now,
                    )
                return
            await store.transition(conn, command, "reject", now, last_error=f"rejected: {ack.reason}")
            await store.open_case(
                conn,
                kind="meter_rejected_command",
                dedupe_key=f"rejected:{command.id}",
                now=now,
                account_id=command.account_id,
                meter_id=command.meter_id,
                command_id=command.id,
                detail={"action": command.action, "reason": ack.reason, "override": "none (manual only)"},
            )
            await audit.append(
                conn,
                actor="control",
                action="command_rejected",
                subject=command.meter_id,
                detail={"command_id": command.id, "reason": ack.reason},
                at=now,
            )

    async def _retry_or_unknown(self, conn: Conn, command: store.Command, error: str, relay: str | None) -> None:
        now = self._now()
        site = await store.site_for_meter(conn, command.meter_id)
        policy = await self._policy(conn, site, now) if site else None
        max_attempts = policy.command.max_attempts if policy else 3
        if command.attempts < max_attempts:
            backoff = delays(self.settings.backoff_base_s, self.settings.backoff_cap_s, self._rng)
            wait = 0.0
            for _ in range(command.attempts):
                wait = next(backoff)
            await store.transition(conn, command, "retry", now, not_before=now + self._real(wait), last_error=error)
            return
        await store.transition(conn, command, "give_up", now, last_error=error, relay_read_back=relay)
        await store.set_relay_state(conn, command.meter_id, "unknown", now)
        await store.open_case(
            conn,
            kind="field_work_order",
            dedupe_key=f"work_order:{command.id}",
            now=now,
            account_id=command.account_id,
            meter_id=command.meter_id,
            command_id=command.id,
            detail={"action": command.action, "error": error, "relay_read_back": relay},
        )
        await audit.append(
            conn,
            actor="control",
            action="relay_state_unknown",
            subject=command.meter_id,
            detail={"command_id": command.id, "error": error},
            at=now,
        )

    async def _recover_sent(self, conn: Conn, command: store.Command, meter: MeterAddress, now: datetime) -> None:
        """A ``sent`` command whose worker is gone: read back before anything else."""
        transport = self._transports.get(meter.protocol)
        relay: str | None = None
        if transport is not None:
            try:
                relay = await transport.read_relay(meter, self.settings.readback_timeout_s)
            except DispatchError as exc:
                logger.info("read-back of %s failed: %s", command.meter_id, exc)
        if relay in TARGET_RELAY.get(command.action, ()):
            await self._settle(conn, command, meter, transport, Ack("ok", relay), None, read_back=relay)
            return
        if command.expires_at is not None and command.expires_at <= now:
            async with conn.transaction():
                await store.transition(conn, command, "expire", now, last_error="expired unconfirmed")
            if command.action in SUPPLY_OFF_ACTIONS:
                await self._replace(conn, command, now)
            return
        async with conn.transaction():
            await self._retry_or_unknown(conn, command, "worker lost before confirmation", relay)

    async def _expire_and_replace(self, conn: Conn, command: store.Command, now: datetime) -> None:
        async with conn.transaction():
            await store.transition(conn, command, "expire", now, last_error="expired before confirmation")
        await self._replace(conn, command, now)

    async def _replace(self, conn: Conn, command: store.Command, now: datetime) -> None:
        """An expired disconnect is never resent as is: a new command re-runs every guard."""
        if command.plan_id is None:
            return
        async with conn.transaction():
            plan = await store.open_plan(conn, command.account_id or "")
            if plan is None or plan["id"] != command.plan_id:
                return
            cur = await conn.execute("select count(*) from commands where plan_id = %s", (command.plan_id,))
            n = await cur.fetchone()
            await store.insert_command(
                conn,
                idempotency_key=f"plan:{command.plan_id}:{int(n[0]) + 1 if n else 2}",
                meter_id=command.meter_id,
                account_id=command.account_id,
                action="disconnect",
                state="scheduled",
                reason="replaces expired command",
                requested_by="control",
                now=now,
                not_before=now,
                plan_id=command.plan_id,
                supersedes=command.id,
            )

    # --- timers ------------------------------------------------------------------------

    async def check_timers(self) -> int:
        """Escalate armed meters not pressed within the armed timeout (SLA breach)."""
        now = self._now()
        opened = 0
        async with self._connect() as conn:
            async with conn.transaction():
                cur = await conn.execute(
                    "select m.id, m.relay_state_at, a.id from meters m left join accounts a"
                    " on a.service_point_id = m.service_point_id and a.status = 'open'"
                    " where m.relay_state = 'armed' and m.relay_state_at is not null"
                )
                for meter_id, armed_at, account_id in await cur.fetchall():
                    site = await store.site_for_meter(conn, meter_id)
                    policy = await self._policy(conn, site, now) if site else None
                    hours = policy.reconnect.armed_timeout_h if policy else 24
                    if armed_at + timedelta(hours=hours) <= now:
                        await store.open_case(
                            conn,
                            kind="armed_timeout",
                            dedupe_key=f"armed_timeout:{meter_id}:{armed_at.isoformat()}",
                            now=now,
                            account_id=account_id,
                            meter_id=meter_id,
                            detail={"armed_at": armed_at, "sla_breach": True, "timeout_h": hours},
                        )
                        opened += 1
        return opened

    async def recheck_unknown(self, older_than_s: float = 600.0, limit: int = 50) -> int:
        """Read back meters whose command ended UNKNOWN; a read-back that now agrees confirms it
        (the work order stays for the person to close), any known relay state is recorded."""
        now = self._now()
        async with self._connect() as conn:
            cur = await conn.execute(
                f"select {store.COMMAND_COLUMNS} from commands where state = 'unknown' and updated_at < %s"
                " order by updated_at limit %s",
                (now - timedelta(seconds=older_than_s), limit),
            )
            commands = [store.Command(*r) for r in await cur.fetchall()]
            settled = 0
            for command in commands:
                meter = await self._address(conn, command.meter_id)
                transport = self._transports.get(meter.protocol)
                relay: str | None = None
                if transport is not None:
                    try:
                        relay = await transport.read_relay(meter, self.settings.readback_timeout_s)
                    except DispatchError as exc:
                        logger.info("read-back of %s still failing: %s", command.meter_id, exc)
                async with conn.transaction():
                    if relay in ("connected", "disconnected", "armed", "load_limited"):
                        await store.set_relay_state(conn, command.meter_id, str(relay), now)
                    if relay in TARGET_RELAY.get(command.action, ()):
                        await store.transition(conn, command, "confirm", now, confirmed_at=now, relay_read_back=relay)
                        await audit.append(
                            conn,
                            actor="control",
                            action="command_confirmed_late",
                            subject=command.meter_id,
                            detail={"command_id": command.id, "relay": relay},
                            at=now,
                        )
                        settled += 1
                    else:
                        await conn.execute("update commands set updated_at = %s where id = %s", (now, command.id))
        return settled

    async def on_state_report(self, meter_id: str, body: dict[str, Any]) -> None:
        relay = body.get("relay")
        if relay not in ("connected", "disconnected", "armed", "load_limited"):
            return
        async with self._connect() as conn:
            async with conn.transaction():
                await store.set_relay_state(conn, meter_id, str(relay), self._now())


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


def _decision_detail(decision: Allowed | Deferred | Refused) -> dict[str, Any]:
    if isinstance(decision, Allowed):
        return {"kind": "allowed", "action": decision.action, "notes": list(decision.notes)}
    if isinstance(decision, Deferred):
        return {
            "kind": "deferred",
            "until": decision.until.isoformat() if decision.until else None,
            "reasons": [r.value for r in decision.reasons],
        }
    return {"kind": "refused", "reasons": [r.value for r in decision.reasons], "open_case": decision.open_case}
