"""Sensors: the audit trail now; freshness, drift and canary analysis with the issues that need them."""

from sensors.audit import audit_trail_sensor

__all__ = ["audit_trail_sensor"]
