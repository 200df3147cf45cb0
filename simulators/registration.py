"""Register a simulated fleet in headend's database (``headend simulate --register``).

For every meter: its service point (``SP-<meter id>``, feeder, time zone, account class) and
the meter (protocol, model = wire format, ``mqtt_topic`` = Tasmota topic / Shelly id, Modbus
host/port/unit/map, interval, phases, rated current, register maximum, load limiting). With a
scenario ``accounts`` section, also a flat tariff and one open prepaid account per meter
(``A-<meter id>``) with the opening balance. Idempotent (``headend.registry`` upserts), in one
transaction, pipelined so that 100k meters take seconds rather than minutes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg

from headend import registry
from simulators.models import MeterSpec, Protocol, WireFormat
from simulators.scenario import Scenario


def register_fleet(
    conn: psycopg.Connection[Any],
    scenario: Scenario,
    specs: list[MeterSpec],
    modbus_port: Callable[[MeterSpec], int],
    *,
    effective_from: datetime,
) -> int:
    """Upsert the fleet; returns the number of meters registered."""
    acc = scenario.accounts
    with conn.transaction(), conn.pipeline():
        if acc is not None:
            definition = {"kind": "flat", "price_per_kwh": acc.price_per_kwh, "currency": acc.currency}
            registry.ensure_tariff(
                conn,
                acc.tariff_id,
                f"flat {acc.price_per_kwh} {acc.currency}/kWh",
                currency=acc.currency,
                effective_from=effective_from,
                definition=definition,
            )
        for s in specs:
            sp = s.service_point_id or f"SP-{s.meter_id}"
            registry.ensure_service_point(
                conn,
                sp,
                feeder=s.feeder,
                timezone=scenario.timezone,
                country=scenario.country,
                account_class=s.account_class,
            )
            fields: dict[str, Any] = {
                "poll_interval_s": s.interval_s,
                "rated_current_a": s.rated_current_a,
                "nominal_voltage_v": s.nominal_voltage_v,
                "phases": s.phases,
                "register_max_wh": int(s.register_max_wh),
                "supports_load_limit": s.supports_load_limit and s.has_relay,
            }
            if s.wire in (WireFormat.TASMOTA, WireFormat.SHELLY):
                fields["mqtt_topic"] = s.topic_id
            if s.wire.protocol is Protocol.MODBUS:
                fields.update(
                    modbus_host=scenario.modbus.advertise_host or scenario.modbus.host,
                    modbus_port=modbus_port(s),
                    modbus_unit=s.modbus_unit,
                    modbus_map=s.wire.value,
                )
            registry.ensure_meter(
                conn, s.meter_id, service_point_id=sp, protocol=s.wire.protocol.value, model=s.wire.value, **fields
            )
            if acc is not None:
                registry.open_account(
                    conn,
                    f"A-{s.meter_id}",
                    service_point_id=sp,
                    tariff_id=acc.tariff_id,
                    balance_minor=acc.balance_minor,
                    currency=acc.currency,
                )
    return len(specs)
