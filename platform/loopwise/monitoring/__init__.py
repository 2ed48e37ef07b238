"""Monitoring: drift statistics of a day's data against a reference profiled once."""

from loopwise.monitoring.drift import (
    ColumnDrift,
    ColumnKind,
    ColumnTest,
    DriftConfig,
    DriftReport,
    ReferenceProfile,
    check_drift,
    profile_reference,
)
from loopwise.monitoring.text import Embed, minilm_embed

__all__ = ["ColumnDrift", "ColumnKind", "ColumnTest", "DriftConfig", "DriftReport", "Embed", "ReferenceProfile",
           "check_drift", "minilm_embed", "profile_reference"]
