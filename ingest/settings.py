"""Settings of the ingest services (environment variables ``HEADEND_...``, see docs/ingest.md)."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from headend.settings import CommonSettings


class IngestSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="HEADEND_", extra="ignore", populate_by_name=True)

    # MQTT topics and session
    mqtt_tasmota_prefix: str = ""
    mqtt_shelly_prefix: str = ""
    mqtt_subscribe_devices: bool = True  # subscribe to the Tasmota / Shelly topic filters too
    # names the persistent session: stable per process, unique per collector
    mqtt_client_id: str = Field(
        default="headend-ingest",
        validation_alias=AliasChoices("HEADEND_MQTT_CLIENT_ID", "HEADEND_INGEST_CLIENT_ID"),
    )
    mqtt_share_group: str = ""  # non-empty: subscribe as $share/<group>/<filter>
    mqtt_session_expiry_s: int = 86_400
    mqtt_receive_maximum: int = 10_000  # QoS 1 messages in flight (unacknowledged) at once
    mqtt_keepalive_s: int = 30
    mqtt_backoff_base_s: float = 0.5
    mqtt_backoff_cap_s: float = 30.0
    # pipeline
    ingest_queue_size: int = 50_000
    ingest_batch_size: int = 10_000  # messages per batch (a batch is one transaction)
    ingest_batch_linger_s: float = 0.05  # wait at most this long to fill a batch
    ingest_pool_size: int = 4
    # validation
    ingest_future_tolerance_s: float = 300.0
    ingest_gap_factor: float = 1.5  # a step longer than this x the meter's interval is a gap
    ingest_stale_factor: float = 3.0  # MQTT meter silent for this x its interval: comms_lost
    ingest_reread: bool = True  # publish read_now for gaps
    ingest_health_interval_s: float = 30.0
    # Modbus poller
    modbus_concurrency: int = 64
    modbus_timeout_s: float = 2.0
    modbus_backoff_cap_s: float = 300.0
    modbus_read_relay: bool = True
    modbus_reload_s: float = 60.0  # re-read the meters table this often
    modbus_poll_interval_s: float | None = None  # set: overrides every meter's poll_interval_s
    modbus_shard: str = ""  # "k/n": this poller owns the meters whose id hashes to k of n (scale-out)
