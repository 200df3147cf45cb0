"""Modbus register maps decoded from recorded register blocks (SunSpec, Eastron SDM630)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.errors import RegisterMapError
from ingest.registers_sdm import decode_sdm, encode_float32
from ingest.registers_sunspec import (
    BASE,
    CONTROLS,
    METER_WYE,
    chain_complete,
    conn_write,
    decode_common,
    decode_conn,
    decode_meter_203,
    walk_models,
)

FIX = Path(__file__).resolve().parents[2] / "fixtures"


def load(rel: str) -> list[int]:
    regs: list[int] = json.loads((FIX / rel).read_text())["registers"]
    return regs


def model_block(regs: list[int], model_id: int) -> list[int]:
    loc = walk_models(regs)[model_id]
    i = loc.address - BASE
    return regs[i : i + loc.span]


def test_walk_finds_models_in_order() -> None:
    regs = load("sunspec/meter_203_chain.json")
    models = walk_models(regs)
    assert list(models) == [1, 203, 123]
    assert models[1].address == 40002 and models[203].address == 40070 and models[123].address == 40177
    assert chain_complete(regs)
    assert not chain_complete(regs[:100])


def test_common_model() -> None:
    regs = load("sunspec/meter_203_chain.json")
    assert decode_common(model_block(regs, 1)) == {
        "manufacturer": "headend",
        "model": "SIM-203",
        "version": "1.0.0",
        "serial": "SN000123",
    }


def test_model_203_values() -> None:
    got = decode_meter_203(model_block(load("sunspec/meter_203_chain.json"), METER_WYE))
    assert got == {
        "1-0:31.7.0": 5.2,
        "1-0:51.7.0": 0.5,
        "1-0:71.7.0": 0.3,
        "1-0:32.7.0": 230.1,
        "1-0:52.7.0": 229.8,
        "1-0:72.7.0": 230.5,
        "1-0:14.7.0": 50.02,
        "1-0:16.7.0": 1197.0,
        "1-0:2.8.0": 4567.0,
        "1-0:1.8.0": 12345678.0,
    }


def test_model_203_from_the_short_poll_read() -> None:
    block = model_block(load("sunspec/meter_203_chain.json"), METER_WYE)
    assert decode_meter_203(block[:55]) == decode_meter_203(block)
    with pytest.raises(RegisterMapError):
        decode_meter_203(block[:54])


def test_model_203_unimplemented_and_positive_scale() -> None:
    got = decode_meter_203(model_block(load("sunspec/meter_203_single_phase_sf1.json"), METER_WYE))
    assert "1-0:51.7.0" not in got and "1-0:72.7.0" not in got
    assert got["1-0:1.8.0"] == 99999900.0
    assert got["1-0:2.8.0"] == 0.0


def test_conn_relay_state_and_write() -> None:
    regs = load("sunspec/meter_203_chain.json")
    assert decode_conn(model_block(regs, CONTROLS)) == "connected"
    loc = walk_models(regs)[CONTROLS]
    assert conn_write(loc, connect=False) == (40181, 0)
    assert conn_write(loc, connect=True) == (40181, 1)


def test_agrees_with_pysunspec2() -> None:
    """An independent decoder (pysunspec2's model definitions) reads the same block the same way."""
    device = pytest.importorskip("sunspec2.device")
    block = model_block(load("sunspec/meter_203_chain.json"), METER_WYE)
    model = device.Model(model_id=203, model_len=105, data=struct.pack(f">{len(block)}H", *block))
    ours = decode_meter_203(block)
    assert model.TotWhImp.cvalue == ours["1-0:1.8.0"]
    assert model.TotWhExp.cvalue == ours["1-0:2.8.0"]
    assert model.PhVphA.cvalue == pytest.approx(ours["1-0:32.7.0"])
    assert model.W.cvalue == ours["1-0:16.7.0"]
    assert model.Hz.cvalue == pytest.approx(ours["1-0:14.7.0"])


def test_no_marker() -> None:
    with pytest.raises(RegisterMapError):
        walk_models([0, 0, 1, 66])


def test_wrong_model_length() -> None:
    with pytest.raises(RegisterMapError):
        walk_models([0x5375, 0x6E53, 203, 50, *([0] * 50), 0xFFFF, 0])


def test_sdm630_block() -> None:
    got = decode_sdm(load("sdm630/input_block.json"))
    assert got["1-0:1.8.0"] == 1290396.0
    assert got["1-0:2.8.0"] == 12500.0
    assert got["1-0:32.7.0"] == pytest.approx(230.4, abs=1e-4)
    assert got["1-0:31.7.0"] == pytest.approx(5.21, abs=1e-5)
    assert got["1-0:16.7.0"] == 1312.5
    assert got["1-0:14.7.0"] == pytest.approx(49.98, abs=1e-4)
    assert got["1-0:71.7.0"] == 0.0


def test_sdm_short_block_rejected() -> None:
    with pytest.raises(RegisterMapError):
        decode_sdm([0] * 10)


@given(st.floats(min_value=0, max_value=9_999_999, allow_nan=False, width=32))
def test_sdm_energy_round_trip(kwh: float) -> None:
    regs = [0] * 0x4C
    regs[0x48:0x4A] = encode_float32(kwh)
    assert decode_sdm(regs)["1-0:1.8.0"] == round(kwh * 1000, 1)


@given(st.integers(min_value=0, max_value=2**32 - 1), st.integers(min_value=-3, max_value=3))
def test_acc32_high_word_first(acc: int, sf: int) -> None:
    block = load("sunspec/meter_203_chain.json")
    regs = model_block(block, METER_WYE)
    regs[46], regs[47] = acc >> 16, acc & 0xFFFF
    regs[54] = sf & 0xFFFF
    assert decode_meter_203(regs)["1-0:1.8.0"] == pytest.approx(acc * 10.0**sf)
