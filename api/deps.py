"""FastAPI dependencies shared by the routes: a pooled connection, the clock, the caller."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Annotated, Any

import psycopg
from fastapi import Depends, Request
from psycopg_pool import AsyncConnectionPool

from api.auth import Principal


async def _conn(request: Request) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    pool: AsyncConnectionPool[Any] = request.app.state.pool
    async with pool.connection() as conn:
        yield conn


def _now(request: Request) -> datetime:
    clock: Callable[[], datetime] = request.app.state.clock
    return clock()


Conn = Annotated[psycopg.AsyncConnection[Any], Depends(_conn)]
Now = Annotated[datetime, Depends(_now)]
Caller = Principal
