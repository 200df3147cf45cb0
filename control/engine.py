"""The control engine: turns account events into plans and commands, and carries commands out.

This is the shell around the pure guard (control/guard.py) and lifecycle (control/lifecycle.py):

* **events** (:meth:`Engine.process_events`): account_events are handled exactly once across
  control processes (control_processed_events, inserted in the handling transaction).
  ``emergency_credit_started`` opens a plan and sends the pending-disconnection notice with the
  earliest execution time; ``credit_exhausted`` adds the disconnect command (scheduled at that
  time) and its final reminder; ``credit_restored`` / ``protection_added`` / ``dispute_opened``
  cancel the plan and, if supply is off, issue a reconnect (arm by default) at once.
* **dispatch** (:meth:`Engine.dispatch_due`): due commands are leased with ``FOR UPDATE SKIP
  LOCKED``; every guard is re-checked immediately before sending; the audit row and the move
  to ``sent`` are committed before anything is published; the relay is read back; a
  disagreement after the last attempt gives UNKNOWN and a field work order, never a false
  "disconnected". An expired disconnect is never resent: a new command (new idempotency key)
  is made and goes through the guards again. A ``sent`` command whose worker died is read back
  first.
* **timers** (:meth:`Engine.check_timers`, :meth:`Engine.recheck_unknown`): armed meters not
  pressed within the armed timeout are escalated (SLA breach); UNKNOWN meters are read back.

The parts live in control/planner.py, control/dispatcher.py and control/watch.py; their
shared base and settings in control/runtime.py.
"""

from __future__ import annotations

from control.dispatcher import Dispatcher
from control.planner import Planner
from control.runtime import EVENT_KINDS, RATE_LIMITED, TARGET_RELAY, EngineBase, EngineSettings, FeederLock
from control.watch import Watch

__all__ = [
    "EVENT_KINDS",
    "RATE_LIMITED",
    "TARGET_RELAY",
    "Engine",
    "EngineBase",
    "EngineSettings",
    "FeederLock",
]


class Engine(Planner, Dispatcher, Watch):
    """Plans, dispatches and watches (see the modules above).

    ``connect()`` yields an **autocommit** connection (``pool.connection`` of a pool made with
    ``kwargs={"autocommit": True}``): every ``conn.transaction()`` is then a real BEGIN/COMMIT,
    which is what makes "audit committed before the command leaves" true.
    """
