"""``headend quarantine list | replay``: look at what ingest did not accept, and try it again.

Replay decodes each quarantined MQTT message again with the current meter directory
(e.g. after the unknown meter was registered) and writes it through the same batch
writer (duplicates are still dropped, billing still exactly once). Every replayed row
gets ``replayed_at`` and ``replay_result`` (``accepted``, ``partial: <reason>`` or
``rejected: <reason>``); nothing is deleted and a replay never adds quarantine rows.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import psycopg

from headend.clock import clock_from_env
from ingest.dispatch import Prefixes, decode_message
from ingest.settings import IngestSettings


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("quarantine", help="list or replay what ingest quarantined")
    sub = p.add_subparsers(dest="quarantine_command", required=True)
    ls = sub.add_parser("list", help="newest first")
    ls.add_argument("--limit", type=int, default=20)
    ls.add_argument("--reason", default="", help="only reasons starting with this")
    ls.set_defaults(func=_cmd_list)
    rp = sub.add_parser("replay", help="decode and write quarantined MQTT messages again")
    rp.add_argument("--reason", default="", help="only reasons starting with this (e.g. unknown_meter)")
    rp.add_argument("--id", type=int, action="append", dest="ids", help="only these quarantine ids")
    rp.add_argument("--limit", type=int, default=10_000)
    rp.add_argument("--again", action="store_true", help="also rows already replayed")
    rp.set_defaults(func=_cmd_replay)


def _cmd_list(args: argparse.Namespace) -> int:
    settings = IngestSettings()
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "select id, received_at, source, topic, meter_id, reason, replay_result, length(payload) from quarantine"
            " where reason like %s || '%%' order by id desc limit %s",
            (args.reason, args.limit),
        ).fetchall()
    for r in rows:
        replay = f" [{r[6]}]" if r[6] else ""
        print(f"{r[0]:>8} {r[1]:%Y-%m-%d %H:%M:%S} {r[2]:<6} {r[3] or '-'} meter={r[4] or '-'} {r[7]}B: {r[5]}{replay}")
    return 0


async def replay(
    settings: IngestSettings,
    *,
    reason: str = "",
    ids: list[int] | None = None,
    limit: int = 10_000,
    again: bool = False,
) -> dict[str, int]:
    """Replay quarantined MQTT messages; returns counts by outcome."""
    from ingest.service import make_pool, make_writer

    pool = make_pool(settings)
    await pool.open(wait=True, timeout=30)
    try:
        writer = make_writer(pool, settings)
        await writer.refresh_directory(force=True)
        async with pool.connection() as conn:
            cur = await conn.execute(
                "select id, topic, payload from quarantine where source = 'mqtt' and topic is not null"
                " and reason like %s || '%%' and (%s or replayed_at is null)"
                " and (%s::bigint[] is null or id = any(%s::bigint[])) order by id limit %s",
                (reason, again, ids, ids, limit),
            )
            rows = await cur.fetchall()
        prefixes = Prefixes(settings.mqtt_prefix, settings.mqtt_tasmota_prefix, settings.mqtt_shelly_prefix)
        items = [decode_message(r[1], bytes(r[2]), writer.directory, prefixes) for r in rows]
        result = await writer.write(items, clock_from_env().now(), quarantine=False) if items else None
        rejected = dict(result.rejected) if result else {}
        outcomes: list[tuple[int, str]] = []
        for index, (qid, _, _) in enumerate(rows):
            why = rejected.get(index)
            decoded = items[index].decoded
            if why is None:
                outcomes.append((qid, "accepted"))
            elif decoded is not None and any(m in writer.directory.by_id for m in decoded.meter_ids):
                outcomes.append((qid, f"partial: {why}"))
            else:
                outcomes.append((qid, f"rejected: {why}"))
        async with pool.connection() as conn, conn.cursor() as cur:
            await cur.executemany(
                "update quarantine set replayed_at = now(), replay_result = %s where id = %s",
                [(outcome, qid) for qid, outcome in outcomes],
            )
        counts: dict[str, int] = {}
        for _, outcome in outcomes:
            key = outcome.split(":")[0]
            counts[key] = counts.get(key, 0) + 1
        return counts
    finally:
        await pool.close()


def _cmd_replay(args: argparse.Namespace) -> int:
    counts = asyncio.run(replay(IngestSettings(), reason=args.reason, ids=args.ids, limit=args.limit, again=args.again))
    print(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "nothing to replay")
    return 0
