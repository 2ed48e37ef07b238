"""The landing zone: landing a use case's synthetic feed with malformed rows, and reading files as landed."""
