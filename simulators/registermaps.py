"""Modbus register maps the simulated meters serve: SunSpec (model 1 + 203 + 123) and Eastron SDM630.

SunSpec, holding registers (FC03; writes FC06/FC16), base 40000, big-endian words::

    40000  0x5375 0x6E53        "SunS"
    40002  model 1   (ID 1,   L 66)   Mn "headend", Md "SIM-203", Vr, SN = meter id, DA = unit id
    40070  model 203 (ID 203, L 105)  wye meter: +2 A, +6 A_SF, +7 PhV, +15 V_SF, +16 Hz, +17 Hz_SF,
                                      +18 W, +22 W_SF, +23 VA, +28 VAR, +33 PF, +38 TotWhExp (acc32),
                                      +46 TotWhImp (acc32), +54 TotWh_SF, +105 Evt (bitfield32)
    40177  model 123 (ID 123, L 24)   immediate controls: +4 Conn (0 = disconnect, 1 = connect)
    40203  0xFFFF 0x0000           end marker

Unimplemented points carry the SunSpec "not implemented" values (int16 0x8000, uint16/enum16
0xFFFF, acc32 0, string 0). Only model 123's read-write points (+2..+22) accept writes.

Eastron SDM630, input registers (FC04), float32 high word first; every address 0x0000-0x01FF
answers (unused ones 0.0), so bulk reads across gaps work::

    0x0000/02/04 V L1-L3      0x0006/08/0A A L1-L3     0x000C/0E/10 W L1-L3
    0x0034 total W            0x0038 total VA          0x003C total VAr      0x003E total PF
    0x0046 Hz                 0x0048 import kWh        0x004A export kWh     0x0156 total kWh
    0x015A/5C/5E import kWh L1-L3   0x0160/62/64 export kWh L1-L3   0x0166/68/6A total kWh L1-L3
Holding registers (FC03) 0x0000-0x01FF: 0x0000 demand time 0, 0x0002 demand period 60,
0x0006 system voltage 230, 0x0008 system current 100, 0x000A system type (3.0 = 3P4W,
1.0 = 1P2W), 0x000C pulse width 100, 0x0012 parity 0, 0x0014 meter id (= unit id),
0x001C baud (2.0 = 9600); the rest 0. (0xF910 and 0xFC00, divisor and serial, are not
served.) No relay register.
Pure.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SUNSPEC_BASE = 40000
M1_AT = SUNSPEC_BASE + 2
M203_AT = M1_AT + 68
M123_AT = M203_AT + 107
END_AT = M123_AT + 26
SUNSPEC_LEN = END_AT + 2 - SUNSPEC_BASE
CONN_ADDR = M123_AT + 4
M123_WRITABLE = range(M123_AT + 2, M123_AT + 23)

SDM_LEN = 0x0200

NI16 = 0x8000  # int16 / sunssf / pad not implemented
NU16 = 0xFFFF  # uint16 / enum16 not implemented


@dataclass(frozen=True, slots=True)
class MeterReading:
    """What a Modbus meter shows: registers in Wh, signed power in W (import positive)."""

    import_wh: float
    export_wh: float
    power_w: float
    voltage_v: float
    phases: int
    frequency_hz: float
    connected: bool  # relay closed


def _s16(v: float) -> int:
    iv = max(-32767, min(32767, round(v)))
    return iv & 0xFFFF


def _u32(v: float) -> tuple[int, int]:
    iv = max(0, min(0xFFFFFFFF, round(v)))
    return (iv >> 16) & 0xFFFF, iv & 0xFFFF


def _string(text: str, regs: int) -> list[int]:
    raw = text.encode("ascii", "replace")[: regs * 2].ljust(regs * 2, b"\0")
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def _sf16(v: int) -> int:
    return v & 0xFFFF


def sunspec_registers(r: MeterReading, meter_id: str, unit: int, w_sf: int = 0) -> list[int]:
    """All SunSpec registers from 40000 (``SUNSPEC_LEN`` values)."""
    regs: list[int] = [0x5375, 0x6E53]
    # model 1: common
    regs += [1, 66]
    regs += _string("headend", 16) + _string("SIM-203", 16) + _string("", 8) + _string("1.0", 8)
    regs += [*_string(meter_id, 16), unit, NI16]
    # model 203: wye-connect three phase meter
    amps = abs(r.power_w) / (r.voltage_v * r.phases) if r.voltage_v > 0 else 0.0
    per_phase_w = r.power_w / r.phases
    three = r.phases == 3
    ph = (lambda v: v) if three else (lambda _v: NI16)  # phases B/C only on 3-phase meters
    m203 = [203, 105]
    a_sf, v_sf, hz_sf, pf_sf = -2, -1, -2, -2
    m203 += [_s16(amps * r.phases * 100), _s16(amps * 100), ph(_s16(amps * 100)), ph(_s16(amps * 100)), _sf16(a_sf)]
    volts = _s16(r.voltage_v * 10)
    ll = _s16(r.voltage_v * 10 * 1.7320508) if three else NI16
    m203 += [volts, volts, ph(volts), ph(volts), ll, ll, ll, ll, _sf16(v_sf)]
    m203 += [_s16(r.frequency_hz * 100), _sf16(hz_sf)]
    scale = 10.0**w_sf
    w = _s16(r.power_w / scale)
    wph = _s16(per_phase_w / scale)
    m203 += [w, wph, ph(wph), ph(wph), _sf16(w_sf)]
    va, vaph = _s16(abs(r.power_w) / 0.95 / scale), _s16(abs(per_phase_w) / 0.95 / scale)
    m203 += [va, vaph, ph(vaph), ph(vaph), _sf16(w_sf)]
    var, varph = _s16(abs(r.power_w) * 0.33 / scale), _s16(abs(per_phase_w) * 0.33 / scale)
    m203 += [var, varph, ph(varph), ph(varph), _sf16(w_sf)]
    pf = _s16(95 if r.power_w >= 0 else -95)
    m203 += [pf, pf, ph(pf), ph(pf), _sf16(pf_sf)]
    exp_hi, exp_lo = _u32(r.export_wh)
    imp_hi, imp_lo = _u32(r.import_wh)
    unimpl_acc = [0, 0]
    phase_a_exp = [exp_hi, exp_lo] if not three else unimpl_acc
    phase_a_imp = [imp_hi, imp_lo] if not three else unimpl_acc
    m203 += [exp_hi, exp_lo, *phase_a_exp, *unimpl_acc, *unimpl_acc]  # +38 TotWhExp, phases
    m203 += [imp_hi, imp_lo, *phase_a_imp, *unimpl_acc, *unimpl_acc]  # +46 TotWhImp, phases
    m203 += [_sf16(0)]  # +54 TotWh_SF
    m203 += [0] * 16 + [NI16]  # +55 TotVAh* not implemented, TotVAh_SF
    m203 += [0] * 32 + [NI16]  # +72 TotVArh* not implemented, TotVArh_SF
    m203 += [0, 0]  # +105 Evt: no events
    assert len(m203) == 107
    regs += m203
    # model 123: immediate controls
    m123 = [123, 24, 0, 0, 1 if r.connected else 0, 100, 0, 0, 0, 0, _s16(100), 0, 0, 0, 0]
    m123 += [NI16, NI16, NI16, NU16, NU16, NU16, NU16, 0, _sf16(0), _sf16(-2), NI16]
    assert len(m123) == 26
    regs += m123
    regs += [0xFFFF, 0]
    assert len(regs) == SUNSPEC_LEN
    return regs


def _f32(v: float) -> tuple[int, int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", v))
    return hi, lo


def sdm630_input_registers(r: MeterReading) -> list[int]:
    """SDM630 input registers 0x0000..0x01FF (float32, high word first; unused = 0.0)."""
    regs = [0] * SDM_LEN

    def put(addr: int, value: float) -> None:
        regs[addr], regs[addr + 1] = _f32(value)

    n = max(1, r.phases)
    volts = r.voltage_v
    amps = abs(r.power_w) / (volts * n) if volts > 0 else 0.0
    per_w = r.power_w / n
    for p in range(3):
        live = p < n
        put(0x0000 + 2 * p, volts if live else 0.0)
        put(0x0006 + 2 * p, amps if live else 0.0)
        put(0x000C + 2 * p, per_w if live else 0.0)
        put(0x0012 + 2 * p, abs(per_w) / 0.95 if live else 0.0)
        put(0x0018 + 2 * p, abs(per_w) * 0.33 if live else 0.0)
        put(0x001E + 2 * p, 0.95 if live else 0.0)
        put(0x015A + 2 * p, r.import_wh / 1000.0 / n if live else 0.0)
        put(0x0160 + 2 * p, r.export_wh / 1000.0 / n if live else 0.0)
        put(0x0166 + 2 * p, (r.import_wh + r.export_wh) / 1000.0 / n if live else 0.0)
    put(0x002A, volts)
    put(0x002E, amps)
    put(0x0030, amps * n)
    put(0x0034, r.power_w)
    put(0x0038, abs(r.power_w) / 0.95)
    put(0x003C, abs(r.power_w) * 0.33)
    put(0x003E, 0.95)
    put(0x0046, r.frequency_hz)
    put(0x0048, r.import_wh / 1000.0)
    put(0x004A, r.export_wh / 1000.0)
    put(0x0054, max(r.power_w, 0.0))
    put(0x00C8, volts * 1.7320508 if n == 3 else 0.0)
    put(0x00CA, volts * 1.7320508 if n == 3 else 0.0)
    put(0x00CC, volts * 1.7320508 if n == 3 else 0.0)
    put(0x00CE, volts * 1.7320508 if n == 3 else 0.0)
    put(0x0156, (r.import_wh + r.export_wh) / 1000.0)
    return regs


def sdm630_holding_registers(unit: int, phases: int) -> list[int]:
    regs = [0] * SDM_LEN
    config = (
        (0x0000, 0.0),
        (0x0002, 60.0),
        (0x0006, 230.0),
        (0x0008, 100.0),
        (0x000A, 3.0 if phases == 3 else 1.0),
        (0x000C, 100.0),
        (0x0012, 0.0),
        (0x0014, float(unit)),
        (0x001C, 2.0),
    )
    for addr, value in config:
        regs[addr], regs[addr + 1] = _f32(value)
    return regs


def decode_float32(hi: int, lo: int) -> float:
    value: float = struct.unpack(">f", struct.pack(">HH", hi, lo))[0]
    return value
