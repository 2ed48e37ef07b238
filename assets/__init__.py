"""The software-defined assets of the lineage graph, generated from the use case's declarations."""

from assets.bronze import BRONZE_ASSETS
from assets.features import FEATURE_ASSETS
from assets.models import MODEL_ASSETS
from assets.monitoring import MONITORING_ASSETS
from assets.raw import RAW_ASSETS
from assets.silver import SILVER_ASSETS

DATA_LAYER_ASSETS = [*RAW_ASSETS, *BRONZE_ASSETS, *SILVER_ASSETS]
ALL_ASSETS = [*DATA_LAYER_ASSETS, *FEATURE_ASSETS, *MODEL_ASSETS, *MONITORING_ASSETS]

__all__ = ["ALL_ASSETS", "BRONZE_ASSETS", "DATA_LAYER_ASSETS", "FEATURE_ASSETS", "MODEL_ASSETS", "MONITORING_ASSETS",
           "RAW_ASSETS", "SILVER_ASSETS"]
