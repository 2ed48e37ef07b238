"""The daily data-layer job: landing files to silver tables, one day (or a backfill) per run."""

import dagster as dg

from assets.features import FEATURE_TABLE_ASSETS
from assets.partitions import DAILY

data_layer_job = dg.define_asset_job(
    "data_layer",
    selection=dg.AssetSelection.groups("raw", "bronze", "silver")
    | dg.AssetSelection.assets(*FEATURE_TABLE_ASSETS, "online_features"),
    partitions_def=DAILY,
    description="Ingest each source's landing file, validate it into bronze (quarantining bad rows), conform to "
                "silver, compute the day's features and push them to the online store.",
)

# Off by default: the landing zone is filled by `loopwise land` in the embedded profile.
data_layer_schedule = dg.build_schedule_from_partitioned_job(data_layer_job, hour_of_day=2)
