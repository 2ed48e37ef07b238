"""The lake of Delta tables, the landing zone that feeds it, and its quality policy."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from loopwise.lake.tables import Lake


class LakeResource(dg.ConfigurableResource):
    """Where Delta tables and landing files live, and how many bad rows a partition may have."""

    uri: str
    landing_dir: str
    storage_options: dict[str, str] = {}
    max_bad_row_fraction: float = 0.05

    def lake(self) -> Lake:
        return Lake(self.uri, self.storage_options)

    def landing_root(self) -> Path:
        return Path(self.landing_dir)
