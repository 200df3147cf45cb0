"""Planning: account events -> disconnect plans, notices, commands; reconnect triggers.

Events are handled exactly once across control processes (control_processed_events, inserted
in the handling transaction), accounts concurrently, each account's events in order.
``emergency_credit_started`` opens a plan and the pending-disconnection notice with the
earliest execution time; ``credit_exhausted`` adds the disconnect command and its final
reminder; ``credit_restored`` / ``protection_added`` / ``dispute_opened`` cancel the plan and,
if supply is off, issue a reconnect (arm by default) at once, jittered in mass events.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

import psycopg

from control import audit, store
from control.errors import ControlError
from control.guard import decide
from control.ladder import execution_plan, self_disconnecting
from control.models import Reason, Refused, Request
from control.policy import Policy
from control.runtime import (
    EVENT_KINDS,
    Conn,
    EngineBase,
    decision_detail,
)
from control.windows import calendar_for, zone

logger = logging.getLogger(__name__)


class Planner(EngineBase):
    """Account events in, plans and commands out."""

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
                "decision_now": decision_detail(decision),
            },
            at=now,
        )
        return "command_scheduled"

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
