"""Errors of the simulators package.

SimulatorError
 +-- InvalidTransition   a relay event that is not in the transition table
 +-- ScenarioError       a scenario file is missing, unreadable or invalid
 +-- ProfileError        a load profile is unknown or its data cannot be loaded
"""

from headend.errors import HeadendError


class SimulatorError(HeadendError):
    """Base of the simulators' errors."""


class InvalidTransition(SimulatorError):
    """The relay cannot take this event in its current state."""


class ScenarioError(SimulatorError):
    """A scenario file is invalid."""


class ProfileError(SimulatorError):
    """A load profile is unknown or its data cannot be loaded."""
