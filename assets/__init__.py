"""The software-defined assets of the lineage graph, grouped by stage."""

from assets.bronze import BRONZE_ASSETS
from assets.features import FEATURE_ASSETS
from assets.raw import RAW_ASSETS
from assets.silver import SILVER_ASSETS
from assets.training import TRAINING_ASSETS

DATA_LAYER_ASSETS = [*RAW_ASSETS, *BRONZE_ASSETS, *SILVER_ASSETS]
ALL_ASSETS = [*DATA_LAYER_ASSETS, *FEATURE_ASSETS, *TRAINING_ASSETS]

__all__ = ["ALL_ASSETS", "BRONZE_ASSETS", "DATA_LAYER_ASSETS", "FEATURE_ASSETS", "RAW_ASSETS", "SILVER_ASSETS", "TRAINING_ASSETS"]
