"""``headend demo``: the whole story on an accelerated clock, told as it happens.

One simulated day per real minute (``--speed``). The demo

1. creates its own database (``headend_demo`` on the configured server), migrates it
   and registers a mixed fleet: native MQTT meters, Tasmota and Shelly devices,
   SunSpec and Eastron SDM630 Modbus meters, their service points and prepaid
   accounts (a few with little credit, one on life support);
2. feeds the facts the guard needs (fresh weather forecasts, healthy payment
   channels), as the real feeds would;
3. starts every headend service (``headend run all``) and the simulated fleet
   (``headend simulate``) with the same accelerated clock;
4. narrates from the database: readings arriving, balances falling, warnings,
   credit exhausted, the pending-disconnection notice, the guarded disconnect
   inside the window and its read-back, a top-up through the API, the reconnect;
5. exits with a summary (``--keep-running`` leaves everything up for the API).

The clock starts on a Tuesday 08:00 in the service points' time zone, in a week
whose Tuesday to Thursday are neither public holidays nor the day before one, so
the execution window (Mon-Thu 09:00-15:00) is reached within the story.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import holidays
import httpx
import yaml
from psycopg import AsyncConnection

from api import keys as api_keys
from api.auth import Role
from control import operations as control_ops
from headend import db, registry
from headend.clock import AcceleratedClock, Clock, clock_env
from headend.errors import HeadendError
from headend.settings import CommonSettings
from prepaid import operations as prepaid_ops

DEMO_TZ = "Asia/Shanghai"
DEMO_COUNTRY = "CN"


def _blocked(day: date, cal: holidays.HolidayBase) -> bool:
    return day in cal or (day + timedelta(days=1)) in cal


def pick_origin(real_now: datetime, tz: str = DEMO_TZ, country: str = DEMO_COUNTRY) -> datetime:
    """The latest Tuesday 08:00 local, at least 7 days before ``real_now``, whose
    Tuesday, Wednesday and Thursday are free of holidays and holiday eves."""
    zone = ZoneInfo(tz)
    local = real_now.astimezone(zone).date() - timedelta(days=7)
    day = local - timedelta(days=(local.weekday() - 1) % 7)  # back to a Tuesday
    cal = holidays.country_holidays(country, years=range(day.year - 1, day.year + 2))
    while any(_blocked(day + timedelta(days=i), cal) for i in range(3)):
        day -= timedelta(days=7)
    return datetime.combine(day, dtime(8, 0), tzinfo=zone)


# --------------------------------------------------------------------------- the run

STORY_METERS = {
    # meter -> (opening balance in fen, what it shows)
    "D-0001": (2000, "the main story: warnings, credit exhausted, notice, disconnect, top-up, reconnect"),
    "L-0001": (2000, "a meter with load limiting: 1 kW for 24 h before any disconnect"),
    "P-0001": (2000, "life support: never cut automatically, a case opens for a person"),
}
TOPUP_MINOR = 5000


def _story_groups() -> list[dict[str, Any]]:
    common = {
        "wire": "native",
        "reporting": "single",
        "interval_s": 900,
        "profile": {"h0": 1.0},
        "annual_kwh": 20000,
        "annual_kwh_spread": 0.0,
        "feeders": 1,
        "feeder_prefix": "FS",
    }
    return [
        {**common, "name": "story", "count": 1, "id_format": "D-{n:04d}", "supports_load_limit": False},
        {**common, "name": "story-ll", "count": 1, "id_format": "L-{n:04d}", "supports_load_limit": True},
        {**common, "name": "story-protected", "count": 1, "id_format": "P-{n:04d}", "supports_load_limit": False},
    ]


def demo_scenario(base: dict[str, Any], modbus_port: int) -> dict[str, Any]:
    """The fleet of ``base`` (a scenario document) plus the story meters; big balances elsewhere."""
    doc = dict(base)
    doc["name"] = "demo"
    doc["groups"] = [*_story_groups(), *base.get("groups", [])]
    doc["speed"] = 1
    doc["duration"] = None
    doc["modbus"] = {**base.get("modbus", {}), "port": modbus_port}
    doc["accounts"] = {**base.get("accounts", {}), "balance_minor": 100000}
    doc.pop("start", None)
    return doc


def _fmt_money(minor: int) -> str:
    sign = "-" if minor < 0 else ""
    return f"{sign}{abs(minor) // 100}.{abs(minor) % 100:02d}"


@dataclass
class Story:
    """What the narrator has told so far, and the figures for the summary."""

    tz: ZoneInfo
    last_event: int = 0
    last_notice: int = 0
    last_case: int = 0
    command_states: dict[int, str] = field(default_factory=dict)
    notice_states: dict[int, str] = field(default_factory=dict)
    relay: dict[str, str] = field(default_factory=dict)
    next_status_at: datetime | None = None
    topup_at_real: float | None = None
    topup_sim: datetime | None = None
    reconnected_real: float | None = None
    disconnected: bool = False
    commands_since: datetime | None = None  # simulated time: only commands changed since are read

    def stamp(self, at: datetime) -> str:
        return at.astimezone(self.tz).strftime("%a %H:%M")

    def say(self, at: datetime, text: str) -> None:
        print(f"  {self.stamp(at)}  {text}", flush=True)


async def _narrate(conn: AsyncConnection[Any], story: Story, now: datetime) -> None:
    # periodic status line: readings and the story accounts' balances
    if story.next_status_at is None or now >= story.next_status_at:
        story.next_status_at = now + timedelta(hours=6)
        cur = await conn.execute("select count(*), count(distinct meter_id) from readings")
        n, meters = await cur.fetchone() or (0, 0)
        cur = await conn.execute(
            "select a.id, a.balance_minor from accounts a join meters m on m.service_point_id = a.service_point_id"
            " where m.id = any(%s) and a.status = 'open' order by a.id",
            (list(STORY_METERS),),
        )
        balances = ", ".join(f"{acc} {_fmt_money(b)}" for acc, b in await cur.fetchall())
        story.say(now, f"[status] {n:,} readings from {meters} meters; balances (CNY): {balances}")
    cur = await conn.execute(
        "select id, account_id, kind, at, detail from account_events where id > %s order by id", (story.last_event,)
    )
    for eid, account, kind, at, detail in await cur.fetchall():
        story.last_event = eid
        extra = ""
        if isinstance(detail, dict):
            parts = [f"balance {_fmt_money(int(detail['balance_minor']))} CNY"] if "balance_minor" in detail else []
            parts += [f"{k} {detail[k]}" for k in ("reason", "threshold_minor", "days_left") if k in detail]
            extra = f" ({', '.join(parts)})" if parts else ""
        story.say(at, f"[prepaid] {account}: {kind.replace('_', ' ')}{extra}")
    cur = await conn.execute(
        "select id, account_id, kind, case when delivered_at is not null then 'delivered' else status end, body"
        " from notices where id > %s or delivered_at is null order by id limit 200",
        (story.last_notice,),
    )
    for nid, account, kind, status, body in await cur.fetchall():
        if story.notice_states.get(nid) == status:
            continue
        story.notice_states[nid] = status
        story.last_notice = max(story.last_notice, nid)
        when = ""
        if isinstance(body, dict) and body.get("earliest_execution"):
            when = f", earliest execution {story.stamp(datetime.fromisoformat(str(body['earliest_execution'])))}"
        story.say(now, f"[notice] {kind.replace('_', ' ')} to {account}: {status}{when}")
    cur = await conn.execute(
        "select id, meter_id, action, state, reason from commands"
        " where %(since)s::timestamptz is null or updated_at >= %(since)s order by id",
        {"since": story.commands_since},
    )
    # control stamps updated_at with the same shared clock; an hour of margin covers the lag
    story.commands_since = now - timedelta(hours=1)
    for cid, meter, action, state, reason in await cur.fetchall():
        if story.command_states.get(cid) == state:
            continue
        story.command_states[cid] = state
        why = f" ({reason})" if reason else ""
        story.say(now, f"[control] command {cid} {action} {meter}: {state}{why}")
    cur = await conn.execute(
        "select id, kind, account_id, detail from cases where id > %s order by id", (story.last_case,)
    )
    for case_id, kind, account, detail in await cur.fetchall():
        story.last_case = case_id
        reasons = detail.get("reasons") if isinstance(detail, dict) else None
        story.say(now, f"[control] case {case_id} opened for a person: {kind} {account or ''} {reasons or ''}".rstrip())
    cur = await conn.execute("select id, relay_state from meters where id = any(%s)", (list(STORY_METERS),))
    for meter, relay in await cur.fetchall():
        if story.relay.get(meter) != relay:
            story.relay[meter] = relay
            story.say(now, f"[meter] {meter} relay {relay}")
            if meter == "D-0001" and relay == "disconnected":
                story.disconnected = True
            if meter == "D-0001" and relay == "connected" and story.topup_at_real and not story.reconnected_real:
                story.reconnected_real = time.time()


async def _feed_facts(url: str, clock: Clock) -> None:
    """The feeds a utility has: a weather forecast every 3 simulated hours, healthy channels."""
    async with await AsyncConnection.connect(url, autocommit=True) as conn:
        await control_ops.set_channel_health(conn, channel="app", healthy=True, at=clock.now() - timedelta(hours=3))
        while True:
            now = clock.now()
            await control_ops.set_weather(
                conn,
                area="default",
                issued_at=now,
                horizon_start=now - timedelta(hours=1),
                horizon_end=now + timedelta(hours=36),
                min_c=Decimal("8"),
                max_c=Decimal("19"),
                source="demo",
            )
            await asyncio.sleep(clock.sleep_s(3 * 3600))


async def _topup(api: str, token: str, account: str, story: Story, now: datetime) -> None:
    async with httpx.AsyncClient(base_url=api, timeout=10) as client:
        r = await client.post(
            "/v1/topups",
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": f"demo-topup-{account}"},
            json={"account_id": account, "channel": "app", "reference": f"demo-{account}", "amount_minor": TOPUP_MINOR},
        )
    story.topup_at_real = time.time()
    story.topup_sim = now
    detail = r.json()
    story.say(now, f"[api] top-up {_fmt_money(TOPUP_MINOR)} CNY via app for {account}: HTTP {r.status_code} {detail}")


async def _summary(url: str, story: Story) -> dict[str, Any]:
    async with await AsyncConnection.connect(url, autocommit=True) as conn:
        figures: dict[str, Any] = {}
        for name, query in {
            "readings": "select count(*) from readings",
            "meters reporting": "select count(distinct meter_id) from readings",
            "debits posted": "select count(*) from ledger_entries where amount_minor < 0",
            "quarantined payloads": "select count(*) from quarantine",
            "notices delivered": "select count(*) from notices where delivered_at is not null",
            "commands confirmed": "select count(*) from commands where state = 'confirmed'",
            "cases opened": "select count(*) from cases",
        }.items():
            cur = await conn.execute(query)
            row = await cur.fetchone()
            figures[name] = row[0] if row else 0
        figures["ledger problems"] = len(await prepaid_ops.verify_ledger(conn))
        figures["audit problems"] = len(await control_ops.verify_audit(conn))
    if story.topup_at_real and story.reconnected_real:
        figures["top-up -> relay connected (real s)"] = round(story.reconnected_real - story.topup_at_real, 2)
    return figures


@dataclass
class Setup:
    url: str
    clock: AcceleratedClock
    workdir: Path
    scenario: Path
    env: dict[str, str]
    token: str


def prepare(args: argparse.Namespace) -> Setup:
    """Database, clock, scenario file, registrations, facts and an integrator key."""
    settings = CommonSettings()
    url = db.create_database(settings.database_url, args.database, drop_first=True)
    db.migrate(url)
    real_start = time.time()
    origin = pick_origin(datetime.now(UTC))
    clock = AcceleratedClock(origin=origin, speed=args.speed, real_start=real_start)
    workdir = Path(tempfile.mkdtemp(prefix="headend-demo-"))
    base = yaml.safe_load(Path(args.fleet).read_text())
    scenario = workdir / "scenario.yaml"
    scenario.write_text(yaml.safe_dump(demo_scenario(base, args.modbus_port), sort_keys=False))
    prefix = f"demo-{os.getpid()}"
    env = {
        **os.environ,
        "HEADEND_DATABASE_URL": url,
        "HEADEND_MQTT_PREFIX": prefix,
        "HEADEND_API_PORT": str(args.api_port),
        "HEADEND_INGEST_CLIENT_ID": f"ingest-{prefix}",
        **clock_env(origin, args.speed, real_start),
    }
    print(
        f"headend demo: database {args.database}, clock starts {origin:%a %Y-%m-%d %H:%M} {DEMO_TZ}, "
        f"{args.speed:g}x ({86400 / args.speed:.0f} s per simulated day); logs in {workdir}",
        flush=True,
    )
    for meter, (balance, what) in STORY_METERS.items():
        print(f"  story meter {meter}: {_fmt_money(balance)} CNY, {what}")
    with db.connect(url, autocommit=True) as conn:
        registry.ensure_tariff(
            conn,
            "flat-cny",
            "flat 0.56 CNY/kWh",
            effective_from=origin - timedelta(days=365),
            definition={"kind": "flat", "price_per_kwh": "0.56", "currency": "CNY"},
        )
        for meter, (balance, _) in STORY_METERS.items():
            registry.ensure_service_point(conn, f"SP-{meter}", feeder="FS1", timezone=DEMO_TZ)
            registry.open_account(
                conn, f"A-{meter}", service_point_id=f"SP-{meter}", tariff_id="flat-cny", balance_minor=balance
            )
        conn.execute(
            "insert into protections (account_id, kind, valid_from, detail) values (%s, 'life_support', %s, %s)",
            ("A-P-0001", origin - timedelta(days=30), '{"certificate": "demo"}'),
        )
        token = api_keys.create_key(conn, name=f"demo-integrator-{os.getpid()}", role=Role.INTEGRATOR).token
    # register the fleet before anything publishes, so that no reading meets an unknown meter
    reg = subprocess.run(
        [_headend(), "simulate", str(scenario), "--register", "--duration", "0", "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if reg.returncode != 0:
        raise HeadendError(f"registering the fleet failed: {reg.stderr.strip()[-2000:]}")
    return Setup(url, clock, workdir, scenario, env, token)


async def run_demo(args: argparse.Namespace, setup: Setup) -> int:
    url, clock, workdir, scenario, env, token = (
        setup.url,
        setup.clock,
        setup.workdir,
        setup.scenario,
        setup.env,
        setup.token,
    )
    tz = ZoneInfo(DEMO_TZ)
    services = _start("services", ["run", "all"], env, workdir)
    api = f"http://127.0.0.1:{args.api_port}"
    fleet: subprocess.Popen[bytes] | None = None
    story = Story(tz=tz)
    rc = 0
    try:
        await _wait_http(f"{api}/health", 60)
        fleet = _start("fleet", ["simulate", str(scenario), "--register", "--quiet"], env, workdir)
        feeder = asyncio.create_task(_feed_facts(url, clock), name="demo-facts")
        deadline = time.time() + args.max_minutes * 60
        async with await AsyncConnection.connect(url, autocommit=True) as conn:
            while time.time() < deadline:
                now = clock.now()
                await _narrate(conn, story, now)
                if story.disconnected and story.topup_at_real is None:
                    await asyncio.sleep(clock.sleep_s(1800))  # the customer pays half an hour later
                    await _topup(api, token, "A-D-0001", story, clock.now())
                if story.reconnected_real and time.time() > story.reconnected_real + clock.sleep_s(3600):
                    break
                for name, proc in (("services", services), ("fleet", fleet)):
                    if proc.poll() is not None:
                        print(f"headend demo: {name} exited with {proc.returncode}; see {workdir}/{name}.log")
                        return 1
                await asyncio.sleep(0.5)
        feeder.cancel()
        figures = await _summary(url, story)
        print("\nsummary:")
        for k, v in figures.items():
            print(f"  {k:38s} {v}")
        complete = (
            story.reconnected_real is not None and not figures["ledger problems"] and not figures["audit problems"]
        )
        print(
            "the story completed: disconnected inside the window and reconnected after the top-up"
            if complete
            else "the story did not complete within --max-minutes; see the logs"
        )
        rc = 0 if complete else 1
        if args.keep_running:
            print(f"\neverything keeps running: API {api}/docs (integrator token {token}); Ctrl-C stops")
            await asyncio.Event().wait()
    finally:
        running = [p for p in (fleet, services) if p is not None]
        for proc in running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in running:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    return rc


def _headend() -> str:
    return str(Path(sys.executable).with_name("headend"))


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the demo dies, however it dies (Linux prctl)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not glibc Linux: the demo's finally block is the only cleanup
        return
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def _start(name: str, args: list[str], env: dict[str, str], workdir: Path) -> subprocess.Popen[bytes]:
    # The fleet runs until stopped: if the demo is killed (SIGKILL, a test's timeout), its
    # children must not live on publishing into the broker, so they die with it.
    with (workdir / f"{name}.log").open("wb") as log:
        return subprocess.Popen(
            [_headend(), *args], env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )


async def _wait_http(url: str, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    async with httpx.AsyncClient(timeout=1) as client:
        while time.time() < deadline:
            try:
                await client.get(url)
                return
            except httpx.HTTPError:
                await asyncio.sleep(0.3)
    raise HeadendError(f"{url} did not answer within {timeout_s:.0f} s")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("demo", help="the whole story on an accelerated clock (see README)")
    p.add_argument("--speed", type=float, default=1440.0, help="simulated seconds per real second (default 1440)")
    p.add_argument(
        "--fleet",
        default=str(Path(__file__).resolve().parent.parent / "scenarios" / "demo.yaml"),
        help="scenario file of the background fleet",
    )
    p.add_argument("--database", default="headend_demo", help="database to (re)create for the demo")
    p.add_argument("--api-port", type=int, default=8080)
    p.add_argument("--modbus-port", type=int, default=5020, help="first Modbus TCP port of the simulated meters")
    p.add_argument("--max-minutes", type=float, default=8.0, help="give up after this many real minutes")
    p.add_argument("--keep-running", action="store_true", help="leave everything running after the story")
    p.set_defaults(func=lambda a: asyncio.run(run_demo(a, prepare(a))))
