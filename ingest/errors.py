"""Errors of the ingest package.

IngestError
 +-- DecodeError        a payload could not be accepted; carries a stable ``reason``
 |                      code (the quarantine reason, see docs/interfaces.md §1.5)
 +-- RegisterMapError   a Modbus register block does not hold the expected map
 +-- PollError          a Modbus poll failed (timeout, connection, exception response)
"""

from __future__ import annotations


class IngestError(Exception):
    """Base of the ingest errors."""


class DecodeError(IngestError):
    """A payload that goes to quarantine. ``reason`` is a stable code, ``detail`` free text."""

    def __init__(self, reason: str, detail: str = "", meter_id: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.meter_id = meter_id

    @property
    def quarantine_reason(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


class RegisterMapError(IngestError):
    """A register block does not match the map (no SunS marker, model missing, bad length)."""


class PollError(IngestError):
    """A Modbus poll failed."""
