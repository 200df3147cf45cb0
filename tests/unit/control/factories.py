"""Facts where every guard passes (DOMAIN.md §7 "guards pass"), to vary one thing at a time."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from control.models import Facts, Notice, Request, Weather
from control.policy import Policy, load_profile

SHANGHAI = ZoneInfo("Asia/Shanghai")


def local(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, tz: str = "Asia/Shanghai") -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=ZoneInfo(tz)).astimezone(UTC)


# Tuesday 24 November 2026, 10:00 in Shanghai: inside the Mon-Thu 09:00-15:00 window.
TUESDAY_10 = local(2026, 11, 24, 10)


def cn_residential() -> Policy:
    return load_profile("cn-residential")


def passing_facts(now: datetime = TUESDAY_10, **changes: Any) -> Facts:
    facts = Facts(
        account_id="A-1",
        meter_id="M-1",
        feeder="F-1",
        timezone="Asia/Shanghai",
        account_class="residential",
        available_credit_minor=-100,
        credit_exhausted=True,
        protections=frozenset(),
        dispute_open=False,
        previous_occupant_debt_only=False,
        installment_plan_good_standing=False,
        notice=Notice("delivered", sent_at=now - timedelta(hours=26), delivered_at=now - timedelta(hours=25)),
        final_reminder=Notice("sent", sent_at=now - timedelta(minutes=31)),
        weather=Weather(forecast_at=now - timedelta(hours=1), min_c=Decimal("5"), max_c=Decimal("20")),
        channels_degraded=False,
        channels_healthy_since=now - timedelta(hours=3),
        last_reading_at=now - timedelta(hours=1),
        relay_state="connected",
        supports_load_limit=False,
        load_limited_since=None,
        kill_switch=False,
        request=Request(),
    )
    return replace(facts, **changes)
