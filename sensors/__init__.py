"""Sensors: the audit trail, the landing zone and data-path automation; drift and canary analysis follow."""

from sensors.audit import audit_trail_sensor
from sensors.landing import data_path_automation, landing_sensor

SENSORS = [audit_trail_sensor, landing_sensor, data_path_automation]

__all__ = ["SENSORS", "audit_trail_sensor", "data_path_automation", "landing_sensor"]
