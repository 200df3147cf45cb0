"""The command lifecycle as one transition table ``{(state, event): next_state}`` (pure).

::

    requested ──needs_approval──▶ awaiting_approval ──approve──▶ scheduled
        │ schedule                      │ reject/cancel/expire        │ defer (stays)
        ▼                               ▼                             │ send (audit committed first)
    scheduled ◀──────────retry──────── sent ◀─────────────────────────┘
        │ cancel/expire                 │ confirm    ─▶ confirmed   (read-back agrees)
        ▼                               │ reject     ─▶ failed      (meter refused: keep-power mode…)
    cancelled / expired                 │ expire     ─▶ expired     (no answer before expiry)
                                        │ give_up    ─▶ unknown     (disagreement after the last attempt)
                                        │ hold       ─▶ scheduled   (load-side voltage: pending, clock runs)
    unknown ──confirm──▶ confirmed (a later read-back agrees) ; unknown ──cancel──▶ cancelled

An event not in the table raises :class:`TransitionError`: a command never jumps states.
Terminal states (confirmed, failed, expired, cancelled) accept nothing.
"""

from __future__ import annotations

from typing import Final, Literal

from control.errors import TransitionError

State = Literal[
    "requested", "awaiting_approval", "scheduled", "sent", "confirmed", "failed", "expired", "cancelled", "unknown"
]
Event = Literal[
    "needs_approval",
    "schedule",
    "approve",
    "reject",
    "cancel",
    "expire",
    "defer",
    "send",
    "confirm",
    "retry",
    "give_up",
    "hold",
]

STATES: Final[tuple[State, ...]] = (
    "requested",
    "awaiting_approval",
    "scheduled",
    "sent",
    "confirmed",
    "failed",
    "expired",
    "cancelled",
    "unknown",
)
TERMINAL: Final[frozenset[str]] = frozenset({"confirmed", "failed", "expired", "cancelled"})
# States a worker may pick up (after a restart too): nothing stays in them forever.
OPEN: Final[frozenset[str]] = frozenset({"requested", "awaiting_approval", "scheduled", "sent"})

TRANSITIONS: Final[dict[tuple[str, str], State]] = {
    ("requested", "needs_approval"): "awaiting_approval",
    ("requested", "schedule"): "scheduled",
    ("requested", "cancel"): "cancelled",
    ("awaiting_approval", "approve"): "scheduled",
    ("awaiting_approval", "reject"): "cancelled",
    ("awaiting_approval", "cancel"): "cancelled",
    ("awaiting_approval", "expire"): "expired",
    ("scheduled", "defer"): "scheduled",
    ("scheduled", "send"): "sent",
    ("scheduled", "cancel"): "cancelled",
    ("scheduled", "expire"): "expired",
    ("sent", "confirm"): "confirmed",
    ("sent", "reject"): "failed",
    ("sent", "expire"): "expired",
    ("sent", "retry"): "scheduled",
    ("sent", "give_up"): "unknown",
    ("sent", "hold"): "scheduled",
    ("unknown", "confirm"): "confirmed",
    ("unknown", "cancel"): "cancelled",
}


def next_state(state: str, event: str) -> State:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise TransitionError(f"no transition from {state!r} on {event!r}") from None
