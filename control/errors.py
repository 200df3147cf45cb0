"""Errors of the control package.

ControlError
 +-- PolicyError           a policy document is invalid or looser than its jurisdiction floor
 +-- TransitionError       a command lifecycle event that is not allowed in the command's state
 +-- CommandNotFound       no command with that id
 +-- ApprovalError         an approval that breaks the rules (own request, no approver role, wrong state)
 +-- AuditUnavailable      the audit record could not be committed: nothing may be sent
 +-- AuditChainBroken      ``verify`` found a row whose hash does not match the chain
 +-- DispatchError         a transport (MQTT / Modbus) failed before the meter answered
"""

from __future__ import annotations


class ControlError(Exception):
    """Base of the control package's errors."""


class PolicyError(ControlError):
    """A policy document is invalid, or less strict than its jurisdiction floor."""


class TransitionError(ControlError):
    """A command lifecycle event that the transition table does not allow."""


class CommandNotFound(ControlError):
    """No command with that id."""


class ApprovalError(ControlError):
    """An approval that breaks the rules (own request, no approver role, wrong state)."""


class AuditUnavailable(ControlError):
    """The audit record could not be committed; the command must not be sent."""


class AuditChainBroken(ControlError):
    """The audit hash chain does not verify."""


class DispatchError(ControlError):
    """A transport failed before the meter answered."""
