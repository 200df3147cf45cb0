"""The relay state machine and command decisions of one meter."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulators.errors import InvalidTransition
from simulators.meter import (
    TRANSITIONS,
    AckStatus,
    Action,
    MeterFlags,
    RelayEvent,
    RelayState,
    decide_command,
    press_button,
    transition,
)

C, D, A, L = RelayState.CONNECTED, RelayState.DISCONNECTED, RelayState.ARMED, RelayState.LOAD_LIMITED


def test_every_pair_is_in_the_table_or_raises() -> None:
    for state, event in itertools.product(RelayState, RelayEvent):
        if (state, event) in TRANSITIONS:
            assert transition(state, event) is TRANSITIONS[(state, event)]
        else:
            with pytest.raises(InvalidTransition):
                transition(state, event)


@pytest.mark.parametrize(
    ("start", "events", "end"),
    [
        pytest.param(C, ["disconnect"], D, id="disconnect"),
        pytest.param(C, ["disconnect", "arm"], A, id="arm-after-disconnect"),
        pytest.param(C, ["disconnect", "arm", "button"], C, id="button-closes-armed"),
        pytest.param(C, ["disconnect", "button"], D, id="button-does-nothing-when-open"),
        pytest.param(C, ["disconnect", "reconnect"], C, id="direct-reconnect"),
        pytest.param(C, ["load_limit", "reconnect"], L, id="reconnect-keeps-limit"),
        pytest.param(C, ["load_limit", "clear_load_limit"], C, id="clear-limit"),
        pytest.param(C, ["load_limit", "disconnect", "arm", "button"], C, id="limit-then-cut-then-back"),
    ],
)
def test_paths(start: RelayState, events: list[str], end: RelayState) -> None:
    state = start
    for e in events:
        state = transition(state, RelayEvent(e))
    assert state is end


def test_load_limit_on_open_relay_is_invalid() -> None:
    with pytest.raises(InvalidTransition):
        transition(D, RelayEvent.LOAD_LIMIT)
    out = decide_command(MeterFlags(D, supports_load_limit=True), Action.LOAD_LIMIT, {"limit_w": 1000})
    assert out.status is AckStatus.REJECTED and out.reason == "invalid_state" and out.relay is D


@pytest.mark.parametrize(
    ("flags", "action", "params", "status", "relay", "reason"),
    [
        pytest.param(MeterFlags(C), Action.DISCONNECT, None, AckStatus.OK, D, None, id="ok"),
        pytest.param(
            MeterFlags(C, keep_power=True),
            Action.DISCONNECT,
            None,
            AckStatus.REJECTED,
            C,
            "keep_power_mode",
            id="keep-power",
        ),
        pytest.param(
            MeterFlags(D, load_side_voltage=True),
            Action.RECONNECT,
            None,
            AckStatus.REJECTED,
            D,
            "load_side_voltage",
            id="load-side-voltage",
        ),
        pytest.param(
            MeterFlags(D, load_side_voltage=True),
            Action.ARM,
            None,
            AckStatus.OK,
            A,
            None,
            id="arm-allowed-with-voltage",
        ),
        pytest.param(
            MeterFlags(C, relay_fails=True),
            Action.DISCONNECT,
            None,
            AckStatus.FAILED,
            C,
            "relay_did_not_operate",
            id="relay-fails",
        ),
        pytest.param(
            MeterFlags(C, has_relay=False), Action.DISCONNECT, None, AckStatus.REJECTED, C, "no_relay", id="no-relay"
        ),
        pytest.param(
            MeterFlags(C),
            Action.LOAD_LIMIT,
            {"limit_w": 1000},
            AckStatus.REJECTED,
            C,
            "load_limit_unsupported",
            id="no-limiting",
        ),
        pytest.param(
            MeterFlags(C, supports_load_limit=True),
            Action.LOAD_LIMIT,
            {"limit_w": "x"},
            AckStatus.REJECTED,
            C,
            "invalid_limit_w",
            id="bad-limit",
        ),
        pytest.param(
            MeterFlags(C, supports_load_limit=True),
            Action.LOAD_LIMIT,
            {"limit_w": 1000},
            AckStatus.OK,
            L,
            None,
            id="limit",
        ),
        pytest.param(MeterFlags(D), Action.STATUS, None, AckStatus.OK, D, None, id="status"),
        pytest.param(MeterFlags(D), Action.DISCONNECT, None, AckStatus.OK, D, None, id="idempotent"),
    ],
)
def test_decide_command(flags, action, params, status, relay, reason) -> None:
    out = decide_command(flags, action, params)
    assert (out.status, out.relay, out.reason) == (status, relay, reason)


def test_button_refused_with_load_side_voltage() -> None:
    assert press_button(MeterFlags(A, load_side_voltage=True)).status is AckStatus.REJECTED
    assert press_button(MeterFlags(A)).relay is C
    assert press_button(MeterFlags(D)).relay is D


@given(st.lists(st.sampled_from(list(Action)), max_size=30), st.booleans(), st.booleans())
def test_decisions_only_follow_the_table(actions, keep_power, voltage) -> None:
    state = C
    for action in actions:
        flags = MeterFlags(state, supports_load_limit=True, keep_power=keep_power, load_side_voltage=voltage)
        out = decide_command(flags, action, {"limit_w": 500})
        if out.status is AckStatus.OK and out.relay is not state:
            assert TRANSITIONS[(state, RelayEvent(action.value))] is out.relay
        else:
            assert out.relay is state
        if keep_power:
            assert out.relay is not D or state is D
        if voltage and state in (D, A):
            assert out.relay in (D, A)
        state = out.relay
