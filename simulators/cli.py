"""``headend simulate SCENARIO.yaml``: run a simulated fleet from a scenario file.

Options override the file (seed, speed, duration, endpoints); ``--register`` first upserts the
fleet (service points, meters, optionally accounts) into the database via headend.registry.
Progress goes to stderr (one line, refreshed); Ctrl-C / SIGTERM stop cleanly and print the
summary. The clock follows HEADEND_CLOCK_* when set (shared with the services), else the
scenario's ``start`` / ``speed``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from datetime import UTC
from typing import Any

import psycopg

from headend.settings import CommonSettings
from simulators.registration import register_fleet
from simulators.runner import Progress, Simulation
from simulators.scenario import load_scenario


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("simulate", help="run a simulated fleet of MQTT and Modbus meters from a scenario file")
    p.add_argument("scenario", help="scenario YAML file (see docs/simulators.md, scenarios/*.yaml)")
    p.add_argument("--seed", type=int, help="override the scenario's seed")
    p.add_argument("--speed", type=float, help="simulated seconds per real second (0 = as fast as possible)")
    p.add_argument("--duration", help="simulated duration, e.g. 90, 15m, 2h, 3d (default: the scenario's)")
    p.add_argument("--mqtt-prefix", help="native topic prefix (default: scenario, then HEADEND_MQTT_PREFIX)")
    p.add_argument("--modbus-port", type=int, help="first Modbus TCP port (one port per 247 meters at most)")
    p.add_argument("--register", action="store_true", help="upsert the fleet into the database first")
    p.add_argument("--database-url", help="default: HEADEND_DATABASE_URL")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=_cmd_simulate)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"seed": args.seed, "speed": args.speed, "duration": args.duration}
    return out


def _cmd_simulate(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario, _overrides(args))
    if args.mqtt_prefix or args.modbus_port is not None:
        data = scenario.model_dump()
        if args.mqtt_prefix:
            data["mqtt"]["prefix"] = args.mqtt_prefix
        if args.modbus_port is not None:
            data["modbus"]["port"] = args.modbus_port
        scenario = type(scenario).model_validate(data)
    settings = CommonSettings()
    tty = sys.stderr.isatty()
    sim = Simulation(scenario, settings=settings, on_progress=None if args.quiet else _printer(tty))
    print(
        f"simulate {scenario.name}: {len(sim.specs)} meters ({sim.mqtt_meters} MQTT, {sim.modbus_meters} Modbus), "
        f"seed {scenario.seed}, speed {sim.clock.speed:g}x, from {sim.clock.origin.astimezone(UTC):%Y-%m-%d %H:%M}Z",
        file=sys.stderr,
    )
    counters = asyncio.run(_run(sim, args, settings))
    c = counters
    print(
        f"\nsummary: {c.ticks} ticks, {c.samples} readings, {c.messages} messages, {c.commands} commands "
        f"({c.commands_ignored} not heard), faults: dropped {c.dropped}, duplicated {c.duplicated}, "
        f"reordered {c.reordered}, delayed {c.delayed}, garbage {c.garbage}, acks missing {c.acks_missing}, "
        f"backlog readings sent {c.backlog_sent}, {dict(c.faults)}",
        file=sys.stderr,
    )
    return 0


async def _run(sim: Simulation, args: argparse.Namespace, settings: CommonSettings) -> Any:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    url = args.database_url or settings.database_url
    base = sim.scenario.modbus.port

    def port_of(spec: Any) -> int:
        if sim.farm is not None:
            return sim.farm.port_of(sim.model.index[spec.meter_id])
        return int(base + (spec.modbus_server or 0))

    async def do_register() -> None:
        def work() -> int:
            with psycopg.connect(url) as conn:
                return register_fleet(conn, sim.scenario, sim.specs, port_of, effective_from=sim.clock.origin)

        n = await asyncio.to_thread(work)
        print(f"registered {n} meters in the database", file=sys.stderr)

    # Register before the meters speak, unless Modbus ports are only known once the servers run.
    late = args.register and base == 0 and sim.modbus_meters > 0
    if args.register and not late:
        await do_register()
    task = asyncio.create_task(sim.run(stop), name="simulate")
    if late:
        await sim.ready.wait()
        await do_register()
    return await task


def _printer(tty: bool) -> Any:
    def show(p: Progress) -> None:
        total = f"/{p.ticks_total}" if p.ticks_total else ""
        line = (
            f"{p.sim_time:%Y-%m-%d %H:%M}Z tick {p.tick}{total}  meters {p.meters}  readings {p.samples} "
            f"({p.samples_per_s:,.0f}/s)  messages {p.messages}  commands {p.commands}  lag {p.lag_s:.1f}s"
        )
        if tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    return show
