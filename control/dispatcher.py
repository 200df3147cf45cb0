"""Dispatch: due commands -> meters, with every guard re-checked and the audit written first.

Due commands are leased with ``FOR UPDATE SKIP LOCKED``; the rate check and the send commit
happen under a per-feeder lock; the audit row and the move to ``sent`` are committed before
anything is published; the relay is read back; a disagreement after the last attempt gives
UNKNOWN and a field work order, never a false "disconnected". An expired disconnect is never
resent: a new command (new idempotency key) goes through the guards again. A ``sent`` command
whose worker died is read back first.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

import psycopg

from control import audit, store
from control.dispatch import Ack, MeterAddress, Outgoing, Transport
from control.errors import AuditUnavailable, ControlError, DispatchError, TransitionError
from control.guard import decide
from control.models import SUPPLY_OFF_ACTIONS, Allowed, Deferred, Refused, Request
from control.policy import Policy
from control.runtime import (
    RATE_LIMITED,
    TARGET_RELAY,
    Conn,
    EngineBase,
    FeederLock,
    decision_detail,
)
from headend.backoff import delays

logger = logging.getLogger(__name__)


class Dispatcher(EngineBase):
    """Commands out to meters, confirmed by read-back."""

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
            detail = {**command.detail, "last_decision": decision_detail(decision)}
            await store.transition(conn, command, "defer", now, not_before=until, detail=detail)
            if policy is not None and command.plan_id is not None:
                await self._follow_up_deferral(conn, command, site, policy, decision, until, now)

    async def _refuse(self, conn: Conn, command: store.Command, decision: Refused, now: datetime) -> None:
        reasons = [r.value for r in decision.reasons]
        async with conn.transaction():
            await store.transition(
                conn,
                command,
                "cancel",
                now,
                last_error="refused: " + ",".join(reasons),
                detail={**command.detail, "last_decision": decision_detail(decision)},
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
