"""Sensors: the audit trail, the landing zone, data-path automation, the endpoint's live state, canary analysis
of running rollouts, and the closed loop (prediction monitoring and retraining)."""

from sensors.audit import audit_trail_sensor
from sensors.landing import data_path_automation, landing_sensor
from sensors.monitoring import model_retraining, prediction_monitor
from sensors.rollout import canary_analysis
from sensors.serving import endpoint_observer

SENSORS = [audit_trail_sensor, landing_sensor, data_path_automation, endpoint_observer, canary_analysis,
           prediction_monitor, model_retraining]

__all__ = ["SENSORS", "audit_trail_sensor", "canary_analysis", "data_path_automation", "endpoint_observer",
           "landing_sensor", "model_retraining", "prediction_monitor"]
