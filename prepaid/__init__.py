"""prepaid package."""
