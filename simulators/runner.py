"""Run a simulated fleet: the library the CLI (``headend simulate``) and the demo drive.

    sim = Simulation(scenario, clock=headend_clock, on_progress=print_progress)
    await sim.run(stop_event)          # until the scenario's duration or the event
    sim.press_button("M-000001")       # a customer at the meter (from the same event loop)

One asyncio process: the tick loop (driver -> MQTT publish, backpressure by ``drain``), a
command task (MQTT cmd -> driver -> ack/state), and the Modbus servers whose hooks read the
same model. Ticks are paced by the clock (``simulators/clock.py``): with a ``headend.clock``
accelerated clock the fleet's timestamps agree with every headend service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime

import holidays as holidays_lib

from headend.clock import AcceleratedClock, Clock, clock_from_env
from headend.settings import CommonSettings
from simulators import formats
from simulators.clock import TickClock, align, from_headend_clock
from simulators.driver import Counters, FleetDriver, Outgoing
from simulators.faults import Faults
from simulators.fleet import FleetModel
from simulators.formats import Topics
from simulators.modbus import ModbusFarm
from simulators.models import Protocol
from simulators.mqtt import MqttLink
from simulators.scenario import Scenario

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    tick: int
    ticks_total: int | None
    sim_time: datetime
    meters: int
    samples: int
    messages: int
    published: int
    commands: int
    lag_s: float  # how far the fleet runs behind the clock (real seconds)
    elapsed_s: float
    done: bool = False

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.elapsed_s if self.elapsed_s > 0 else 0.0


class Simulation:
    def __init__(
        self,
        scenario: Scenario,
        *,
        clock: Clock | None = None,
        settings: CommonSettings | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        on_message: Callable[[Outgoing], None] | None = None,
        progress_every_s: float = 1.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.scenario = scenario
        self.settings = settings or CommonSettings()
        self.on_progress = on_progress
        self.on_message = on_message
        self.progress_every_s = progress_every_s
        self.wall = wall
        self.specs = scenario.meters()
        country = scenario.country
        try:
            calendar = holidays_lib.country_holidays(country)
        except NotImplementedError:
            calendar = None

        def is_holiday(day: date) -> bool:
            return calendar is not None and day in calendar

        self.model = FleetModel(
            self.specs,
            seed=scenario.seed,
            timezone=scenario.timezone,
            is_holiday=is_holiday,
            noise_sigma=scenario.noise_sigma,
        )
        ids = [s.meter_id for s in self.specs]
        self.faults = Faults(scenario.fault_plan(), ids, scenario.seed + 1)
        m = scenario.mqtt
        self.topics = Topics(m.prefix or self.settings.mqtt_prefix, m.tasmota_prefix, m.shelly_prefix)
        self.clock = self._tick_clock(clock)
        self.driver = FleetDriver(
            self.model,
            self.faults,
            self.topics,
            step_s=scenario.step_s,
            origin=self.clock.origin,
            readings_qos=m.readings_qos,
            button_after_s=scenario.button_after_s,
        )
        self.mqtt_meters = sum(1 for s in self.specs if s.wire.protocol is Protocol.MQTT)
        self.modbus_meters = len(self.specs) - self.mqtt_meters
        self.link: MqttLink | None = None
        self.farm: ModbusFarm | None = None
        self.tick = 0
        self.started_wall = 0.0
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._slow_logged = False
        self._uplink_down = False

    def _tick_clock(self, clock: Clock | None) -> TickClock:
        """Unpaced (speed 0) from start or now; else a shared accelerated clock; else start/speed."""
        s = self.scenario
        wall = self.wall()
        clock = clock or clock_from_env()
        if s.speed == 0:
            return TickClock(s.start or align(clock.now(), s.step_s), s.step_s, 0.0, wall)
        if isinstance(clock, AcceleratedClock):  # the demo's clock: agree with every service
            return from_headend_clock(clock, s.step_s, wall)
        if s.start is not None:
            return TickClock(s.start, s.step_s, s.speed, wall)
        tc = from_headend_clock(clock, s.step_s, wall)  # now, aligned, at the scenario's speed
        return TickClock(tc.origin, s.step_s, s.speed, tc.real_start)

    @property
    def counters(self) -> Counters:
        return self.driver.counters

    @property
    def ticks_total(self) -> int | None:
        d = self.scenario.duration_s
        return None if d is None else self.clock.ticks_for(d)

    def sim_now(self) -> datetime:
        """The fleet's notion of now: the clock's, but never before the last tick run."""
        model_t = self.driver.model_time()
        if not self.clock.paced:
            return model_t
        return max(model_t, self.clock.sim_now(self.wall()))

    def modbus_endpoint(self, meter_id: str) -> tuple[str, int, int]:
        """(host, port, unit) of a Modbus meter, once the run has started."""
        assert self.farm is not None, "the Modbus servers are not running"
        i = self.model.index[meter_id]
        unit = self.specs[i].modbus_unit
        assert unit is not None
        return self.scenario.modbus.host, self.farm.port_of(i), unit

    def press_button(self, meter_id: str) -> None:
        """The customer presses the meter's button (call from the simulation's event loop)."""
        self._publish(self.driver.press_button(meter_id, self.sim_now()))

    def _publish(self, out: list[Outgoing]) -> None:
        if self.on_message is not None:
            for m in out:
                if m.kind != "readings":
                    self.on_message(m)
        if self.link is not None:
            self.link.publish(out)

    def stop(self) -> None:
        """Ask a running ``run()`` to finish (flushes what is held back, closes cleanly)."""
        self._stop.set()

    def meter_status(self, meter_id: str) -> dict[str, object]:
        """What a meter shows now (for a narrator or a test): relay, registers, power, comms."""
        i = self.model.index[meter_id]
        m = self.model
        return {
            "meter": meter_id,
            "relay": m.relay_state(i).wire,
            "import_wh": round(float(m.import_wh[i]), 1),
            "export_wh": round(float(m.export_wh[i]), 1),
            "power_w": round(float(m.power_w[i]), 1),
            "powered": bool(m.powered[i]),
            "online": not bool(self.driver.offline[i]),
            "load_side_voltage": bool(m.load_side_voltage[i]),
        }

    async def run(self, stop: asyncio.Event | None = None) -> Counters:
        """Run until the scenario's duration, ``stop`` (or ``self.stop()``); returns the counters."""
        stop = stop or self._stop
        m = self.scenario.mqtt
        async with contextlib.AsyncExitStack() as stack:
            if self.mqtt_meters:
                self.link = await stack.enter_async_context(
                    MqttLink(
                        m.host or self.settings.mqtt_host,
                        m.port or self.settings.mqtt_port,
                        subscribe=[self.topics.commands()],
                        client_count=m.clients,
                    )
                )
            if self.modbus_meters:
                mb = self.scenario.modbus
                self.farm = await stack.enter_async_context(ModbusFarm(self.driver, mb.host, mb.port, self.sim_now))
            self.started_wall = self.wall()
            self.ready.set()
            async with asyncio.TaskGroup() as tg:
                commands = tg.create_task(self._commands(), name="sim-commands") if self.link else None
                try:
                    await self._ticks(stop)
                finally:
                    if commands is not None:
                        commands.cancel()
            self._publish(self.driver.flush())
            if self.link is not None:
                await self.link.drain()
        return self.counters

    async def _ticks(self, stop: asyncio.Event) -> None:
        total = self.ticks_total
        last_progress = self.wall()
        while total is None or self.tick < total:
            if stop.is_set():
                break
            if self.clock.paced:
                delay = self.clock.due_wall(self.tick + 1) - self.wall()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await stop.wait()
                    if stop.is_set():
                        break
            if self.link is not None and (not self.link.connected) != self._uplink_down:
                self._uplink_down = not self._uplink_down
                what = "lost: meters keep their readings" if self._uplink_down else "back: meters send their backlog"
                logger.warning("MQTT broker %s", what)
                self.driver.set_uplink(not self._uplink_down, self.driver.model_time())
            out = self.driver.tick(self.tick)
            self.tick += 1
            self._publish(out)
            if self.link is not None and not await self.link.drain(5.0):
                if not self._slow_logged:
                    logger.warning("MQTT broker is not taking messages fast enough (or is gone); paho is buffering")
                    self._slow_logged = True
            else:
                await asyncio.sleep(0)
            now = self.wall()
            if self.on_progress and now - last_progress >= self.progress_every_s:
                last_progress = now
                self.on_progress(self.progress())
        if self.on_progress:
            self.on_progress(self.progress(done=True))

    async def _commands(self) -> None:
        assert self.link is not None
        link = self.link
        while True:
            topic, payload = await link.incoming.get()
            meter_id = self.topics.meter_of_command(topic)
            if meter_id is None:
                continue
            cmd = formats.decode_command(meter_id, payload)
            if isinstance(cmd, str):
                logger.warning("meter %s: unreadable command (%s): %r", meter_id, cmd, payload[:200])
                command_id = formats.command_id_of(payload)
                if command_id is not None:
                    self._publish(self.driver.reject_command(meter_id, command_id, cmd, self.sim_now()))
                continue
            self._publish(self.driver.handle_command(cmd, self.sim_now()))

    def progress(self, done: bool = False) -> Progress:
        c = self.counters
        wall = self.wall()
        lag = max(0.0, wall - self.clock.due_wall(self.tick)) if self.clock.paced else 0.0
        return Progress(
            tick=self.tick,
            ticks_total=self.ticks_total,
            sim_time=self.driver.model_time().astimezone(UTC),
            meters=len(self.specs),
            samples=c.samples,
            messages=c.messages,
            published=self.link.published if self.link else 0,
            commands=c.commands,
            lag_s=lag,
            elapsed_s=wall - self.started_wall if self.started_wall else 0.0,
            done=done,
        )
