"""A small pymodbus server holding recorded SunSpec / SDM630 register blocks (tests and bench).

Each unit id is one meter. ``Block.set`` changes registers while the server runs
(an ``action`` copies the overrides into every response), so a test can advance
the energy register or flip the relay.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

FIX = Path(__file__).resolve().parents[2] / "fixtures"


def recorded(rel: str) -> tuple[int, list[int]]:
    doc = json.loads((FIX / rel).read_text())
    return int(doc.get("base", doc.get("start", 0))), list(doc["registers"])


@dataclass
class Block:
    start: int
    registers: list[int]
    overrides: dict[int, int] = field(default_factory=dict)

    def set(self, address: int, *values: int) -> None:
        for i, v in enumerate(values):
            self.overrides[address + i] = v

    async def action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: Any,
    ) -> None:
        if set_values is None and self.overrides:
            for i in range(len(current_registers)):
                v = self.overrides.get(start_address + i)
                if v is not None:
                    current_registers[i] = v


def sunspec_block() -> Block:
    return Block(*recorded("sunspec/meter_203_chain.json"))


def sdm_block() -> Block:
    return Block(*recorded("sdm630/input_block.json"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_server(port: int, units: dict[int, Block]) -> ModbusTcpServer:
    devices = [
        SimDevice(
            unit,
            simdata=[SimData(block.start, values=block.registers, datatype=DataType.REGISTERS)],
            action=block.action,
        )
        for unit, block in units.items()
    ]
    server = ModbusTcpServer(devices, address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    return server
