"""Settings of the HTTP API service (prefix ``HEADEND_``).

Built once by :func:`api.service.serve` (or a test) and passed to
:func:`api.app.create_app`; nothing here reads the environment at import time.
"""

from __future__ import annotations

from headend.settings import CommonSettings


class ApiSettings(CommonSettings):
    """HTTP listener, pool size and the limits the API enforces."""

    api_host: str = "127.0.0.1"
    api_port: int = 8080
    api_pool_min: int = 1
    api_pool_max: int = 8
    # Seconds an SSE connection waits between keep-alive comments.
    api_sse_keepalive_s: float = 15.0
    # Seconds /health waits for the database and for the broker's CONNACK.
    api_health_timeout_s: float = 2.0
    # Idempotency records older than this are forgotten (and the key may be reused).
    api_idempotency_ttl_h: int = 48
    # Device topic prefixes, the same variables ingest reads (quarantine replay decodes like ingest).
    mqtt_tasmota_prefix: str = ""
    mqtt_shelly_prefix: str = ""
