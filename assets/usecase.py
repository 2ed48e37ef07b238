"""The use case the lineage graph is generated from: the profile's `use_case` package."""

from loopwise.config import load_settings
from loopwise.usecase import load

USE_CASE = load(load_settings().use_case)
