"""Test harness for control: a settable clock, a registered site, and small MQTT meters.

``FakeMeter`` obeys the documented commands (docs/interfaces.md §1.4) on the real broker:
it acks with the correlation id and its relay, answers ``status`` with its relay, and
publishes a state report after every change. Modes make it misbehave the way field meters
do: ``keep_power`` rejects trips, ``load_side_voltage`` rejects closing, ``silent`` never
answers, ``liar`` acks ok but does not move the relay.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from psycopg_pool import AsyncConnectionPool

from control.dispatch import Ack, MeterAddress, Outgoing, no_delay
from control.engine import Engine, EngineSettings
from control.service import reset_connection
from headend import registry

NEXT_STATE = {
    "disconnect": "disconnected",
    "arm": "armed",
    "reconnect": "connected",
    "load_limit": "load_limited",
    "clear_load_limit": "connected",
}


@dataclass
class SettableClock:
    at: datetime

    def now(self) -> datetime:
        return self.at

    def advance(self, **kw: float) -> datetime:
        self.at += timedelta(**kw)
        return self.at


@dataclass
class FakeMeter:
    meter_id: str
    prefix: str
    host: str
    port: int
    relay: str = "connected"
    mode: str = "normal"  # normal | keep_power | load_side_voltage | silent | liar
    received: list[dict[str, Any]] = field(default_factory=list)
    ids: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"meter-{uuid.uuid4().hex[:8]}")
        self.client.on_connect = self._connected
        self.client.on_subscribe = lambda c, u, mid, rc, p=None: self._ready.set()
        self.client.on_message = self._message

    def _connected(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        no_delay(client)  # a real meter's TCP stack is its own business; the test's should not add 40 ms
        client.subscribe(self._topic("cmd"), qos=1)

    def _topic(self, kind: str) -> str:
        return f"{self.prefix}/v1/meters/{self.meter_id}/{kind}"

    def start(self) -> FakeMeter:
        self.client.connect(self.host, self.port)
        self.client.loop_start()
        assert self._ready.wait(10), "meter subscription not acknowledged"
        return self

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def press_button(self) -> None:
        with self._lock:
            if self.relay == "armed":
                self.relay = "connected"
        self._state()

    def _state(self) -> None:
        self.client.publish(
            self._topic("state"),
            json.dumps({"v": 1, "ts": datetime.now(UTC).isoformat(), "relay": self.relay, "load_side_voltage": False}),
            qos=1,
        )

    def _message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        cmd = json.loads(msg.payload)
        with self._lock:
            self.received.append(cmd)
            self.ids[cmd["id"]] += 1
            action = cmd["action"]
            if self.mode == "silent":
                return
            status, reason, changed = "ok", None, False
            if action in NEXT_STATE:
                if self.mode == "keep_power" and action in ("disconnect", "load_limit"):
                    status, reason = "rejected", "keep_power_mode"
                elif self.mode == "load_side_voltage" and action in ("arm", "reconnect"):
                    status, reason = "rejected", "load_side_voltage"
                elif self.mode != "liar":
                    changed = self.relay != NEXT_STATE[action]
                    self.relay = NEXT_STATE[action]
            ack: dict[str, Any] = {"v": 1, "id": cmd["id"], "status": status, "relay": self.relay, "ts": "now"}
            if reason:
                ack["reason"] = reason
        client.publish(self._topic("ack"), json.dumps(ack), qos=1)
        if changed:
            self._state()

    @property
    def trips(self) -> int:
        return sum(1 for c in self.received if c["action"] == "disconnect")


def register_site(
    db_url: str,
    *,
    n: int = 1,
    feeder: str = "F-1",
    timezone: str = "Asia/Shanghai",
    account_class: str = "residential",
    protocol: str = "mqtt",
    balance_minor: int = 0,
    now: datetime,
    prefix: str = "",
    **meter_fields: Any,
) -> list[tuple[str, str]]:
    """n service points, each with a meter and an open account; returns (account_id, meter_id)."""
    out = []
    with psycopg.connect(db_url, autocommit=True) as conn:
        registry.ensure_tariff(
            conn,
            "T-flat",
            "flat",
            effective_from=datetime(2020, 1, 1, tzinfo=UTC),
            definition={"kind": "flat", "price_per_kwh": "0.56", "currency": "CNY"},
        )
        for i in range(n):
            sp, meter, account = f"SP-{prefix}{i}", f"M-{prefix}{i}", f"A-{prefix}{i}"
            registry.ensure_service_point(conn, sp, feeder=feeder, timezone=timezone, account_class=account_class)
            registry.ensure_meter(
                conn,
                meter,
                service_point_id=sp,
                protocol=protocol,
                relay_state="connected",
                **meter_fields,
            )
            registry.open_account(conn, account, service_point_id=sp, tariff_id="T-flat", balance_minor=balance_minor)
            out.append((account, meter))
        conn.execute("update meters set last_seen_at = %s", (now,))
    return out


def good_conditions(db_url: str, now: datetime, area: str = "default") -> None:
    """Fresh mild forecast, channels healthy for hours, fresh readings."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "insert into weather_forecasts (area, issued_at, horizon_start, horizon_end, min_c, max_c)"
            " values (%s, %s, %s, %s, %s, %s)",
            (area, now - timedelta(hours=1), now - timedelta(hours=1), now + timedelta(days=3), Decimal(5), Decimal(9)),
        )
        conn.execute(
            "insert into payment_channel_health (channel, healthy, changed_at) values ('bank', true, %s)"
            " on conflict (channel) do update set healthy = true, changed_at = excluded.changed_at",
            (now - timedelta(days=2),),
        )
        conn.execute("update meters set last_seen_at = %s", (now,))


# What prepaid's credit state machine would have recorded with each event (control reads it
# through prepaid.operations.credit_facts).
CREDIT_STATE = {
    "emergency_credit_started": ("emergency", -100),
    "credit_exhausted": ("exhausted", -1100),
    "credit_restored": ("normal", 2000),
}


def account_event(db_url: str, account_id: str, kind: str, at: datetime, key: str | None = None) -> int:
    with psycopg.connect(db_url, autocommit=True) as conn:
        if kind in CREDIT_STATE:
            state, balance = CREDIT_STATE[kind]
            conn.execute("update accounts set balance_minor = %s where id = %s", (balance, account_id))
            conn.execute(
                "insert into credit_state (account_id, state, state_since) values (%s, %s, %s)"
                " on conflict (account_id) do update set state = excluded.state, state_since = excluded.state_since",
                (account_id, state, at),
            )
        row = conn.execute(
            "insert into account_events (account_id, kind, at, dedupe_key) values (%s, %s, %s, %s) returning id",
            (account_id, kind, at, key),
        ).fetchone()
        assert row is not None
        conn.execute("select pg_notify('account_events', %s)", (str(row[0]),))
        return int(row[0])


def deliver_notices(db_url: str, at: datetime, kind: str | None = None) -> int:
    """Play prepaid's notice sender: mark pending notices sent and delivered at ``at``."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        cur = conn.execute(
            "update notices set status = 'delivered', sent_at = %s, delivered_at = %s"
            " where status = 'pending' and next_attempt_at <= %s and (%s::text is null or kind = %s)",
            (at, at, at, kind, kind),
        )
        return cur.rowcount


def rows(db_url: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        return conn.execute(query, args).fetchall()


@asynccontextmanager
async def pool(db_url: str, size: int = 4) -> Any:
    p = AsyncConnectionPool(
        db_url, open=False, min_size=1, max_size=size, kwargs={"autocommit": True}, reset=reset_connection
    )
    await p.open(wait=True)
    try:
        yield p
    finally:
        await p.close()


@asynccontextmanager
async def control_mqtt(prefix: str, host: str, port: int) -> Any:
    """A connected paho client for the engine's MqttTransport (network loop in its thread)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ctl-{uuid.uuid4().hex[:8]}")
    client.connect(host, port)
    client.loop_start()
    try:
        yield client
    finally:
        client.loop_stop()
        client.disconnect()


@dataclass
class RecordingTransport:
    """A meter network stand-in: records every command, answers like a meter would."""

    relay: dict[str, str] = field(default_factory=dict)
    sent: list[tuple[str, str]] = field(default_factory=list)
    reject: dict[str, str] = field(default_factory=dict)  # action -> reason

    async def send(self, meter: MeterAddress, cmd: Outgoing, timeout_s: float) -> Ack:
        self.sent.append((meter.meter_id, cmd.action))
        if cmd.action in self.reject:
            return Ack("rejected", self.relay.get(meter.meter_id, "connected"), self.reject[cmd.action])
        target = {"disconnect": "disconnected", "arm": "armed", "reconnect": "connected"}
        target |= {"load_limit": "load_limited", "clear_load_limit": "connected"}
        if cmd.action in target:
            self.relay[meter.meter_id] = target[cmd.action]
        return Ack("ok", self.relay.get(meter.meter_id, "connected"))

    async def read_relay(self, meter: MeterAddress, timeout_s: float) -> str | None:
        return self.relay.get(meter.meter_id, "connected")


class Rig:
    def __init__(self, db_url: str, p: Any, clock: SettableClock, transport: RecordingTransport) -> None:
        self.db_url, self.pool, self.clock, self.transport = db_url, p, clock, transport
        self.engine = Engine(
            p.connection,
            {"mqtt": transport},
            clock.now,
            EngineSettings(worker_id="t", ack_timeout_s=1, readback_timeout_s=1, backoff_base_s=0.01),
        )

    def rows(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        return rows(self.db_url, query, *args)

    def sql(self, query: str, *args: Any) -> None:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            conn.execute(query, args)

    async def at_execution_time(self, account: str) -> int:
        """Plan a disconnect (credit exhausted at clock time), deliver the notices, and move the
        clock to the planned execution time with fresh conditions; returns the command id."""
        account_event(self.db_url, account, "emergency_credit_started", self.clock.at)
        await self.engine.process_events()
        deliver_notices(self.db_url, self.clock.advance(minutes=1), "pending_disconnection")
        account_event(self.db_url, account, "credit_exhausted", self.clock.advance(minutes=10))
        await self.engine.process_events()
        ((cmd_id, not_before),) = self.rows(
            "select id, not_before from commands where account_id = %s and action = 'disconnect'", account
        )
        self.clock.at = not_before - timedelta(minutes=30)
        deliver_notices(self.db_url, self.clock.at, "final_reminder")
        self.clock.at = not_before
        good_conditions(self.db_url, not_before)
        return int(cmd_id)
