"""``api.service:serve``: run the HTTP API with uvicorn until cancelled.

Listens on HEADEND_API_HOST:HEADEND_API_PORT (default 127.0.0.1:8080); ``now`` is the
shared clock of every headend process (headend.clock, accelerated in demos). Runs as a
coroutine (``uvicorn.Server(config).serve()``) so ``headend run all`` can host it
beside the other services. The CLI owns the signals; cancellation (SIGTERM via
the CLI) asks uvicorn to exit and waits for its graceful shutdown, so the
lifespan closes the event hub and the pool before ``serve`` re-raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import uvicorn

from api.app import create_app
from api.settings import ApiSettings
from headend.clock import Clock, clock_from_env

logger = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers (headend.cli.run_services has them)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def build_server(settings: ApiSettings, clock: Clock | None = None) -> uvicorn.Server:
    """uvicorn around the app; ``now`` comes from the shared clock (HEADEND_CLOCK_*)."""
    clock = clock or clock_from_env()
    config = uvicorn.Config(
        create_app(settings, clock=clock.now),
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    return _Server(config)


async def run_server(server: uvicorn.Server) -> None:
    """Serve until done; on cancellation shut down gracefully, then re-raise."""
    task = asyncio.create_task(server.serve(), name="api-uvicorn")
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True
        await task
        raise


async def serve() -> None:
    settings = ApiSettings()
    logger.info("api listening on http://%s:%d", settings.api_host, settings.api_port)
    await run_server(build_server(settings))
