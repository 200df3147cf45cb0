"""Live updates: one LISTEN connection fanned out to Server-Sent Events subscribers.

Channels listened to (see migration 0402 for the two triggers the API adds):

| channel          | payload (NOTIFY)                                   | SSE event       |
|------------------|----------------------------------------------------|-----------------|
| command_events   | JSON: id, meter_id, account_id, action, state, ... | ``command``     |
| balance_events   | JSON: first_id, last_id of ledger entries inserted | ``balance`` (per account) |
| account_events   | the account_events row id (prepaid)                | ``account_event`` |

Each subscriber owns a bounded queue; one that falls more than QUEUE_SIZE events
behind is dropped (its stream ends with an ``overflow`` event and the client
reconnects). The hub reconnects to the database with jittered backoff.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from headend.backoff import delays

logger = logging.getLogger(__name__)

CHANNELS = ("command_events", "balance_events", "account_events")
QUEUE_SIZE = 1000


@dataclass(frozen=True)
class Event:
    """One live update: the SSE ``event`` name and its JSON ``data``."""

    kind: str
    data: dict[str, Any]

    def account_id(self) -> str | None:
        value = self.data.get("account_id")
        return str(value) if value is not None else None

    def meter_id(self) -> str | None:
        value = self.data.get("meter_id")
        return str(value) if value is not None else None


@dataclass(eq=False)
class Subscription:
    queue: asyncio.Queue[Event | None] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    overflowed: bool = False


def sse_frame(seq: int, event: Event) -> str:
    """One Server-Sent Events frame (``id``, ``event``, one ``data`` line, blank line)."""
    data = json.dumps(event.data, separators=(",", ":"), default=str)
    return f"id: {seq}\nevent: {event.kind}\ndata: {data}\n\n"


class EventHub:
    """LISTENs on CHANNELS and hands every event to every live subscription."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._subs: set[Subscription] = set()
        self._closed = False
        self.connected = asyncio.Event()

    def subscribe(self) -> Subscription:
        sub = Subscription()
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def close(self) -> None:
        self._closed = True
        for sub in list(self._subs):
            self._offer(sub, None)
        self._subs.clear()

    def publish(self, event: Event) -> None:
        for sub in list(self._subs):
            self._offer(sub, event)

    def _offer(self, sub: Subscription, event: Event | None) -> None:
        try:
            sub.queue.put_nowait(event)
        except asyncio.QueueFull:
            # Too slow: drop what it has not read and end its stream with an overflow event.
            sub.overflowed = True
            self._subs.discard(sub)
            while not sub.queue.empty():
                sub.queue.get_nowait()
            sub.queue.put_nowait(None)

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with backoff."""
        backoff = delays(0.5, 15.0)
        while not self._closed:
            try:
                conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
            except psycopg.OperationalError as exc:
                logger.warning("event hub cannot connect: %s", exc)
                await asyncio.sleep(next(backoff))
                continue
            try:
                async with conn:
                    for channel in CHANNELS:
                        await conn.execute(f"listen {channel}")
                    backoff = delays(0.5, 15.0)
                    self.connected.set()
                    async with await psycopg.AsyncConnection.connect(self._url, autocommit=True) as reader:
                        async for notify in conn.notifies():
                            if not self._subs:  # nobody listening: do not load rows for nobody
                                continue
                            for event in await _events(reader, notify.channel, notify.payload):
                                self.publish(event)
            except psycopg.OperationalError as exc:
                self.connected.clear()
                logger.warning("event hub lost the database: %s", exc)
                await asyncio.sleep(next(backoff))


async def _events(reader: psycopg.AsyncConnection[Any], channel: str, payload: str) -> list[Event]:
    """Turn one NOTIFY into the events subscribers see (loading rows where the payload is an id)."""
    try:
        if channel == "command_events":
            return [Event("command", json.loads(payload))]
        if channel == "balance_events":
            span = json.loads(payload)
            async with reader.cursor(row_factory=dict_row) as cur:
                await cur.execute(
                    "select distinct on (account_id) account_id, id as entry_id, kind,"
                    " balance_after_minor as balance_minor, posted_at"
                    " from ledger_entries where id between %s and %s order by account_id, id desc",
                    (int(span["first_id"]), int(span["last_id"])),
                )
                return [Event("balance", dict(r)) for r in await cur.fetchall()]
        if channel == "account_events":
            async with reader.cursor(row_factory=dict_row) as cur:
                await cur.execute(
                    "select id, account_id, kind, at, detail from account_events where id = %s",
                    (int(payload),),
                )
                row = await cur.fetchone()
            return [Event("account_event", dict(row))] if row else []
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning("ignoring malformed %s notification %r: %s", channel, payload[:200], exc)
    return []


async def frames(
    hub: EventHub,
    sub: Subscription,
    *,
    account_id: str | None,
    meter_id: str | None,
    command_id: int | None = None,
    keepalive_s: float,
    max_seconds: float | None,
) -> AsyncIterator[str]:
    """The SSE byte stream of one subscriber, filtered, with keep-alive comments."""
    seq = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_seconds if max_seconds else None
    try:
        yield ": connected\n\n"
        while True:
            wait = keepalive_s
            if deadline is not None:
                wait = min(wait, deadline - loop.time())
                if wait <= 0:
                    return
            try:
                event = await asyncio.wait_for(sub.queue.get(), timeout=wait)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if event is None:
                if sub.overflowed:
                    yield sse_frame(seq + 1, Event("overflow", {"detail": "client too slow; reconnect"}))
                return
            if account_id is not None and event.account_id() != account_id:
                continue
            if meter_id is not None and event.meter_id() != meter_id:
                continue
            if command_id is not None and (event.kind != "command" or event.data.get("id") != command_id):
                continue
            seq += 1
            yield sse_frame(seq, event)
    finally:
        hub.unsubscribe(sub)
