"""Asset jobs and schedules."""

from jobs.data_layer import data_layer_job, data_layer_schedule

__all__ = ["data_layer_job", "data_layer_schedule"]
