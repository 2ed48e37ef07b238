"""Sensors: freshness, drift and canary analysis (arrive with the issues that need them)."""
