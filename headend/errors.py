"""Errors of the shared layer.

HeadendError
 +-- MigrationError      a migration file failed or the migrations folder is missing
 +-- DatabaseUnavailable the database could not be reached
"""


class HeadendError(Exception):
    """Base of the shared layer's errors."""


class MigrationError(HeadendError):
    """A migration could not be applied."""


class DatabaseUnavailable(HeadendError):
    """The database could not be reached."""
