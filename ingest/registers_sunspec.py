"""SunSpec register map (holding registers, FC03), as data, decoded by pure functions.

Discovery walks the model chain from the base address::

    base+0  0x5375 0x6E53            "SunS" marker
    base+2  ID=1   L=66   <66 regs>  common model (Mn, Md, Opt, Vr, SN, DA)
    ...     ID=203 L=105  <105 regs> wye-connect three-phase meter
    ...     ID=123 L=24   <24 regs>  immediate controls (Conn)
    ...     0xFFFF 0                 end marker

Offsets below are from a model's ID register (so +2 is the first body register).

Model 203 (int16 values with int16 scale factors, value = raw x 10^sf):

| offset | point | OBIS | sf at |
|---|---|---|---|
| +3/+4/+5 | AphA/B/C | 1-0:31.7.0 / 51.7.0 / 71.7.0 | +6 A_SF |
| +8/+9/+10 | PhVphA/B/C | 1-0:32.7.0 / 52.7.0 / 72.7.0 | +15 V_SF |
| +16 | Hz | 1-0:14.7.0 | +17 Hz_SF |
| +18 | W (import positive) | 1-0:16.7.0 | +22 W_SF |
| +38 | TotWhExp acc32, high word first | 1-0:2.8.0 | +54 TotWh_SF |
| +46 | TotWhImp acc32, high word first | 1-0:1.8.0 | +54 TotWh_SF |

An unimplemented int16 point or scale factor reads 0x8000 and is skipped.
Model 123: ``Conn`` at +4, 0 = disconnect, 1 = connect (written with FC06).
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ingest.errors import RegisterMapError
from ingest.models import CURRENT_A, EXPORT_WH, FREQUENCY_HZ, IMPORT_WH, POWER_W, VOLTAGE_V

BASE = 40000
MARKER = (0x5375, 0x6E53)
END = 0xFFFF
COMMON, METER_WYE, CONTROLS = 1, 203, 123
MODEL_LENGTHS = {COMMON: 66, METER_WYE: 105, CONTROLS: 24}
NOT_IMPLEMENTED_I16 = 0x8000
MAX_READ = 125  # registers per FC03 request

# (offset from the model ID register, OBIS, scale-factor offset)
M203_INT16: tuple[tuple[int, str, int], ...] = (
    (3, CURRENT_A[0], 6),
    (4, CURRENT_A[1], 6),
    (5, CURRENT_A[2], 6),
    (8, VOLTAGE_V[0], 15),
    (9, VOLTAGE_V[1], 15),
    (10, VOLTAGE_V[2], 15),
    (16, FREQUENCY_HZ, 17),
    (18, POWER_W, 22),
)
M203_ACC32: tuple[tuple[int, str, int], ...] = ((38, EXPORT_WH, 54), (46, IMPORT_WH, 54))
CONN_OFFSET = 4


@dataclass(frozen=True, slots=True)
class ModelLocation:
    model_id: int
    address: int  # absolute address of the ID register
    length: int  # body length (registers after ID and L)

    @property
    def span(self) -> int:
        return self.length + 2


def int16(raw: int) -> int:
    return raw - 0x10000 if raw & 0x8000 else raw


def walk_models(block: Sequence[int], base: int = BASE) -> dict[int, ModelLocation]:
    """Find the models in a register block read from ``base``: {model id: location}.

    The block must start with the SunS marker; the walk stops at the end marker or
    where the block ends (the caller reads further and walks again if needed).
    """
    if len(block) < 2 or (block[0], block[1]) != MARKER:
        raise RegisterMapError(f"no SunS marker at {base}")
    found: dict[int, ModelLocation] = {}
    i = 2
    while i + 1 < len(block):
        model_id, length = block[i], block[i + 1]
        if model_id == END:
            return found
        expected = MODEL_LENGTHS.get(model_id)
        if expected is not None and length != expected:
            raise RegisterMapError(f"model {model_id} at {base + i} has length {length}, expected {expected}")
        found.setdefault(model_id, ModelLocation(model_id, base + i, length))
        i += length + 2
    return found


def model_header(address: int, model_id: int, length: int) -> ModelLocation | None:
    """The model whose ID/L header was read at ``address``; None at the end marker."""
    if model_id == END:
        return None
    expected = MODEL_LENGTHS.get(model_id)
    if expected is not None and length != expected:
        raise RegisterMapError(f"model {model_id} at {address} has length {length}, expected {expected}")
    return ModelLocation(model_id, address, length)


def chain_complete(block: Sequence[int]) -> bool:
    """True when the walk over ``block`` reached the end marker."""
    i = 2
    while i + 1 < len(block):
        if block[i] == END:
            return True
        i += block[i + 1] + 2
    return False


def _scaled(raw: int, sf_raw: int) -> float | None:
    if raw == NOT_IMPLEMENTED_I16 or sf_raw == NOT_IMPLEMENTED_I16:
        return None
    sf = int16(sf_raw)
    return float(int16(raw) * 10**sf) if sf >= 0 else int16(raw) / 10 ** (-sf)


# A poll reads from the ID register through TotWh_SF (+54): every point the map uses, half
# the model (the VA/VAR/PF blocks after it are not needed).
M203_READ = 55


def decode_meter_203(regs: Sequence[int]) -> dict[str, float]:
    """OBIS values of a model 203 block (``regs[0]`` is the ID register; at least M203_READ registers)."""
    if len(regs) < M203_READ or regs[0] != METER_WYE:
        raise RegisterMapError(f"not a model 203 block (id={regs[0] if regs else None}, {len(regs)} regs)")
    out: dict[str, float] = {}
    for offset, obis, sf_at in M203_INT16:
        value = _scaled(regs[offset], regs[sf_at])
        if value is not None:
            out[obis] = value
    sf_raw = regs[54]
    if sf_raw != NOT_IMPLEMENTED_I16:
        sf = int16(sf_raw)
        for offset, obis, _ in M203_ACC32:
            acc = (regs[offset] << 16) | regs[offset + 1]
            out[obis] = float(acc * 10**sf) if sf >= 0 else acc / 10 ** (-sf)
    return out


def decode_conn(regs: Sequence[int]) -> str | None:
    """Relay state from a model 123 block (``regs[0]`` is the ID register)."""
    if len(regs) < CONN_OFFSET + 1 or regs[0] != CONTROLS:
        raise RegisterMapError("not a model 123 block")
    raw = regs[CONN_OFFSET]
    return {0: "disconnected", 1: "connected"}.get(raw)


def conn_write(location: ModelLocation, connect: bool) -> tuple[int, int]:
    """(address, value) of the FC06 write that opens (False) or closes (True) the relay."""
    if location.model_id != CONTROLS:
        raise RegisterMapError("Conn lives in model 123")
    return location.address + CONN_OFFSET, 1 if connect else 0


def decode_string(regs: Sequence[int]) -> str:
    raw = b"".join(r.to_bytes(2, "big") for r in regs)
    return raw.split(b"\x00", 1)[0].decode("ascii", "replace").strip()


def decode_common(regs: Sequence[int]) -> dict[str, str]:
    """Manufacturer, model, version and serial from a model 1 block (``regs[0]`` is the ID)."""
    if len(regs) < MODEL_LENGTHS[COMMON] + 2 or regs[0] != COMMON:
        raise RegisterMapError("not a model 1 block")
    body = regs[2:]
    return {
        "manufacturer": decode_string(body[0:16]),
        "model": decode_string(body[16:32]),
        "version": decode_string(body[40:48]),
        "serial": decode_string(body[48:64]),
    }
