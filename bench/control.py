"""Benchmark of control: top-up -> reconnect command on the wire -> relay confirmed.

The control service (control.service.run) runs in process against its own database and the
loopback Mosquitto; a small fleet of MQTT meters (one paho client for all of them) obeys the
documented commands. For each top-up, the credit_restored event is committed (with its
NOTIFY, as prepaid does) and the clock starts:

1. sequential: one top-up at a time: commit -> arm received by the meter (on the wire), and
   commit -> command confirmed (ack + read-back ``status`` round trip + commit): p50 / p99;
2. burst: N top-ups committed together over several feeders (within the per-feeder rate):
   time until all are on the wire and all confirmed;
3. ceiling, same run: MQTT publish -> receive on loopback (one client to another), p50/p99,
   reported as the ratio the on-the-wire latency is of it.

    .venv/bin/python bench/control.py [--meters 40] [--burst 60] [--profile]

Bounded: well under a minute with the defaults. Uses its own database, dropped at the end.
Prints figures only; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import pstats
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

# Run as `python bench/control.py`, this folder comes first on sys.path and would shadow
# the control package: drop it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
from datetime import UTC, datetime  # noqa: E402
from typing import Any  # noqa: E402

import paho.mqtt.client as mqtt  # noqa: E402
import psycopg  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from control.dispatch import no_delay  # noqa: E402
from control.service import run  # noqa: E402
from control.settings import ControlSettings  # noqa: E402
from headend import db, registry  # noqa: E402
from headend.clock import Clock  # noqa: E402

BASE = "postgresql://postgres@127.0.0.1:5432/postgres"
HOST, PORT = "127.0.0.1", 1883


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class Fleet:
    """Every meter of the bench on one MQTT client: ack, relay, state report."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.relay: dict[str, str] = {}
        self.on_wire: dict[str, float] = {}  # meter -> time the arm arrived
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-fleet-{uuid.uuid4().hex[:6]}")
        self.client.on_connect = self._connected
        self.client.on_subscribe = lambda c, u, mid, rc, p=None: self.ready.set()
        self.client.on_message = self._message

    def _connected(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        no_delay(client)
        client.subscribe(f"{self.prefix}/v1/meters/+/cmd", qos=1)

    def start(self) -> None:
        self.client.connect(HOST, PORT)
        self.client.loop_start()
        assert self.ready.wait(10)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def _message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        t = time.time()
        meter = msg.topic.split("/")[-2]
        cmd = json.loads(msg.payload)
        changed = False
        with self.lock:
            if cmd["action"] == "arm":
                self.on_wire.setdefault(meter, t)
                changed = self.relay.get(meter) != "armed"
                self.relay[meter] = "armed"
            relay = self.relay.get(meter, "disconnected")
        ts = datetime.now(UTC).isoformat()
        ack = {"v": 1, "id": cmd["id"], "status": "ok", "relay": relay, "ts": ts}
        client.publish(f"{self.prefix}/v1/meters/{meter}/ack", json.dumps(ack), qos=1)
        if changed:  # meters report their state after every relay change (docs/interfaces.md §1.4)
            state = {"v": 1, "ts": ts, "relay": relay, "load_side_voltage": False}
            client.publish(f"{self.prefix}/v1/meters/{meter}/state", json.dumps(state), qos=1)


def mqtt_ceiling(prefix: str, n: int = 300) -> list[float]:
    """Publish -> receive on loopback, one client to another (QoS 1), seconds."""
    got: dict[int, float] = {}
    done = threading.Event()
    ready = threading.Event()
    rx = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-rx-{uuid.uuid4().hex[:6]}")
    rx.on_connect = lambda c, u, f, rc, p=None: c.subscribe(f"{prefix}/ceiling", qos=1)
    rx.on_subscribe = lambda c, u, mid, rc, p=None: ready.set()

    def on_msg(c: mqtt.Client, u: Any, m: mqtt.MQTTMessage) -> None:
        got[int(m.payload)] = time.time()
        if len(got) >= n:
            done.set()

    rx.on_message = on_msg
    tx = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-tx-{uuid.uuid4().hex[:6]}")
    rx.connect(HOST, PORT)
    tx.connect(HOST, PORT)
    rx.loop_start()
    tx.loop_start()
    assert ready.wait(10)
    sent: dict[int, float] = {}
    for i in range(n):
        sent[i] = time.time()
        tx.publish(f"{prefix}/ceiling", str(i), qos=1)
        time.sleep(0.003)
    done.wait(10)
    rx.loop_stop()
    tx.loop_stop()
    rx.disconnect()
    tx.disconnect()
    return [got[i] - sent[i] for i in got]


def setup(url: str, meters: int, feeders: int) -> list[tuple[str, str]]:
    out = []
    with psycopg.connect(url, autocommit=True) as conn:
        registry.ensure_tariff(
            conn,
            "T",
            "flat",
            effective_from=datetime(2020, 1, 1, tzinfo=UTC),
            definition={"kind": "flat", "price_per_kwh": "0.56", "currency": "CNY"},
        )
        for i in range(meters):
            sp, m, a = f"SP{i}", f"M{i}", f"A{i}"
            registry.ensure_service_point(conn, sp, feeder=f"F{i % feeders}")
            registry.ensure_meter(conn, m, service_point_id=sp, relay_state="disconnected")
            registry.open_account(conn, a, service_point_id=sp, tariff_id="T")
            out.append((a, m))
    return out


def topup(conn: psycopg.Connection[Any], account: str) -> float:
    """Commit a credit_restored event with its NOTIFY (as prepaid does); returns the commit time."""
    with conn.transaction():
        conn.execute("update accounts set balance_minor = 2000 where id = %s", (account,))
        conn.execute(
            "insert into credit_state (account_id, state) values (%s, 'normal')"
            " on conflict (account_id) do update set state = 'normal'",
            (account,),
        )
        row = conn.execute(
            "insert into account_events (account_id, kind) values (%s, 'credit_restored') returning id", (account,)
        ).fetchone()
        assert row is not None
        conn.execute("select pg_notify('account_events', %s)", (str(row[0]),))
    return time.time()


def confirmed_at(conn: psycopg.Connection[Any], account: str) -> float | None:
    row = conn.execute(
        "select extract(epoch from confirmed_at) from commands where account_id = %s and state = 'confirmed'",
        (account,),
    ).fetchone()
    return float(row[0]) if row and row[0] is not None else None


async def wait_for(pred: Any, timeout_s: float) -> bool:
    end = time.time() + timeout_s
    while time.time() < end:
        if pred():
            return True
        await asyncio.sleep(0.002)
    return False


async def main(args: argparse.Namespace) -> None:
    name = f"headend_bench_control_{uuid.uuid4().hex[:6]}"
    url = db.create_database(BASE, name, drop_first=True)
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    try:
        db.migrate(url)
        sites = setup(url, args.meters + args.burst, feeders=max(1, args.burst // 10))
        fleet = Fleet(prefix)
        fleet.start()
        settings = ControlSettings(
            database_url=url,
            mqtt_host=HOST,
            mqtt_port=PORT,
            mqtt_prefix=prefix,
            control_worker_id="bench",
            control_poll_s=5.0,
            control_pool_max=6,
        )
        started = asyncio.Event()
        service = asyncio.create_task(run(settings, Clock(), started), name="control")
        await asyncio.wait_for(started.wait(), 30)
        await asyncio.sleep(0.5)
        wire: list[float] = []
        confirm: list[float] = []
        profiler = cProfile.Profile() if args.profile else None
        if profiler:
            profiler.enable()
        with psycopg.connect(url, autocommit=True) as conn:
            for account, meter in sites[: args.meters]:
                t0 = await asyncio.to_thread(topup, conn, account)
                if not await wait_for(lambda m=meter: m in fleet.on_wire, 10):
                    print(f"  {meter}: not on the wire within 10 s")
                    continue
                wire.append(fleet.on_wire[meter] - t0)
                ok = await wait_for(lambda a=account: confirmed_at(conn, a) is not None, 10)
                if ok:
                    c = confirmed_at(conn, account)
                    assert c is not None
                    confirm.append(c - t0)
            if profiler:
                profiler.disable()
            burst = sites[args.meters :]
            t0 = time.time()
            for account, _ in burst:
                await asyncio.to_thread(topup, conn, account)
            committed = time.time() - t0
            await wait_for(lambda: all(m in fleet.on_wire for _, m in burst), 30)
            all_wire = max(fleet.on_wire.get(m, float("nan")) for _, m in burst) - t0
            await wait_for(
                lambda: (
                    conn.execute(
                        "select count(*) from commands where state = 'confirmed' and account_id = any(%s)",
                        ([a for a, _ in burst],),
                    ).fetchone()
                    == (len(burst),)
                ),
                30,
            )
            row = conn.execute(
                "select extract(epoch from max(confirmed_at)), count(*) from commands"
                " where state = 'confirmed' and account_id = any(%s)",
                ([a for a, _ in burst],),
            ).fetchone()
            assert row is not None
            all_confirmed = float(row[0]) - t0 if row[0] is not None else float("nan")
        service.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await service
        fleet.stop()
        ceiling = await asyncio.to_thread(mqtt_ceiling, prefix)
        ms = 1000.0
        print(f"sequential top-ups: {len(wire)} of {args.meters}")
        print(
            f"  commit -> arm on the wire : p50 {pct(wire, 0.5) * ms:7.1f} ms  p99 {pct(wire, 0.99) * ms:7.1f} ms"
            f"  (target 200 ms)"
        )
        print(
            f"  commit -> relay confirmed : p50 {pct(confirm, 0.5) * ms:7.1f} ms  p99 {pct(confirm, 0.99) * ms:7.1f} ms"
        )
        print(
            f"burst of {len(burst)} top-ups over {max(1, args.burst // 10)} feeders"
            f" (committed in {committed * ms:.0f} ms): all on the wire {all_wire * ms:.0f} ms,"
            f" all confirmed {all_confirmed * ms:.0f} ms"
        )
        c50 = pct(ceiling, 0.5)
        print(
            f"ceiling: MQTT publish -> receive on loopback p50 {c50 * ms:.2f} ms p99 {pct(ceiling, 0.99) * ms:.2f} ms"
            f" ({len(ceiling)} msgs)"
        )
        if wire and c50 > 0:
            print(f"  on-the-wire p50 is {statistics.median(wire) / c50:.0f}x the loopback MQTT hop")
        if profiler:
            stats = pstats.Stats(profiler)
            stats.sort_stats("cumulative").print_stats(r"control/(engine|store|audit)|prepaid/operations", 18)
    finally:
        db.drop_database(BASE, name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--meters", type=int, default=40)
    parser.add_argument("--burst", type=int, default=60)
    parser.add_argument("--profile", action="store_true", help="profile the sequential phase (control's code)")
    asyncio.run(main(parser.parse_args()))
