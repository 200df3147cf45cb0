"""Quarantine replay: re-submit a quarantined message's raw payload through ingest.

After a fix (a meter registered, a device mapped, a decoder corrected) an operator
replays an item. The payload goes through ingest's own decoder
(``ingest.dispatch.decode_message``) with a freshly loaded meter directory and, if
it now decodes and names only known meters, through ingest's ``BatchWriter`` —
the same transaction, deduplication and billing hand-off as live traffic. An item
that still does not decode is not written again: the outcome is recorded on the
quarantine row (``replayed_at``, ``replay_result``) and returned.
Only MQTT items can be replayed (Modbus items are register snapshots of a poll).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool

from api.errors import Unprocessable
from ingest.dispatch import Prefixes, decode_message
from ingest.store import BatchWriter


@dataclass(frozen=True)
class ReplayOutcome:
    accepted: bool
    result: str


async def replay(
    pool: AsyncConnectionPool[Any], *, source: str, topic: str | None, payload: bytes, prefixes: Prefixes, now: datetime
) -> ReplayOutcome:
    if source != "mqtt" or topic is None:
        raise Unprocessable(f"only MQTT items can be replayed (this one is from {source})", code="not-replayable")
    writer = BatchWriter(pool)
    await writer.refresh_directory(force=True)
    item = decode_message(topic, payload, writer.directory, prefixes)
    if item.decoded is None:
        return ReplayOutcome(False, f"still rejected: {item.reason}")
    unknown = sorted(item.decoded.meter_ids - writer.directory.by_id.keys())
    if unknown:
        return ReplayOutcome(False, "still rejected: unknown_meter: " + ", ".join(unknown[:5]))
    written = await writer.write([item], now)
    return ReplayOutcome(
        written.quarantined == 0,
        f"accepted: {written.readings_new} new readings ({written.duplicates} duplicates),"
        f" {written.events_new} events, {written.billing_rows} billing rows"
        + (f", {written.quarantined} part(s) quarantined again" if written.quarantined else ""),
    )
