"""Prometheus text exposition (format 0.0.4), written by hand: no client library needed.

``render`` is pure (families in, text out); ``collect`` runs the SQL. Every figure is
computed from the database at scrape time, so any API replica reports the same
values and nothing is lost on restart.

| family                                | type    | labels          | source |
|---------------------------------------|---------|-----------------|--------|
| headend_readings_ingested_total       | counter |                 | readings rows (approximate above 1e6) |
| headend_readings_recent               | gauge   |                 | readings with ts in the last 15 min |
| headend_ingest_lag_seconds            | gauge   | quantile        | received_at - ts, last 15 min (0.5, 0.99) |
| headend_newest_reading_age_seconds    | gauge   |                 | now - max(received_at), last 15 min |
| headend_billing_queue_depth           | gauge   |                 | billing_queue rows waiting |
| headend_billing_queue_oldest_seconds  | gauge   |                 | age of the oldest waiting row (debit lag) |
| headend_ledger_entries_total          | counter | kind            | ledger_entries by kind |
| headend_ledger_amount_minor_total     | counter | kind            | sum of amount_minor by kind (debits negative) |
| headend_commands                      | gauge   | state, action   | commands by state |
| headend_guard_refusals_total          | counter | action, reason  | audit_log rows carrying detail.reasons |
| headend_meters                        | gauge   | comms_state, relay_state | meters |
| headend_meters_billing_hold           | gauge   |                 | meters with a billing hold |
| headend_quarantine_items              | gauge   | replayed        | quarantine rows |
| headend_notices                       | gauge   | status          | notices by status |
| headend_scrape_duration_seconds       | gauge   |                 | time spent collecting |
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = Mapping[str, str]


@dataclass
class Family:
    name: str
    kind: str  # "counter" | "gauge"
    help: str
    samples: list[tuple[Labels, float]] = field(default_factory=list)

    def add(self, value: float | int | None, **labels: str) -> Family:
        self.samples.append((labels, float(value) if value is not None else math.nan))
        return self


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def render(families: Iterable[Family]) -> str:
    lines: list[str] = []
    for fam in families:
        lines.append(f"# HELP {fam.name} {_escape_help(fam.help)}")
        lines.append(f"# TYPE {fam.name} {fam.kind}")
        for labels, value in fam.samples:
            label_text = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in sorted(labels.items()))
            lines.append(
                f"{fam.name}{{{label_text}}} {_number(value)}" if label_text else f"{fam.name} {_number(value)}"
            )
    return "\n".join(lines) + "\n"


async def _rows(conn: psycopg.AsyncConnection[Any], query: str) -> Sequence[tuple[Any, ...]]:
    cur = await conn.execute(query)
    return await cur.fetchall()


async def collect(conn: psycopg.AsyncConnection[Any]) -> list[Family]:
    started = time.perf_counter()
    fams: list[Family] = []

    (total,) = (await _rows(conn, "select approximate_row_count('readings')"))[0]
    if total < 1_000_000:  # the estimate is poor (or 0 before ANALYZE) on small tables: count exactly
        (total,) = (await _rows(conn, "select count(*) from readings"))[0]
    fams.append(Family("headend_readings_ingested_total", "counter", "Readings stored").add(total))
    (recent, p50, p99, newest_age) = (
        await _rows(
            conn,
            "select count(*),"
            " percentile_cont(0.5) within group (order by extract(epoch from received_at - ts)),"
            " percentile_cont(0.99) within group (order by extract(epoch from received_at - ts)),"
            " extract(epoch from now() - max(received_at))"
            " from readings where ts > now() - interval '15 minutes'",
        )
    )[0]
    fams.append(Family("headend_readings_recent", "gauge", "Readings with ts in the last 15 minutes").add(recent))
    lag = Family("headend_ingest_lag_seconds", "gauge", "received_at - ts of readings of the last 15 minutes")
    fams.append(lag.add(p50, quantile="0.5").add(p99, quantile="0.99"))
    fams.append(
        Family(
            "headend_newest_reading_age_seconds", "gauge", "Seconds since the newest reading (last 15 min) arrived"
        ).add(newest_age)
    )
    (depth, oldest) = (
        await _rows(conn, "select count(*), extract(epoch from now() - min(enqueued_at)) from billing_queue")
    )[0]
    fams.append(Family("headend_billing_queue_depth", "gauge", "Readings waiting to be billed").add(depth))
    fams.append(
        Family("headend_billing_queue_oldest_seconds", "gauge", "Age of the oldest reading waiting to be billed").add(
            oldest or 0
        )
    )
    entries = Family("headend_ledger_entries_total", "counter", "Ledger entries by kind")
    amounts = Family("headend_ledger_amount_minor_total", "counter", "Sum of ledger amounts (minor units) by kind")
    for kind, n, amount in await _rows(
        conn, "select kind, count(*), coalesce(sum(amount_minor), 0) from ledger_entries group by kind order by kind"
    ):
        entries.add(n, kind=kind)
        amounts.add(amount, kind=kind)
    fams += [entries, amounts]
    cmds = Family("headend_commands", "gauge", "Commands by state and action")
    for state, action, n in await _rows(
        conn, "select state, action, count(*) from commands group by state, action order by state, action"
    ):
        cmds.add(n, state=state, action=action)
    fams.append(cmds)
    refusals = Family("headend_guard_refusals_total", "counter", "Guard refusals (audit rows with reasons) by reason")
    for action, reason, n in await _rows(
        conn,
        "select a.action, r.reason, count(*) from audit_log a"
        " cross join lateral jsonb_array_elements_text(case when jsonb_typeof(a.detail->'reasons') = 'array'"
        " then a.detail->'reasons' else '[]'::jsonb end) as r(reason)"
        " group by a.action, r.reason order by a.action, r.reason",
    ):
        refusals.add(n, action=action, reason=reason)
    fams.append(refusals)
    meters = Family("headend_meters", "gauge", "Meters by comms and relay state")
    for comms, relay, n in await _rows(
        conn, "select comms_state, relay_state, count(*) from meters group by 1, 2 order by 1, 2"
    ):
        meters.add(n, comms_state=comms, relay_state=relay)
    fams.append(meters)
    (held,) = (await _rows(conn, "select count(*) from meters where billing_hold is not null"))[0]
    fams.append(Family("headend_meters_billing_hold", "gauge", "Meters whose billing is on hold").add(held))
    quarantine = Family("headend_quarantine_items", "gauge", "Quarantined inputs by replay state")
    for replayed, n in await _rows(
        conn, "select replayed_at is not null, count(*) from quarantine group by 1 order by 1"
    ):
        quarantine.add(n, replayed="true" if replayed else "false")
    fams.append(quarantine)
    notices = Family("headend_notices", "gauge", "Customer notices by status")
    for status, n in await _rows(conn, "select status, count(*) from notices group by 1 order by 1"):
        notices.add(n, status=status)
    fams.append(notices)
    fams.append(
        Family("headend_scrape_duration_seconds", "gauge", "Seconds spent collecting these metrics").add(
            round(time.perf_counter() - started, 6)
        )
    )
    return fams
