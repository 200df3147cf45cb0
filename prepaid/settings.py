"""Settings of the prepaid service (env prefix HEADEND_)."""

from __future__ import annotations

from headend.settings import CommonSettings


class PrepaidSettings(CommonSettings):
    """Built once in ``service.serve`` and passed down."""

    prepaid_batch_size: int = 2000  # billing_queue rows per transaction
    prepaid_workers: int = 2  # billing tasks (overlap database waits with pricing)
    prepaid_poll_s: float = 1.0  # poll even without NOTIFY (missed notifications, holds cleared)
    prepaid_interval_s: int = 900  # fixed billing interval
    prepaid_daily_every_s: float = 60.0  # standing charges, daily use, friendly-hours tick, plans
    prepaid_notices_every_s: float = 2.0
    prepaid_notice_sender: str = "log"  # "log" (development) or "webhook"
    prepaid_webhook_url: str | None = None
    prepaid_webhook_timeout_s: float = 5.0
    prepaid_notice_max_attempts: int = 8
    prepaid_pool_size: int = 4
