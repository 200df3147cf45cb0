"""FastAPI dependencies shared by the routes: a pooled connection and the clock.

FastAPI resolves a dependency once per request, so the auth check and the route share
the same pooled connection: a request never holds two (which could starve the pool).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Annotated, Any

import psycopg
from fastapi import Depends, Request
from psycopg_pool import AsyncConnectionPool


async def _conn(request: Request) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    pool: AsyncConnectionPool[Any] = request.app.state.pool
    async with pool.connection() as conn:
        yield conn


def _now(request: Request) -> datetime:
    clock: Callable[[], datetime] = request.app.state.clock
    return clock()


Conn = Annotated[psycopg.AsyncConnection[Any], Depends(_conn)]
Now = Annotated[datetime, Depends(_now)]
