"""The event hub's fan-out, filters, keep-alives and overflow, without a database."""

from __future__ import annotations

from api.stream import QUEUE_SIZE, Event, EventHub, frames, sse_frame


def test_sse_frame_format() -> None:
    frame = sse_frame(7, Event("command", {"id": 1, "state": "sent"}))
    assert frame == 'id: 7\nevent: command\ndata: {"id":1,"state":"sent"}\n\n'


async def test_filters_and_end_on_close() -> None:
    hub = EventHub("postgresql://unused")
    sub = hub.subscribe()
    hub.publish(Event("balance", {"account_id": "A-2", "balance_minor": 1}))
    hub.publish(Event("balance", {"account_id": "A-1", "balance_minor": 2}))
    hub.publish(Event("command", {"id": 5, "account_id": "A-1", "meter_id": "M-1", "state": "sent"}))
    hub.publish(Event("command", {"id": 6, "account_id": "A-1", "meter_id": "M-1", "state": "sent"}))
    hub.close()
    out = [
        f
        async for f in frames(hub, sub, account_id="A-1", meter_id=None, command_id=5, keepalive_s=5, max_seconds=None)
    ]
    assert out == [
        ": connected\n\n",
        sse_frame(1, Event("command", {"id": 5, "account_id": "A-1", "meter_id": "M-1", "state": "sent"})),
    ]


async def test_slow_subscriber_overflows_and_is_dropped() -> None:
    hub = EventHub("postgresql://unused")
    slow, other = hub.subscribe(), hub.subscribe()
    for n in range(QUEUE_SIZE + 1):
        hub.publish(Event("balance", {"account_id": "A-1", "n": n}))
    assert slow.overflowed and other.overflowed
    hub.publish(Event("balance", {"account_id": "A-1", "n": -1}))  # dropped subscribers get nothing more
    out = [f async for f in frames(hub, slow, account_id=None, meter_id=None, keepalive_s=5, max_seconds=None)]
    assert out[0] == ": connected\n\n" and "event: overflow" in out[-1] and len(out) == 2


async def test_keepalive_then_deadline() -> None:
    hub = EventHub("postgresql://unused")
    sub = hub.subscribe()
    out = [f async for f in frames(hub, sub, account_id=None, meter_id=None, keepalive_s=0.05, max_seconds=0.18)]
    assert out[0] == ": connected\n\n"
    assert out.count(": keep-alive\n\n") >= 2
