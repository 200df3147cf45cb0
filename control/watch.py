"""Watching relays: armed timeouts (SLA breach), late read-back of UNKNOWN meters, state reports."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from control import audit, store
from control.errors import DispatchError
from control.runtime import (
    TARGET_RELAY,
    EngineBase,
)

logger = logging.getLogger(__name__)


class Watch(EngineBase):
    """Timers and relay state reports."""

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
