"""The Modbus TCP shell of the fleet: pymodbus 3.16 servers, many meters per server.

Each server (one TCP port) carries up to ``units_per_port`` meters as unit (device) ids 1..247;
a fleet of 500 meters runs on three ports of one process. Meters are pymodbus ``SimDevice``s
whose ``action`` hook refreshes the registers from the fleet model on every read (so a read
always shows the current tick) and turns a write of SunSpec ``Conn`` into a relay operation.

- SunSpec meters: one shared block from 40000 (see ``simulators/registermaps.py``); writes
  outside model 123's read-write points are refused (ILLEGAL_ADDRESS).
- SDM630 meters: input registers 0x0000-0x01FF and holding registers 0x0000-0x01FF; every
  address in range answers (unused = 0.0); no relay, writes refused.
- A meter that is offline (fault) or without power answers GATEWAY_NO_RESPONSE (0x0B).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from datetime import datetime
from functools import partial
from types import TracebackType

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators import registermaps as rm
from simulators.driver import FleetDriver
from simulators.errors import SimulatorError
from simulators.meter import RelayState
from simulators.models import WireFormat

logger = logging.getLogger(__name__)

_CLOSED = (RelayState.CONNECTED, RelayState.LOAD_LIMITED)


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class ModbusFarm:
    """All Modbus servers of a fleet. ``ports[server_index]`` is where each server listens."""

    def __init__(
        self,
        driver: FleetDriver,
        host: str,
        base_port: int,
        now: Callable[[], datetime],
        *,
        start_timeout_s: float = 10.0,
    ) -> None:
        self.driver = driver
        self.host = host
        self.base_port = base_port
        self.now = now
        self.start_timeout_s = start_timeout_s
        self.by_server: dict[int, list[int]] = {}
        for i, spec in enumerate(driver.specs):
            if spec.wire in (WireFormat.SUNSPEC, WireFormat.SDM630):
                if spec.modbus_server is None or spec.modbus_unit is None:
                    raise SimulatorError(f"{spec.meter_id}: a Modbus meter needs a server and a unit id")
                self.by_server.setdefault(spec.modbus_server, []).append(i)
        self.ports: dict[int, int] = {}
        self.servers: list[ModbusTcpServer] = []
        self.reads = 0
        self.writes = 0
        self.lying: set[int] = set()  # meters whose Conn read-back lies (wrong_state fault)

    @property
    def meter_count(self) -> int:
        return sum(len(v) for v in self.by_server.values())

    def port_of(self, i: int) -> int:
        server = self.driver.specs[i].modbus_server
        assert server is not None
        return self.ports[server]

    async def __aenter__(self) -> ModbusFarm:
        for server_no, meters in sorted(self.by_server.items()):
            port = self.base_port + server_no if self.base_port else free_port(self.host)
            devices = [self._device(i) for i in meters]
            server = ModbusTcpServer(devices, address=(self.host, port))
            try:
                async with asyncio.timeout(self.start_timeout_s):
                    await server.serve_forever(background=True)
            except (OSError, RuntimeError, TimeoutError) as exc:
                await self.close()
                raise SimulatorError(f"cannot serve Modbus on {self.host}:{port}: {exc}") from exc
            self.ports[server_no] = port
            self.servers.append(server)
        if self.servers:
            logger.info("Modbus meters: %d on ports %s", self.meter_count, sorted(self.ports.values()))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        for server in self.servers:
            await server.shutdown()  # type: ignore[no-untyped-call]
        self.servers.clear()

    # ------------------------------------------------------------- devices
    def _device(self, i: int) -> SimDevice:
        spec = self.driver.specs[i]
        unit = spec.modbus_unit
        assert unit is not None
        if spec.wire is WireFormat.SUNSPEC:
            regs = rm.sunspec_registers(self._reading(i), spec.meter_id, unit, self._w_sf(i))
            block = SimData(rm.SUNSPEC_BASE, values=regs, datatype=DataType.REGISTERS)
            return SimDevice(unit, simdata=[block], action=partial(self._sunspec_action, i))
        holding = rm.sdm630_holding_registers(unit, spec.phases)
        inputs = rm.sdm630_input_registers(self._reading(i))
        return SimDevice(
            unit,
            simdata=(
                [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
                [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
                [SimData(0, values=holding, datatype=DataType.REGISTERS)],
                [SimData(0, values=inputs, datatype=DataType.REGISTERS)],
            ),
            action=partial(self._sdm_action, i),
        )

    def _w_sf(self, i: int) -> int:
        spec = self.driver.specs[i]
        return 1 if spec.rated_current_a * spec.nominal_voltage_v * spec.phases > 32000 else 0

    def _reading(self, i: int) -> rm.MeterReading:
        m = self.driver.model
        relay = m.relay_state(i)
        closed = relay in _CLOSED
        if i in self.lying:
            closed = not closed
        return rm.MeterReading(
            import_wh=float(m.import_wh[i]),
            export_wh=float(m.export_wh[i]),
            power_w=float(m.power_w[i]),
            voltage_v=float(m.voltage_v[i]),
            phases=int(m.phases[i]),
            frequency_hz=50.0,
            connected=closed,
        )

    def _unreachable(self, i: int) -> bool:
        return bool(self.driver.offline[i] or not self.driver.model.powered[i])

    async def _sunspec_action(
        self,
        i: int,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if self._unreachable(i):
            return ExcCodes.GATEWAY_NO_RESPONSE
        if set_values is not None and function_code in (6, 16):
            if any(a not in rm.M123_WRITABLE for a in range(address, address + count)):
                return ExcCodes.ILLEGAL_ADDRESS
            self.writes += 1
            if address <= rm.CONN_ADDR < address + count:
                value = int(set_values[rm.CONN_ADDR - address])
                if value not in (0, 1):
                    return ExcCodes.ILLEGAL_VALUE
                fate = self.driver.faults.command(i)
                self.driver.modbus_conn(i, bool(value), self.now(), relay_fails=fate.relay_fails)
                if fate.wrong_state:
                    self.lying.add(i)
                else:
                    self.lying.discard(i)
            return None
        self.reads += 1
        spec = self.driver.specs[i]
        unit = spec.modbus_unit or 0
        fresh = rm.sunspec_registers(self._reading(i), spec.meter_id, unit, self._w_sf(i))
        registers[: len(fresh)] = fresh
        return None

    async def _sdm_action(
        self,
        i: int,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if self._unreachable(i):
            return ExcCodes.GATEWAY_NO_RESPONSE
        if set_values is not None:
            return ExcCodes.ILLEGAL_ADDRESS
        self.reads += 1
        if function_code == 4:
            fresh = rm.sdm630_input_registers(self._reading(i))
            registers[: len(fresh)] = fresh
        return None
