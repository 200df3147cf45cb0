"""Settings shared by every headend service.

Each service builds one settings object (prefix ``HEADEND_``) in its ``__main__``
or app factory and passes it down; nothing reads the environment at import time.
Service packages subclass :class:`CommonSettings` with their own fields.
"""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    """Connection settings every service needs."""

    model_config = SettingsConfigDict(env_prefix="HEADEND_", extra="ignore")

    database_url: str = "postgresql://postgres@127.0.0.1:5432/headend"
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    # Every headend topic starts with this prefix (see docs/interfaces.md).
    mqtt_prefix: str = "headend"
    log_level: str = "INFO"
