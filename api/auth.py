"""API keys and roles.

A key is a random token (``hdk_`` + 43 url-safe characters) shown once at creation;
the database stores only its SHA-256 (``api_keys.token_sha256``). A request
presents it as ``Authorization: Bearer <token>`` or ``X-API-Key: <token>``.

Roles (fixed; a key has exactly one):

| role       | may |
|------------|-----|
| admin      | everything, including tariff and policy versions |
| operator   | read everything; register service points/meters; request and cancel commands; |
|            | resolve billing holds; replay quarantine; record notice delivery receipts |
| approver   | read everything; approve (and cancel) commands — never their own request |
| integrator | top-ups only (create, reverse, look up) |
| customer   | only its own accounts (``api_keys.account_ids``); another account answers 404 |

A missing, unknown or revoked key is 401; a role not allowed on a route is 403.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

import psycopg
from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from api.deps import Conn
from api.errors import Forbidden, NotFound, Unauthorized

TOKEN_PREFIX = "hdk_"


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    APPROVER = "approver"
    INTEGRATOR = "integrator"
    CUSTOMER = "customer"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id, name, role and (customers) the accounts it may see."""

    key_id: int
    name: str
    role: Role
    account_ids: frozenset[str] = frozenset()

    @property
    def actor(self) -> str:
        """The person recorded as requested_by / approved_by / resolved_by: the key's name.

        A person's keys share one name, so nobody approves their own request with a second key.
        """
        return self.name

    def may_see_account(self, account_id: str) -> bool:
        if self.role is Role.CUSTOMER:
            return account_id in self.account_ids
        return self.role is not Role.INTEGRATOR


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# Groups of roles used by the routes.
READERS = (Role.ADMIN, Role.OPERATOR, Role.APPROVER)
OPERATORS = (Role.ADMIN, Role.OPERATOR)
ADMINS = (Role.ADMIN,)
APPROVERS = (Role.ADMIN, Role.APPROVER)
INTEGRATORS = (Role.ADMIN, Role.INTEGRATOR)
ACCOUNT_READERS = (Role.ADMIN, Role.OPERATOR, Role.APPROVER, Role.CUSTOMER)

_bearer = HTTPBearer(auto_error=False, description="API key as a bearer token")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key")

# (connection, token SHA-256) -> the key's Principal, or None when unknown or revoked.
KeyLookup = Callable[[psycopg.AsyncConnection[Any], str], Awaitable[Principal | None]]


def _check(request: Request, principal: Principal | None, allowed: frozenset[Role]) -> Principal:
    if principal is None:
        raise Unauthorized("unknown or revoked API key")
    if principal.role not in allowed:
        raise Forbidden(f"role {principal.role.value} may not use this route")
    request.state.principal = principal
    return principal


def _token(bearer: HTTPAuthorizationCredentials | None, api_key: str | None) -> str:
    token = bearer.credentials if bearer is not None else api_key
    if not token:
        raise Unauthorized("an API key is required (Authorization: Bearer <token> or X-API-Key)")
    return token


def requires(*roles: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the caller's Principal if its key is valid and its role is one of ``roles``.

    The lookup uses the request's own pooled connection (the route's ``Conn``).
    """
    allowed = frozenset(roles)

    async def dependency(
        request: Request,
        conn: Conn,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        api_key: Annotated[str | None, Depends(_api_key)],
    ) -> Principal:
        token = _token(bearer, api_key)
        lookup: KeyLookup = request.app.state.key_lookup
        return _check(request, await lookup(conn, hash_token(token)), allowed)

    return dependency


def requires_briefly(*roles: Role) -> Callable[..., Awaitable[Principal]]:
    """Like :func:`requires`, for long-lived responses (SSE): the lookup borrows a pooled
    connection only for the lookup, so an open stream holds no database connection."""
    allowed = frozenset(roles)

    async def dependency(
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        api_key: Annotated[str | None, Depends(_api_key)],
    ) -> Principal:
        token = _token(bearer, api_key)
        lookup: KeyLookup = request.app.state.key_lookup
        async with request.app.state.pool.connection() as conn:
            principal = await lookup(conn, hash_token(token))
        return _check(request, principal, allowed)

    return dependency


# The routes' caller parameters, one per group of roles (``who: Operators``).
Readers = Annotated[Principal, Depends(requires(*READERS))]
AccountReaders = Annotated[Principal, Depends(requires(*ACCOUNT_READERS))]
Operators = Annotated[Principal, Depends(requires(*OPERATORS))]
Approvers = Annotated[Principal, Depends(requires(*APPROVERS))]
Admins = Annotated[Principal, Depends(requires(*ADMINS))]
Integrators = Annotated[Principal, Depends(requires(*INTEGRATORS))]


def ensure_account_visible(principal: Principal, account_id: str) -> None:
    """Customers see only their own accounts: anything else is 'not found', never the data."""
    if not principal.may_see_account(account_id):
        raise NotFound(f"account {account_id} not found")


def principal_from_row(row: dict[str, Any]) -> Principal:
    return Principal(
        key_id=int(row["id"]),
        name=str(row["name"]),
        role=Role(row["role"]),
        account_ids=frozenset(row["account_ids"] or ()),
    )
