"""Errors of the API and the ONE place where every error becomes an HTTP answer.

Every error leaves the API as ``application/problem+json`` (RFC 9457)::

    {"type": "urn:headend:problem:not-found", "title": "Not Found", "status": 404,
     "detail": "account A-9 not found", "instance": "/v1/accounts/A-9", "code": "not-found"}

Validation errors add ``errors``: ``[{"field": "body.amount_minor", "message": "..."}]``.

ApiError                    (status, code)
 +-- Unauthorized           401 missing, unknown or revoked API key
 +-- Forbidden              403 the key's role may not use this route
 +-- NotFound               404 no such resource (or not visible to this customer)
 +-- Conflict               409 state conflict (duplicate id, idempotency key in flight)
 +-- Unprocessable          422 well-formed but refused (bad reference, idempotency body mismatch)
 +-- ServiceUnavailable     503 a dependency (database) is down

Domain errors of the other packages (``prepaid.errors``, ``control.errors``,
``ingest.errors``, ``headend.errors``) are mapped by class in DOMAIN_STATUS,
walking the exception's MRO so a subclass inherits its base's status; an
unlisted domain error falls back on its class name (…NotFound → 404,
…Conflict/…Duplicate → 409, …Forbidden/…NotAllowed/…SelfApproval → 403,
anything else 422). psycopg integrity errors are client mistakes (409/422), a lost
database is 503. Anything else is a 500 whose detail names no internals.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Coroutine
from typing import Any

import psycopg
import psycopg.errors
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    415: "Unsupported Media Type",
    502: "Bad Gateway",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}


class ApiError(Exception):
    """Base of the API's own errors: an HTTP status, a short code and a message."""

    status = 500
    code = "internal"

    def __init__(self, detail: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.extra = extra


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class NotFound(ApiError):
    status = 404
    code = "not-found"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class Unprocessable(ApiError):
    status = 422
    code = "unprocessable"


class ServiceUnavailable(ApiError):
    status = 503
    code = "service-unavailable"


# "module.QualName" of a domain error -> HTTP status. Bases cover their subclasses.
DOMAIN_STATUS: dict[str, int] = {
    "headend.errors.DatabaseUnavailable": 503,
    "headend.errors.MigrationError": 503,
    # prepaid (prepaid/errors.py)
    "prepaid.errors.TariffError": 422,
    "prepaid.errors.NotFound": 404,
    "prepaid.errors.Conflict": 409,
    "prepaid.errors.InvalidRequest": 422,
    # control (control/errors.py)
    "control.errors.PolicyError": 422,
    "control.errors.TransitionError": 409,
    "control.errors.CommandNotFound": 404,
    "control.errors.ApprovalError": 403,
    "control.errors.AuditUnavailable": 503,
    "control.errors.AuditChainBroken": 503,
    "control.errors.DispatchError": 502,
    # ingest (ingest/errors.py)
    "ingest.errors.DecodeError": 422,
}
_DOMAIN_PACKAGES = ("prepaid.", "control.", "ingest.", "headend.", "simulators.")
_NAME_RULES: tuple[tuple[re.Pattern[str], int], ...] = (
    (re.compile(r"NotFound$|Missing$|Unknown\w*$"), 404),
    (re.compile(r"Conflict|Duplicate|Transition|AlreadyExists|State$"), 409),
    (re.compile(r"Forbidden|NotAllowed|SelfApproval|Permission"), 403),
    (re.compile(r"Unavailable$"), 503),
)


def _slug(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def domain_status(exc: BaseException) -> int | None:
    """The HTTP status of a domain error of another package, or None if it is not one."""
    for cls in type(exc).__mro__:
        key = f"{cls.__module__}.{cls.__qualname__}"
        if key in DOMAIN_STATUS:
            return DOMAIN_STATUS[key]
    if not type(exc).__module__.startswith(_DOMAIN_PACKAGES):
        return None
    name = type(exc).__name__
    for pattern, status in _NAME_RULES:
        if pattern.search(name):
            return status
    return 422


def problem(
    request: Request | None,
    status: int,
    detail: str,
    *,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """An application/problem+json response."""
    slug = code or _slug(_TITLES.get(status, "error").replace(" ", ""))
    body: dict[str, Any] = {
        "type": f"urn:headend:problem:{slug}",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": slug,
    }
    if request is not None:
        body["instance"] = request.url.path
    body.update(extra)
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="headend"'
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers or None)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc)


def validation_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        msg = str(err.get("msg", "invalid"))
        if err.get("type") == "json_invalid":
            msg = f"request body is not valid JSON: {err.get('ctx', {}).get('error', msg)}"
        out.append({"field": _field(loc) or "body", "message": msg})
    return out


async def _on_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return problem(request, exc.status, exc.detail, code=exc.code, **exc.extra)


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = validation_errors(exc)
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
    return problem(request, 422, f"invalid request: {summary}", code="validation", errors=errors)


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return problem(request, exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))


def _psycopg_status(exc: psycopg.Error) -> tuple[int, str, str]:
    if isinstance(exc, psycopg.errors.UniqueViolation):
        return 409, "conflict", "a resource with this identity already exists"
    if isinstance(exc, psycopg.errors.ForeignKeyViolation):
        return 422, "unknown-reference", "a referenced resource does not exist"
    if isinstance(exc, psycopg.errors.CheckViolation | psycopg.errors.NotNullViolation):
        return 422, "constraint", "a value is outside what the resource allows"
    if isinstance(exc, psycopg.DataError):
        return 422, "invalid-value", "a value cannot be stored (out of range or malformed)"
    if isinstance(exc, psycopg.OperationalError | psycopg.errors.AdminShutdown):
        return 503, "database-unavailable", "the database is unavailable"
    return 500, "internal", "internal error"


async def _on_unhandled(request: Request, exc: Exception) -> JSONResponse:
    status = domain_status(exc)
    if status is not None:
        return problem(request, status, str(exc) or type(exc).__name__, code=_slug(type(exc).__name__))
    if isinstance(exc, psycopg.Error):
        status, code, detail = _psycopg_status(exc)
        diag = getattr(exc, "diag", None)
        constraint = getattr(diag, "constraint_name", None) if diag is not None else None
        if status >= 500:
            logger.error("database error on %s %s: %s", request.method, request.url.path, exc)
        elif constraint:
            detail = f"{detail} (constraint {constraint})"
        return problem(request, status, detail, code=code)
    # psycopg_pool.PoolTimeout and friends
    if type(exc).__module__.startswith("psycopg_pool"):
        return problem(request, 503, "the database is unavailable", code="database-unavailable")
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(request, 500, "internal error", code="internal")


class ProblemRoute(APIRoute):
    """A route that turns every error raised by its endpoint or dependencies into problem+json.

    (A plain ``Exception`` handler would answer but Starlette re-raises it to the server.)
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except (ApiError, RequestValidationError, StarletteHTTPException):
                raise
            except Exception as exc:
                return await _on_unhandled(request, exc)

        return guarded


def install(app: FastAPI) -> None:
    """Register every handler on the app: the one place errors become HTTP."""
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(Exception, _on_unhandled)
