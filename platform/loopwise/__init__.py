"""Loopwise engine."""
