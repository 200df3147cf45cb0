"""Errors of the prepaid package.

PrepaidError
 +-- TariffError           a tariff definition or version is invalid (api: 422)
 +-- NotFound              an account, plan, top-up or meter does not exist (api: 404)
 +-- Conflict              the request conflicts with the current state (api: 409)
 |    +-- TopupConflict    the same (channel, reference) was used with other values
 |    +-- AlreadyReversed  a top-up was reversed before
 +-- InvalidRequest        a value is out of range (api: 422)
"""

from __future__ import annotations


class PrepaidError(Exception):
    """Base of the prepaid package's errors."""


class TariffError(PrepaidError):
    """A tariff definition or version is invalid."""


class NotFound(PrepaidError):
    """The thing asked for does not exist."""


class Conflict(PrepaidError):
    """The request conflicts with the current state."""


class TopupConflict(Conflict):
    """The same (channel, reference) was already used for a different account or amount."""


class AlreadyReversed(Conflict):
    """The top-up was already reversed."""


class InvalidRequest(PrepaidError):
    """A value is out of range."""
