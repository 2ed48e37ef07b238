"""Asset jobs and schedules."""

from jobs.data_layer import data_layer_job, data_layer_schedule
from jobs.training import TRAINING_JOBS

__all__ = ["TRAINING_JOBS", "data_layer_job", "data_layer_schedule"]
