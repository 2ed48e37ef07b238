"""Sensors: the audit trail, the landing zone, data-path automation, the endpoint's live state; drift and
canary analysis follow."""

from sensors.audit import audit_trail_sensor
from sensors.landing import data_path_automation, landing_sensor
from sensors.serving import endpoint_observer

SENSORS = [audit_trail_sensor, landing_sensor, data_path_automation, endpoint_observer]

__all__ = ["SENSORS", "audit_trail_sensor", "data_path_automation", "endpoint_observer", "landing_sensor"]
