"""The landing zone: synthetic daily feeds, malformed rows, and reading files as landed."""
