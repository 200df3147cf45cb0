"""``/v1/stream``: Server-Sent Events of command state changes and balance changes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from api.auth import READERS, Principal, requires_briefly
from api.errors import ProblemRoute
from api.schemas import ID_PATTERN
from api.settings import ApiSettings
from api.stream import EventHub, frames

router = APIRouter(route_class=ProblemRoute, tags=["live"])
Readers = Annotated[Principal, Depends(requires_briefly(*READERS))]


@router.get(
    "/stream",
    summary="Live updates (text/event-stream): events command, balance, account_event",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "an endless event stream"}},
)
async def stream(
    request: Request,
    _: Readers,
    account_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    meter_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    command_id: Annotated[int | None, Query(ge=1, le=2**62, description="only this command's state changes")] = None,
    max_seconds: Annotated[float | None, Query(gt=0, le=86400, description="close the stream after this")] = None,
) -> StreamingResponse:
    hub: EventHub = request.app.state.hub
    settings: ApiSettings = request.app.state.settings
    sub = hub.subscribe()
    body = frames(
        hub,
        sub,
        account_id=account_id,
        meter_id=meter_id,
        command_id=command_id,
        keepalive_s=settings.api_sse_keepalive_s,
        max_seconds=max_seconds,
    )
    return StreamingResponse(
        body, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
