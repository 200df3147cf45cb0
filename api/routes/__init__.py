"""The API's routers. ``system`` (/health, /metrics) is mounted at the root; ROUTERS under /v1."""

from __future__ import annotations

from fastapi import APIRouter

ROUTERS: list[APIRouter] = []
