"""The ``headend`` command line.

Core subcommands live here (``migrate``, ``run``); each service package adds its
own by exposing ``register(subparsers)`` in ``<package>/cli.py`` (listed in
PLUGINS). Long-running services are ``async def serve() -> None`` coroutines named
in SERVICES; ``headend run all`` runs every one of them in one process.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from headend import db
from headend.errors import HeadendError
from headend.settings import CommonSettings

logger = logging.getLogger(__name__)

# name -> "module:coroutine function" (no arguments; builds its own settings)
SERVICES: dict[str, str] = {
    "ingest-mqtt": "ingest.service:serve_mqtt",
    "ingest-modbus": "ingest.service:serve_modbus",
    "prepaid": "prepaid.service:serve",
    "control": "control.service:serve",
    "api": "api.service:serve",
}
PLUGINS = ("ingest.cli", "prepaid.cli", "control.cli", "simulators.cli", "api.cli", "headend.demo")


def _load(target: str) -> Callable[[], Coroutine[Any, Any, None]]:
    module, _, func = target.partition(":")
    fn: Callable[[], Coroutine[Any, Any, None]] = getattr(importlib.import_module(module), func)
    return fn


def available_services() -> list[str]:
    return [name for name, target in SERVICES.items() if importlib.util.find_spec(target.split(":")[0])]


async def run_services(names: Sequence[str]) -> None:
    """Run services side by side until SIGINT/SIGTERM, then cancel them cleanly."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with asyncio.TaskGroup() as tg:
        tasks: list[asyncio.Task[None]] = [tg.create_task(_load(SERVICES[n])(), name=n) for n in names]
        waiter = tg.create_task(stop.wait(), name="signal")
        done_any = asyncio.create_task(asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED))
        await asyncio.wait([waiter, done_any], return_when=asyncio.FIRST_COMPLETED)
        logger.info("stopping %s", ", ".join(names))
        for t in [*tasks, waiter]:
            t.cancel()
        done_any.cancel()


def _cmd_migrate(args: argparse.Namespace) -> int:
    url = args.database_url or CommonSettings().database_url
    if args.create:
        dbname = url.rpartition("/")[2].partition("?")[0]
        db.create_database(url, dbname)
    applied = db.migrate(url)
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else "; up to date"))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    names = available_services() if args.service == "all" else [args.service]
    asyncio.run(run_services(names))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="headend", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default: HEADEND_LOG_LEVEL)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("migrate", help="apply pending SQL migrations (idempotent)")
    p.add_argument("--database-url", help="default: HEADEND_DATABASE_URL")
    p.add_argument("--create", action="store_true", help="create the database first if it does not exist")
    p.set_defaults(func=_cmd_migrate)

    p = sub.add_parser("run", help="run a service, or all of them in one process")
    p.add_argument("service", choices=[*SERVICES, "all"])
    p.set_defaults(func=_cmd_run)

    for plugin in PLUGINS:
        if importlib.util.find_spec(plugin) is None:
            continue
        importlib.import_module(plugin).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = args.log_level or CommonSettings().log_level
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        rc: int = args.func(args)
    except HeadendError as exc:
        print(f"headend: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return rc


if __name__ == "__main__":
    sys.exit(main())
