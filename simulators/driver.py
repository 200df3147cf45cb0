"""The fleet driver: what every meter publishes on each tick and how it answers commands.

It owns the fleet model, the faults, each meter's comms state and backlog, and turns them
into ``Outgoing`` messages; the shells (``simulators/mqtt.py``, ``simulators/modbus.py``,
``simulators/runner.py``) only move bytes. Pure and deterministic for a seed: no I/O, no clock,
every time is passed in.

Per tick ``k`` (simulated ``[t_k, t_k+1)``):
1. per-day faults strike (offline periods, register resets, spikes, power failures, cover);
2. the model integrates the step;
3. meters whose reporting interval ends at ``t_k+1`` take a sample (none while unpowered);
   online meters send their pending samples (single, block, concentrator batch, Tasmota,
   Shelly); offline meters keep them (at most ``max_backlog`` each) and send the backlog as
   interval blocks when they come back;
4. events (relay changes, power, cover, button) go out on the events topic (kept while offline);
5. delayed messages whose time has come are released.
Message faults (drop, duplicate, reorder, delay, garbage) apply to readings and events; acks have
their own faults (missing, slow, wrong state).
"""

from __future__ import annotations

import functools
import heapq
import itertools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from simulators import formats
from simulators.faults import Faults
from simulators.fleet import FleetModel
from simulators.formats import Sample, Topics
from simulators.meter import AckStatus, Action, RelayState
from simulators.models import Command, MeterEvent, Reporting, WireFormat

BLOCK_CHUNK = 96  # at most one day of 15-min readings per backlog message


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    payload: bytes
    qos: int = 0
    meter: int | None = None  # index of the meter it belongs to (None: a concentrator's batch)
    kind: str = "readings"  # readings | events | state | ack


@dataclass
class Counters:
    ticks: int = 0
    samples: int = 0
    messages: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    delayed: int = 0
    garbage: int = 0
    commands: int = 0
    commands_ignored: int = 0
    acks_missing: int = 0
    backlog_sent: int = 0
    faults: dict[str, int] = field(default_factory=lambda: defaultdict(int))


_SINGLE, _CONCENTRATOR, _BLOCK, _TASMOTA, _SHELLY, _MODBUS = range(6)


@functools.cache
def _kind(wire: WireFormat, reporting: Reporting) -> int:
    if wire is WireFormat.NATIVE:
        return {Reporting.SINGLE: _SINGLE, Reporting.CONCENTRATOR: _CONCENTRATOR, Reporting.BLOCK: _BLOCK}[reporting]
    return {WireFormat.TASMOTA: _TASMOTA, WireFormat.SHELLY: _SHELLY}.get(wire, _MODBUS)


def _opposite(relay: RelayState) -> RelayState:
    return RelayState.DISCONNECTED if relay in (RelayState.CONNECTED, RelayState.LOAD_LIMITED) else RelayState.CONNECTED


class FleetDriver:
    def __init__(
        self,
        model: FleetModel,
        faults: Faults,
        topics: Topics,
        *,
        step_s: float,
        origin: datetime,
        readings_qos: int = 0,
        button_after_s: float | None = None,
        max_backlog: int = 2880,
        birth_report: bool = True,
    ) -> None:
        self.model = model
        self.faults = faults
        self.topics = topics
        self.step_s = step_s
        self.origin = origin
        self.readings_qos = readings_qos
        self.button_after_s = button_after_s
        self.max_backlog = max_backlog
        self.specs = model.specs
        n = model.n
        self.kind = np.array([_kind(s.wire, s.reporting) for s in self.specs], dtype=np.int8)
        self.mqtt = self.kind != _MODBUS
        for hit in np.flatnonzero(faults.load_side_voltage).tolist():
            model.set_load_side_voltage(hit, True)
        model.keep_power |= faults.keep_power
        by_interval: dict[int, list[int]] = defaultdict(list)
        for i, s in enumerate(self.specs):
            if s.interval_s % step_s:
                raise ValueError(f"{s.meter_id}: interval_s {s.interval_s} is not a multiple of step_s {step_s}")
            by_interval[s.interval_s].append(i)
        self.by_interval = {iv: np.array(ix, dtype=np.intp) for iv, ix in sorted(by_interval.items())}
        # How each meter reports (codes below), and its concentrator's number (-1: none).
        self.conc_names: list[str] = []
        conc_no: dict[str, int] = {}
        conc_of = np.full(n, -1, dtype=np.int32)
        for i, s in enumerate(self.specs):
            if self.kind[i] == _CONCENTRATOR:
                name = s.concentrator or "DC-1"
                if name not in conc_no:
                    conc_no[name] = len(self.conc_names)
                    self.conc_names.append(name)
                conc_of[i] = conc_no[name]
        self.conc_of = conc_of
        self.pending: dict[int, list[Sample]] = {}
        self.pending_events: dict[int, list[MeterEvent]] = {}
        self.offline_until = np.full(n, -np.inf)  # unix seconds of simulated time
        self.offline = np.zeros(n, dtype=bool)
        self.restore_at: list[tuple[float, int, str, int]] = []  # (when, seq, what, meter)
        self.delayed: list[tuple[float, int, Outgoing]] = []
        self.held: dict[str, Outgoing] = {}
        self.seq = itertools.count()
        self.counters = Counters()
        self._uplink_down: np.ndarray | None = None
        self._born = not birth_report

    # ------------------------------------------------------------------ ticks
    def at(self, k: int) -> datetime:
        return self.origin + timedelta(seconds=k * self.step_s)

    def tick(self, k: int) -> list[Outgoing]:
        """Run tick ``k``; return the messages to publish, in order."""
        t0, t1 = self.at(k), self.at(k + 1)
        out: list[Outgoing] = []
        if not self._born:
            self._birth(t0, out)
        self._strike(t0)
        self._restore(t0)
        self.model.step(t0, self.step_s)
        self.counters.ticks += 1
        self._release_delayed(t1, out)
        self._comeback(t1, out)
        elapsed = (k + 1) * self.step_s
        due = [ix for iv, ix in self.by_interval.items() if elapsed % iv == 0]
        if due:
            self._sample(np.concatenate(due) if len(due) > 1 else due[0], t1, out)
        self._events(out)
        return out

    def _strike(self, t: datetime) -> None:
        m = self.model
        for kind, hit in self.faults.per_day(self.step_s).items():
            self.counters.faults[kind] += int(hit.size)
            for i in map(int, hit):
                if kind == "offline" and not self.offline[i]:
                    self.offline[i] = True
                    self.offline_until[i] = t.timestamp() + self.faults.rate("offline_s", i)
                elif kind == "register_reset":
                    m.replace_meter(i, float(self.faults.rng.uniform(0.0, 50.0)))
                elif kind == "spike":
                    m.jump_register(i, self.faults.rate("spike_wh", i))
                elif kind == "power_fail" and m.powered[i]:
                    m.power_fail(i, t)
                    when = t.timestamp() + self.faults.rate("power_fail_s", i)
                    heapq.heappush(self.restore_at, (when, next(self.seq), "power", i))
                elif kind == "tamper":
                    m.tamper(i, t, {"kind": "magnetic"})
                elif kind == "cover_open" and not m.cover_open[i]:
                    m.set_cover(i, True, t)
                    heapq.heappush(self.restore_at, (t.timestamp() + 600.0, next(self.seq), "cover", i))

    def _restore(self, t: datetime) -> None:
        now = t.timestamp()
        while self.restore_at and self.restore_at[0][0] <= now:
            when, _, what, i = heapq.heappop(self.restore_at)
            ts = datetime.fromtimestamp(when, t.tzinfo)
            if what == "power":
                self.model.power_restore(i, ts)
            elif what == "cover":
                self.model.set_cover(i, False, ts)
            elif what == "button":
                self.model.press_button(i, ts, relay_fails=self.faults.command(i).relay_fails)

    def _comeback(self, t: datetime, out: list[Outgoing]) -> None:
        back = np.flatnonzero(self.offline & (self.offline_until <= t.timestamp()))
        for i in map(int, back):
            self.offline[i] = False
            samples = self.pending.pop(i, None)
            if samples and self.specs[i].reporting is not Reporting.CONCENTRATOR:
                self.counters.backlog_sent += len(samples)
                self._send_samples(i, samples, out)
            elif samples:
                self.pending[i] = samples  # goes with the concentrator's next batch
            events = self.pending_events.pop(i, None)
            if events:
                self._emit(self._events_message(i, events), out)
            if self.mqtt[i]:
                self._push(self._state_message(i, t), out)  # back online: say where the relay is

    def _birth(self, t: datetime, out: list[Outgoing]) -> None:
        """Like a real meter on connecting, every online MQTT meter reports its relay state once."""
        self._born = True
        for i in map(int, np.flatnonzero(self.mqtt & ~self.offline)):
            self._push(self._state_message(i, t), out)

    def set_uplink(self, up: bool, now: datetime) -> None:
        """The broker went away (``up=False``) or came back: every MQTT meter that was reachable
        keeps its readings meanwhile, exactly as in an offline period, and sends the backlog
        when the broker is back (at the next tick)."""
        if not up and self._uplink_down is None:
            hit = self.mqtt & ~self.offline
            self._uplink_down = np.flatnonzero(hit)
            self.offline[hit] = True
            self.offline_until[hit] = np.inf
        elif up and self._uplink_down is not None:
            self.offline_until[self._uplink_down] = now.timestamp()
            self._uplink_down = None

    def _sample(self, idx: np.ndarray, t: datetime, out: list[Outgoing]) -> None:
        """Sample the meters ``idx`` at ``t`` and send what is due.

        The common case (online, nothing pending, no clock skew, native single or concentrator)
        is formatted straight from the arrays; everything else goes through ``Sample`` objects.
        """
        m = self.model
        idx = idx[m.powered[idx] & self.mqtt[idx]]
        if not idx.size:
            return
        self.counters.samples += int(idx.size)
        pw_a, volts_a = m.power_w[idx], m.voltage_v[idx]
        amps_a = np.divide(np.abs(pw_a), volts_a * m.phases[idx], out=np.zeros(idx.size), where=volts_a > 0)
        imp, exp = m.import_wh[idx].tolist(), m.export_wh[idx].tolist()
        pw, volts, amps = pw_a.tolist(), volts_a.tolist(), amps_a.tolist()
        skew_a = self.faults.skew_s[idx]
        has_pending = np.zeros(m.n, dtype=bool)
        if self.pending:
            has_pending[list(self.pending)] = True
        fast = (~self.offline[idx] & ~has_pending[idx] & (skew_a == 0)).tolist()
        skew = skew_a.tolist()
        kinds = self.kind[idx].tolist()
        conc = self.conc_of[idx].tolist()
        ids = m.ids
        ts = formats.iso(t)
        qos = self.readings_qos
        batches: dict[int, list[str]] = defaultdict(list)
        for j, i in enumerate(idx.tolist()):
            kind = kinds[j]
            if fast[j] and kind <= _CONCENTRATOR:
                values = (
                    f'{{"1-0:1.8.0":{imp[j]:.1f},"1-0:2.8.0":{exp[j]:.1f},"1-0:16.7.0":{pw[j]:.1f},'
                    f'"1-0:32.7.0":{volts[j]:.1f},"1-0:31.7.0":{amps[j]:.2f}}}'
                )
                if kind == _CONCENTRATOR:
                    batches[conc[j]].append(f'{{"meter":"{ids[i]}","readings":[{{"ts":"{ts}","values":{values}}}]}}')
                else:
                    payload = f'{{"v":1,"meter":"{ids[i]}","ts":"{ts}","values":{values}}}'.encode()
                    self._emit(Outgoing(self.topics.meter(ids[i], "readings"), payload, qos, i), out)
                continue
            sample_ts = t + timedelta(seconds=skew[j]) if skew[j] else t
            pending = self.pending.get(i)
            if pending is None:
                pending = self.pending[i] = []
            pending.append(Sample(sample_ts, imp[j], exp[j], pw[j], volts[j], amps[j]))
            if self.offline[i]:
                if len(pending) > self.max_backlog:
                    del pending[0]
                continue
            if kind == _CONCENTRATOR:
                batches[conc[j]].append(formats.batch_part(ids[i], self.pending.pop(i)))
            elif kind == _BLOCK:
                if len(pending) >= self.specs[i].block_intervals:
                    self._send_samples(i, self.pending.pop(i), out)
            else:
                self._send_samples(i, self.pending.pop(i), out)
        for dc_no, parts in batches.items():
            dc = self.conc_names[dc_no]
            self._emit(Outgoing(self.topics.concentrator(dc), formats.native_batch_parts(dc, parts), qos), out)

    def _send_samples(self, i: int, samples: list[Sample], out: list[Outgoing]) -> None:
        spec = self.specs[i]
        if spec.wire is WireFormat.TASMOTA:
            topic = self.topics.tasmota(spec.topic_id)
            for s in samples:
                self._emit(Outgoing(topic, formats.tasmota_sensor(s, self.model.tz), self.readings_qos, i), out)
        elif spec.wire is WireFormat.SHELLY:
            topic = self.topics.shelly(spec.topic_id)
            for s in samples:
                self._emit(Outgoing(topic, formats.shelly_notify(spec.topic_id, s), self.readings_qos, i), out)
        else:
            topic = self.topics.meter(spec.meter_id, "readings")
            for c in range(0, len(samples), BLOCK_CHUNK):
                chunk = samples[c : c + BLOCK_CHUNK]
                self._emit(Outgoing(topic, formats.native_readings(spec.meter_id, chunk), self.readings_qos, i), out)

    def _events(self, out: list[Outgoing]) -> None:
        by_meter: dict[int, list[MeterEvent]] = defaultdict(list)
        for e in self.model.drain_events():
            by_meter[self.model.index[e.meter_id]].append(e)
        for i, events in by_meter.items():
            if not self.mqtt[i]:
                continue
            if self.offline[i]:
                self.pending_events.setdefault(i, []).extend(events)
                continue
            self._emit(self._events_message(i, events), out)
            if any(e.kind == "relay_change" for e in events):
                self._push(self._state_message(i, events[-1].ts), out)
                self._device_relay(i, events[-1].ts, out)

    def _events_message(self, i: int, events: list[MeterEvent]) -> Outgoing:
        mid = self.specs[i].meter_id
        payload = formats.native_events(mid, events, float(self.faults.skew_s[i]))
        return Outgoing(self.topics.meter(mid, "events"), payload, 1, i, "events")

    def _device_relay(self, i: int, ts: datetime, out: list[Outgoing]) -> None:
        """A Shelly also tells its relay change in its own format (``switch:0`` output)."""
        spec = self.specs[i]
        if spec.wire is WireFormat.SHELLY:
            payload = formats.shelly_switch(spec.topic_id, ts, self.model.relay_state(i))
            self._push(Outgoing(self.topics.shelly(spec.topic_id), payload, 1, i, "events"), out)

    def _state_message(self, i: int, ts: datetime) -> Outgoing:
        relay = self.model.relay_state(i)
        if self.faults.wrong_state(i):
            relay = _opposite(relay)
        payload = formats.native_state(relay, ts, bool(self.model.load_side_voltage[i]))
        return Outgoing(self.topics.meter(self.specs[i].meter_id, "state"), payload, 1, i, "state")

    # ----------------------------------------------------------- message faults
    def _emit(self, msg: Outgoing, out: list[Outgoing]) -> None:
        fate = self.faults.message(msg.meter)
        c = self.counters
        if fate.drop:
            c.dropped += 1
            return
        if fate.garbage:
            c.garbage += 1
            msg = Outgoing(msg.topic, self.faults.garble(msg.payload), msg.qos, msg.meter, msg.kind)
        if fate.delay_s:
            c.delayed += 1
            due = self.model_time().timestamp() + fate.delay_s
            heapq.heappush(self.delayed, (due, next(self.seq), msg))
            return
        if fate.reorder and msg.topic not in self.held:
            c.reordered += 1
            self.held[msg.topic] = msg
            return
        out.append(msg)
        c.messages += 1
        if fate.duplicate:
            c.duplicated += 1
            out.append(msg)
            c.messages += 1
        held = self.held.pop(msg.topic, None)
        if held is not None:
            out.append(held)
            c.messages += 1

    def _push(self, msg: Outgoing, out: list[Outgoing]) -> None:
        """A message that no message fault touches (acks, state reports, command events)."""
        out.append(msg)
        self.counters.messages += 1

    def model_time(self) -> datetime:
        return self.at(self.counters.ticks)

    def _release_delayed(self, t: datetime, out: list[Outgoing]) -> None:
        now = t.timestamp()
        while self.delayed and self.delayed[0][0] <= now:
            out.append(heapq.heappop(self.delayed)[2])
            self.counters.messages += 1

    def flush(self) -> list[Outgoing]:
        """Everything still held back (reordered or delayed), at the end of a run."""
        out = list(self.held.values()) + [m for _, _, m in sorted(self.delayed)]
        self.held.clear()
        self.delayed.clear()
        self.counters.messages += len(out)
        return out

    # ---------------------------------------------------------------- commands
    def handle_command(self, cmd: Command, now: datetime) -> list[Outgoing]:
        """Carry out a command that reached meter ``cmd.meter_id`` at ``now``; return ack, state, reading."""
        i = self.model.index.get(cmd.meter_id)
        self.counters.commands += 1
        if i is None or not self.mqtt[i] or self.offline[i] or not self.model.powered[i]:
            self.counters.commands_ignored += 1  # not ours, or the meter cannot hear it
            return []
        out: list[Outgoing] = []
        mid = cmd.meter_id
        fate = self.faults.command(i)
        reason: str | None
        if cmd.expires_at is not None and now > cmd.expires_at:
            status, relay, reason = AckStatus.REJECTED, self.model.relay_state(i), "expired"
        else:
            outcome = self.model.command(i, cmd.action, cmd.params, now, relay_fails=fate.relay_fails)
            status, relay, reason = outcome.status, outcome.relay, outcome.reason
            if status is AckStatus.OK and cmd.action is Action.ARM and self.button_after_s is not None:
                when = now.timestamp() + self.button_after_s
                heapq.heappush(self.restore_at, (when, next(self.seq), "button", i))
        reported = _opposite(relay) if fate.wrong_state else relay
        if fate.ack_missing:
            self.counters.acks_missing += 1
        else:
            payload = formats.native_ack(cmd.command_id, status, reported, now, reason)
            ack = Outgoing(self.topics.meter(mid, "ack"), payload, 1, i, "ack")
            if fate.ack_delay_s:
                heapq.heappush(self.delayed, (now.timestamp() + fate.ack_delay_s, next(self.seq), ack))
            else:
                self._push(ack, out)
        if cmd.action is Action.READ_NOW:
            self._send_samples(i, [self._sample_now(i, now)], out)
        events = self.model.drain_events()  # this command's relay change
        for e in events:
            if self.offline[i]:
                self.pending_events.setdefault(i, []).append(e)
            else:
                self._push(self._events_message(i, [e]), out)
        if cmd.action is Action.STATUS or any(e.kind == "relay_change" for e in events):
            self._push(self._state_message(i, now), out)
        if any(e.kind == "relay_change" for e in events) and not self.offline[i]:
            self._device_relay(i, now, out)
        return out

    def reject_command(self, meter_id: str, command_id: str, reason: str, now: datetime) -> list[Outgoing]:
        """Answer a command the meter cannot understand (unknown action, bad version...)."""
        i = self.model.index.get(meter_id)
        self.counters.commands += 1
        if i is None or not self.mqtt[i] or self.offline[i] or not self.model.powered[i]:
            self.counters.commands_ignored += 1
            return []
        payload = formats.native_ack(command_id, AckStatus.REJECTED, self.model.relay_state(i), now, reason)
        out: list[Outgoing] = []
        self._push(Outgoing(self.topics.meter(meter_id, "ack"), payload, 1, i, "ack"), out)
        return out

    def _sample_now(self, i: int, now: datetime) -> Sample:
        v = self.model.values(i)
        skew = float(self.faults.skew_s[i])
        return Sample(
            now + timedelta(seconds=skew) if skew else now,
            v["1-0:1.8.0"],
            v["1-0:2.8.0"],
            v["1-0:16.7.0"],
            v["1-0:32.7.0"],
            v["1-0:31.7.0"],
        )

    def press_button(self, meter_id: str, now: datetime) -> list[Outgoing]:
        """The customer presses the button of a meter (e.g. after an arm)."""
        i = self.model.index[meter_id]
        self.model.press_button(i, now, relay_fails=self.faults.command(i).relay_fails)
        out: list[Outgoing] = []
        self._events(out)
        return out

    # ------------------------------------------------------------------ modbus
    def modbus_conn(self, i: int, connect: bool, now: datetime, *, relay_fails: bool = False) -> AckStatus:
        """A Modbus client wrote SunSpec ``Conn``: 0 opens the relay, 1 closes it."""
        action = Action.RECONNECT if connect else Action.DISCONNECT
        return self.model.command(i, action, None, now, relay_fails=relay_fails).status

    def meters(self, indices: Sequence[int]) -> list[str]:
        return [self.specs[i].meter_id for i in indices]
