"""Notices outbox: pluggable senders and the delivery worker.

prepaid creates ``low_credit`` and ``topup_too_small`` notices; control creates
``pending_disconnection``, ``final_reminder`` and ``reconnected``. This worker
sends every pending notice, whoever created it:

- claim due rows (status pending, next_attempt_at <= now) FOR UPDATE SKIP LOCKED;
- send with the configured sender; success -> status ``sent``, ``sent_at``, and
  ``delivered_at`` when the sender confirms delivery (the log sender does; a
  webhook's receiver confirms later through the api's delivery-receipt endpoint);
- failure -> attempts + 1, ``last_error``, next attempt after a capped exponential
  delay; after ``max_attempts`` the status is ``failed`` (control treats an
  unconfirmed notice as unknown: no disconnect).

Senders:
| sender  | how                                                    | delivered_at             |
|---------|--------------------------------------------------------|--------------------------|
| log     | logs the notice (development)                          | at once                  |
| webhook | POST {id, account_id, kind, body, created_at}; 2xx ok  | reply {"delivered": true}|
|         |                                                        | or a receipt via the api |
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import httpx
from psycopg import AsyncConnection

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Notice:
    id: int
    account_id: str
    kind: str
    body: dict[str, Any]
    created_at: datetime
    attempts: int


@dataclass(frozen=True)
class SendOutcome:
    ok: bool
    delivered: bool = False
    channel: str = "log"
    error: str | None = None


class Sender(Protocol):
    async def send(self, notice: Notice) -> SendOutcome: ...


class LogSender:
    """Development sender: logs and counts the notice as delivered."""

    async def send(self, notice: Notice) -> SendOutcome:
        logger.info("notice %s to %s: %s %s", notice.id, notice.account_id, notice.kind, notice.body)
        return SendOutcome(ok=True, delivered=True, channel="log")


class WebhookSender:
    """POSTs the notice as JSON; the HTTP client is passed in (timeouts set on it)."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self._client = client
        self._url = url

    async def send(self, notice: Notice) -> SendOutcome:
        payload = {
            "id": notice.id,
            "account_id": notice.account_id,
            "kind": notice.kind,
            "body": notice.body,
            "created_at": notice.created_at.isoformat(),
        }
        try:
            resp = await self._client.post(self._url, json=payload)
        except httpx.HTTPError as exc:
            return SendOutcome(ok=False, channel="webhook", error=f"{type(exc).__name__}: {exc}")
        if resp.status_code // 100 != 2:
            return SendOutcome(ok=False, channel="webhook", error=f"HTTP {resp.status_code}")
        delivered = False
        try:
            data = resp.json()
            delivered = isinstance(data, dict) and data.get("delivered") is True
        except ValueError:
            pass
        return SendOutcome(ok=True, delivered=delivered, channel="webhook")


def retry_delay(attempts: int, base_s: float = 30.0, cap_s: float = 3600.0) -> timedelta:
    return timedelta(seconds=min(cap_s, base_s * 2 ** max(0, attempts - 1)))


async def deliver_due(
    conn: AsyncConnection[Any], sender: Sender, now: datetime, *, limit: int = 50, max_attempts: int = 8
) -> int:
    """Send the due notices (one transaction); return how many were attempted."""
    async with conn.transaction():
        cur = await conn.execute(
            "select id, account_id, kind, body, created_at, attempts from notices"
            " where status = 'pending' and next_attempt_at <= %s order by next_attempt_at, id"
            " limit %s for update skip locked",
            (now, limit),
        )
        due = [Notice(int(r[0]), r[1], r[2], r[3], r[4], int(r[5])) for r in await cur.fetchall()]
        for n in due:
            out = await sender.send(n)
            attempts = n.attempts + 1
            if out.ok:
                await conn.execute(
                    "update notices set status = 'sent', sent_at = %s, attempts = %s, channel = %s,"
                    " delivered_at = case when %s then coalesce(delivered_at, %s) else delivered_at end,"
                    " last_error = null where id = %s",
                    (now, attempts, out.channel, out.delivered, now, n.id),
                )
            else:
                failed = attempts >= max_attempts
                logger.warning("notice %s: %s (attempt %s, failed=%s)", n.id, out.error, attempts, failed)
                await conn.execute(
                    "update notices set attempts = %s, last_error = %s, channel = %s,"
                    " status = case when %s then 'failed' else status end, next_attempt_at = %s where id = %s",
                    (attempts, out.error, out.channel, failed, now + retry_delay(attempts), n.id),
                )
        return len(due)
