"""Eastron SDM630 / SDM120 register map (input registers, FC04), as data.

Every value is an IEEE 754 float32, high word first. One bulk read of
``BLOCK_START .. BLOCK_START + BLOCK_COUNT`` covers every point; addresses a
model does not implement answer 0 (not an exception), so SDM120 (single phase)
decodes with the same map, its L2/L3 points reading 0.

| address | point | OBIS | unit |
|---|---|---|---|
| 0x0000 / 0x0002 / 0x0004 | L1/L2/L3 voltage | 1-0:32.7.0 / 52.7.0 / 72.7.0 | V |
| 0x0006 / 0x0008 / 0x000A | L1/L2/L3 current | 1-0:31.7.0 / 51.7.0 / 71.7.0 | A |
| 0x0034 | total system power | 1-0:16.7.0 | W |
| 0x0046 | frequency | 1-0:14.7.0 | Hz |
| 0x0048 | import active energy | 1-0:1.8.0 | kWh -> Wh |
| 0x004A | export active energy | 1-0:2.8.0 | kWh -> Wh |

No relay register. Pure: no I/O.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

from ingest.errors import RegisterMapError
from ingest.models import CURRENT_A, EXPORT_WH, FREQUENCY_HZ, IMPORT_WH, POWER_W, VOLTAGE_V

BLOCK_START = 0x0000
BLOCK_COUNT = 0x004C  # through 0x004B, the export energy's low word

# (address, OBIS, multiplier to headend units)
POINTS: tuple[tuple[int, str, float], ...] = (
    (0x0000, VOLTAGE_V[0], 1.0),
    (0x0002, VOLTAGE_V[1], 1.0),
    (0x0004, VOLTAGE_V[2], 1.0),
    (0x0006, CURRENT_A[0], 1.0),
    (0x0008, CURRENT_A[1], 1.0),
    (0x000A, CURRENT_A[2], 1.0),
    (0x0034, POWER_W, 1.0),
    (0x0046, FREQUENCY_HZ, 1.0),
    (0x0048, IMPORT_WH, 1000.0),
    (0x004A, EXPORT_WH, 1000.0),
)


def float32(high: int, low: int) -> float:
    value: float = struct.unpack(">f", struct.pack(">HH", high, low))[0]
    return value


def encode_float32(value: float) -> tuple[int, int]:
    """The two registers (high word first) that hold ``value`` (for simulators and tests)."""
    high, low = struct.unpack(">HH", struct.pack(">f", value))
    return int(high), int(low)


def decode_sdm(regs: Sequence[int], start: int = BLOCK_START) -> dict[str, float]:
    """OBIS values from a bulk read starting at ``start``. Energy is rounded to 0.1 Wh."""
    if start > POINTS[0][0] or start + len(regs) < BLOCK_START + BLOCK_COUNT:
        raise RegisterMapError(f"block {start:#06x}+{len(regs)} does not cover the SDM map")
    out: dict[str, float] = {}
    for address, obis, mult in POINTS:
        i = address - start
        value = float32(regs[i], regs[i + 1])
        if not math.isfinite(value):
            raise RegisterMapError(f"{obis} at {address:#06x} is not finite")
        out[obis] = round(value * mult, 1) if mult != 1.0 else value
    return out
