"""Benchmark of the HTTP API (prints figures; asserts nothing about speed).

The API runs as its own process (``headend run api``: uvicorn, one worker) on a loopback
port over a fresh database with ``--accounts`` accounts/meters and a day of 15-minute
readings each. A client in this process keeps ``--concurrency`` requests in flight for
``--seconds`` per workload and reports requests/s and latency p50/p99:

1. GET /v1/accounts/{id}                      (auth + one indexed row)
2. GET /v1/meters/{id}/readings/aggregate     (time_bucket by hour over a day)
3. POST /v1/topups                            (Idempotency-Key + prepaid top-up transaction)
4. machine ceiling, same run: the same client against a bare ASGI app under uvicorn
   (no framework, no database), reported as the ratio each workload reaches.

    .venv/bin/python bench/api.py [--accounts 200] [--seconds 5] [--concurrency 16]

Bounded: well under a minute with the defaults. Uses its own database, dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import httpx  # noqa: E402
import psycopg  # noqa: E402

from api.auth import Role  # noqa: E402
from api.keys import create_key  # noqa: E402
from headend import db, registry  # noqa: E402

BASE = "postgresql://postgres@127.0.0.1:5432/postgres"
ROOT = _HERE.parent
BARE_APP = """
import sys, uvicorn
async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"ok":true}'})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", lifespan="off", access_log=False)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed(url: str, accounts: int) -> tuple[str, str, str]:
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    with psycopg.connect(url) as conn:
        registry.ensure_tariff(
            conn,
            "T",
            "flat",
            effective_from=datetime(2020, 1, 1, tzinfo=UTC),
            definition={"kind": "flat", "price_per_kwh": "0.56", "currency": "CNY"},
        )
        for i in range(accounts):
            registry.ensure_service_point(conn, f"SP-{i}", feeder=f"F-{i % 10}", area=f"area-{i % 4}")
            registry.ensure_meter(conn, f"M-{i}", service_point_id=f"SP-{i}")
            registry.open_account(conn, f"A-{i}", service_point_id=f"SP-{i}", tariff_id="T", balance_minor=10_000)
        with conn.cursor().copy("copy readings (meter_id, obis, ts, value) from stdin") as copy:
            for i in range(accounts):
                for k in range(96):
                    copy.write_row((f"M-{i}", "1-0:1.8.0", day + timedelta(minutes=15 * k), 1000.0 + 50 * k))
        op = create_key(conn, name="bench-op", role=Role.OPERATOR).token
        bank = create_key(conn, name="bench-bank", role=Role.INTEGRATOR).token
    return op, bank, day.isoformat()


async def wait_up(url: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as c:
        while time.monotonic() < deadline:
            try:
                await c.get(url)
                return
            except httpx.TransportError:
                await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


async def load(
    base: str, make: Callable[[int], tuple[str, str, dict[str, str], object]], seconds: float, concurrency: int
) -> tuple[float, list[float], int]:
    """Closed loop: ``concurrency`` workers, each sends the next request when the last answered."""
    latencies: list[float] = []
    errors = 0
    counter = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors, counter
            while time.perf_counter() < stop:
                counter += 1
                method, path, headers, body = make(counter)
                t0 = time.perf_counter()
                r = await client.request(method, path, headers=headers, json=body)
                latencies.append(time.perf_counter() - t0)
                if r.status_code >= 400:
                    errors += 1

        started = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for n in range(concurrency):
                tg.create_task(worker(), name=f"bench-worker-{n}")
        elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, latencies, errors


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) > 1 else float("nan")


async def run(args: argparse.Namespace) -> None:
    name = f"headend_bench_api_{uuid.uuid4().hex[:8]}"
    url = db.create_database(BASE, name)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        db.migrate(url)
        t0 = time.perf_counter()
        op, bank, day = seed(url, args.accounts)
        print(f"seeded {args.accounts} accounts, {args.accounts * 96} readings in {time.perf_counter() - t0:.1f}s")
        api_port, bare_port = free_port(), free_port()
        env = {
            **os.environ,
            "HEADEND_DATABASE_URL": url,
            "HEADEND_API_PORT": str(api_port),
            "HEADEND_LOG_LEVEL": "WARNING",
        }
        # started before any client task exists; Popen does not block
        procs.append(subprocess.Popen([sys.executable, "-m", "headend", "run", "api"], env=env, cwd=ROOT))  # noqa: ASYNC220
        procs.append(subprocess.Popen([sys.executable, "-c", BARE_APP, str(bare_port)], cwd=ROOT))  # noqa: ASYNC220
        api, bare = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{bare_port}"
        await wait_up(f"{api}/health")
        await wait_up(bare)
        rnd = random.Random(7)
        auth_op = {"Authorization": f"Bearer {op}"}
        run_id = uuid.uuid4().hex[:6]
        end = (datetime.fromisoformat(day) + timedelta(days=1)).isoformat()

        workloads: list[tuple[str, str, Callable[[int], tuple[str, str, dict[str, str], object]]]] = [
            ("ceiling: bare ASGI app", bare, lambda n: ("GET", "/", {}, None)),
            (
                "GET /v1/accounts/{id}",
                api,
                lambda n: ("GET", f"/v1/accounts/A-{rnd.randrange(args.accounts)}", auth_op, None),
            ),
            (
                "GET /v1/meters/{id}/readings/aggregate (hour, 1 day)",
                api,
                lambda n: (
                    "GET",
                    f"/v1/meters/M-{rnd.randrange(args.accounts)}/readings/aggregate?bucket=hour"
                    f"&start={day.replace('+', '%2B')}&end={end.replace('+', '%2B')}",
                    auth_op,
                    None,
                ),
            ),
            (
                "POST /v1/topups (idempotent)",
                api,
                lambda n: (
                    "POST",
                    "/v1/topups",
                    {"Authorization": f"Bearer {bank}", "Idempotency-Key": f"{run_id}-{n}"},
                    {
                        "account_id": f"A-{rnd.randrange(args.accounts)}",
                        "channel": "bank",
                        "reference": f"{run_id}-{n}",
                        "amount_minor": 500,
                    },
                ),
            ),
        ]
        ceiling = None
        print(f"{'workload':55s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>6s} {'of ceiling':>10s}")
        for label, base, make in workloads:
            rate, lat, errors = await load(base, make, args.seconds, args.concurrency)
            ceiling = ceiling or rate
            print(f"{label:55s} {rate:9.0f} {pct(lat, 50):8.2f} {pct(lat, 99):8.2f} {errors:6d} {rate / ceiling:10.2f}")
        print(f"(client concurrency {args.concurrency}, {args.seconds:.0f}s per workload, one uvicorn worker)")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        db.drop_database(BASE, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
