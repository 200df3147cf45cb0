"""Settings of the control service (prefix ``HEADEND_CONTROL_`` for its own fields)."""

from __future__ import annotations

import os
import socket

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from headend.settings import CommonSettings


def _worker_id() -> str:
    return f"control-{socket.gethostname()}-{os.getpid()}"


class ControlSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="HEADEND_", extra="ignore")

    control_worker_id: str = Field(default_factory=_worker_id)
    control_poll_s: float = 5.0  # LISTEN wakes us at once; this is the safety net
    control_timers_s: float = 60.0
    control_ack_timeout_s: float = 10.0
    control_readback_timeout_s: float = 10.0
    control_lease_s: float = 60.0
    control_recheck_s: float = 900.0
    control_batch: int = 20
    control_pool_max: int = 8
