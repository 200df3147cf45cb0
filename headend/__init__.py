"""headend: smart-meter head-end and prepaid control service.

This package holds what the service packages share: settings, the database
connection and migrations, the backoff generator and the ``headend`` CLI.
"""
