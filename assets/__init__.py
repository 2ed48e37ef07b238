"""The software-defined assets of the lineage graph, generated from the use case's declarations."""

import dagster as dg

from assets.bronze import BRONZE_ASSETS
from assets.features import FEATURE_ASSETS, FEATURE_TABLE_ASSETS
from assets.models import MODEL_ASSETS
from assets.monitoring import MONITORING_ASSETS
from assets.raw import RAW_ASSETS
from assets.silver import SILVER_ASSETS

DATA_LAYER_ASSETS = [*RAW_ASSETS, *BRONZE_ASSETS, *SILVER_ASSETS]
ALL_ASSETS = [*DATA_LAYER_ASSETS, *FEATURE_ASSETS, *MODEL_ASSETS, *MONITORING_ASSETS]
# A landed day's whole data path, raw to the online store: every asset a day's partition runs through.
DATA_PATH = dg.AssetSelection.groups("raw", "bronze", "silver") | dg.AssetSelection.assets(*FEATURE_TABLE_ASSETS,
                                                                                          "online_features")

__all__ = ["ALL_ASSETS", "BRONZE_ASSETS", "DATA_LAYER_ASSETS", "DATA_PATH", "FEATURE_ASSETS", "MODEL_ASSETS", "MONITORING_ASSETS",
           "RAW_ASSETS", "SILVER_ASSETS"]
