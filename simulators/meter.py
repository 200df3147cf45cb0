"""One meter's rules: the relay state machine, command decisions, supplied power, register rollover.

Pure: no I/O, no clock. The fleet (``simulators/fleet.py``) keeps the state of many meters
in arrays and asks these functions what happens.

Relay transition table (``TRANSITIONS``; a pair not in it raises ``InvalidTransition``)::

    state \\ event   disconnect    arm           reconnect     button        load_limit    clear_load_limit
    connected       disconnected  connected     connected     connected     load_limited  connected
    disconnected    disconnected  armed         connected     disconnected  -             -
    armed           disconnected  armed         connected     connected     -             -
    load_limited    disconnected  load_limited  load_limited  load_limited  load_limited  connected

- ``armed`` is "ready for reconnection": the relay stays open until the customer presses
  the button (``armed`` + ``button`` -> ``connected``).
- ``load_limited``: the relay is closed but supply is cut to ``limit_w``; reconnect does not lift
  the limit, ``clear_load_limit`` does.
- Supply (``supplied_power_w``): connected = demand; load_limited = min(demand, limit);
  disconnected/armed = 0 (no import and no export through an open relay).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from simulators.errors import InvalidTransition

FloatArray = npt.NDArray[np.float64]


class RelayState(IntEnum):
    """Relay states; the int value is the code kept in the fleet's arrays."""

    CONNECTED = 0
    DISCONNECTED = 1
    ARMED = 2
    LOAD_LIMITED = 3

    @property
    def wire(self) -> str:
        """The name on the wire (docs/interfaces.md §1.4)."""
        return self.name.lower()


class RelayEvent(StrEnum):
    DISCONNECT = "disconnect"
    ARM = "arm"
    RECONNECT = "reconnect"
    BUTTON = "button"
    LOAD_LIMIT = "load_limit"
    CLEAR_LOAD_LIMIT = "clear_load_limit"


_C, _D, _A, _L = RelayState.CONNECTED, RelayState.DISCONNECTED, RelayState.ARMED, RelayState.LOAD_LIMITED
_E = RelayEvent
TRANSITIONS: dict[tuple[RelayState, RelayEvent], RelayState] = {
    (_C, _E.DISCONNECT): _D,
    (_C, _E.ARM): _C,
    (_C, _E.RECONNECT): _C,
    (_C, _E.BUTTON): _C,
    (_C, _E.LOAD_LIMIT): _L,
    (_C, _E.CLEAR_LOAD_LIMIT): _C,
    (_D, _E.DISCONNECT): _D,
    (_D, _E.ARM): _A,
    (_D, _E.RECONNECT): _C,
    (_D, _E.BUTTON): _D,
    (_A, _E.DISCONNECT): _D,
    (_A, _E.ARM): _A,
    (_A, _E.RECONNECT): _C,
    (_A, _E.BUTTON): _C,
    (_L, _E.DISCONNECT): _D,
    (_L, _E.ARM): _L,
    (_L, _E.RECONNECT): _L,
    (_L, _E.BUTTON): _L,
    (_L, _E.LOAD_LIMIT): _L,
    (_L, _E.CLEAR_LOAD_LIMIT): _C,
}


def transition(state: RelayState, event: RelayEvent) -> RelayState:
    """The next relay state; raises ``InvalidTransition`` for a pair not in the table."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(f"{event.value} is not possible while {state.wire}") from None


class Action(StrEnum):
    """Command actions (docs/interfaces.md §1.4)."""

    DISCONNECT = "disconnect"
    ARM = "arm"
    RECONNECT = "reconnect"
    LOAD_LIMIT = "load_limit"
    CLEAR_LOAD_LIMIT = "clear_load_limit"
    READ_NOW = "read_now"
    STATUS = "status"


RELAY_ACTIONS: dict[Action, RelayEvent] = {
    Action.DISCONNECT: RelayEvent.DISCONNECT,
    Action.ARM: RelayEvent.ARM,
    Action.RECONNECT: RelayEvent.RECONNECT,
    Action.LOAD_LIMIT: RelayEvent.LOAD_LIMIT,
    Action.CLEAR_LOAD_LIMIT: RelayEvent.CLEAR_LOAD_LIMIT,
}


class AckStatus(StrEnum):
    OK = "ok"
    REJECTED = "rejected"
    FAILED = "failed"


@dataclass(frozen=True)
class MeterFlags:
    """The facts about one meter a command decision depends on."""

    relay: RelayState
    has_relay: bool = True
    supports_load_limit: bool = False
    keep_power: bool = False  # keep-power mode: trips are refused
    load_side_voltage: bool = False  # voltage on the load side: closing is refused
    relay_fails: bool = False  # fault: the relay does not move (ack "failed")


@dataclass(frozen=True)
class CommandOutcome:
    """What a meter does with a command: the ack status, the relay after it, and why."""

    status: AckStatus
    relay: RelayState
    reason: str | None = None
    limit_w: float | None = None

    @property
    def changed(self) -> bool:
        return self.status is AckStatus.OK


def decide_command(flags: MeterFlags, action: Action, params: dict[str, Any] | None = None) -> CommandOutcome:
    """Decide a command against a meter's state. Never raises for a bad command: it is rejected."""
    params = params or {}
    if action in (Action.READ_NOW, Action.STATUS):
        return CommandOutcome(AckStatus.OK, flags.relay)
    event = RELAY_ACTIONS[action]
    if not flags.has_relay:
        return CommandOutcome(AckStatus.REJECTED, flags.relay, "no_relay")
    limit_w: float | None = None
    if action is Action.LOAD_LIMIT:
        if not flags.supports_load_limit:
            return CommandOutcome(AckStatus.REJECTED, flags.relay, "load_limit_unsupported")
        raw = params.get("limit_w")
        if isinstance(raw, bool) or not isinstance(raw, int | float) or raw <= 0:
            return CommandOutcome(AckStatus.REJECTED, flags.relay, "invalid_limit_w")
        limit_w = float(raw)
    if flags.keep_power and action in (Action.DISCONNECT, Action.LOAD_LIMIT):
        return CommandOutcome(AckStatus.REJECTED, flags.relay, "keep_power_mode")
    try:
        target = transition(flags.relay, event)
    except InvalidTransition:
        return CommandOutcome(AckStatus.REJECTED, flags.relay, "invalid_state")
    closes = flags.relay in (RelayState.DISCONNECTED, RelayState.ARMED) and target in (
        RelayState.CONNECTED,
        RelayState.LOAD_LIMITED,
    )
    if closes and flags.load_side_voltage:
        return CommandOutcome(AckStatus.REJECTED, flags.relay, "load_side_voltage")
    if flags.relay_fails and target != flags.relay:
        return CommandOutcome(AckStatus.FAILED, flags.relay, "relay_did_not_operate")
    return CommandOutcome(AckStatus.OK, target, None, limit_w)


def press_button(flags: MeterFlags) -> CommandOutcome:
    """The customer presses the meter's button: an armed relay closes (unless refused)."""
    target = transition(flags.relay, RelayEvent.BUTTON)
    if target == flags.relay:
        return CommandOutcome(AckStatus.OK, target)
    if flags.load_side_voltage:
        return CommandOutcome(AckStatus.REJECTED, flags.relay, "load_side_voltage")
    if flags.relay_fails:
        return CommandOutcome(AckStatus.FAILED, flags.relay, "relay_did_not_operate")
    return CommandOutcome(AckStatus.OK, target)


_CLOSED = np.array([1.0, 0.0, 0.0, 1.0])  # indexed by RelayState code


def supplied_power_w(
    demand_w: FloatArray, relay: npt.NDArray[np.int8], limit_w: FloatArray, powered: npt.NDArray[np.bool_]
) -> FloatArray:
    """Net power through the meter (import positive, export negative), after the relay and supply.

    An open relay or a power failure passes nothing; a load limit caps import (not export).
    """
    closed = _CLOSED[relay] * powered
    capped = np.where(relay == RelayState.LOAD_LIMITED, np.minimum(demand_w, limit_w), demand_w)
    out: FloatArray = capped * closed
    return out


def wrap_register(value_wh: FloatArray, register_max_wh: FloatArray) -> FloatArray:
    """Roll a cumulative register over at its maximum: the register shows ``value mod max``.

    Matches ``headend.registers.advance_wh``: the advance across a rollover is ``max - prev + next``.
    """
    out: FloatArray = np.where(value_wh >= register_max_wh, np.mod(value_wh, register_max_wh), value_wh)
    return out
