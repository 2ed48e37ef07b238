"""What a team declares to run on Loopwise: its sources, feature tables, models and synthetic feed.

The engine and the Dagster layer are generic; everything about one domain lives in a use-case
package (the reference one is `supportdesk`) that exposes `USE_CASE`. The profile's `use_case`
names the package, so a team replaces it by configuration, never by editing the engine.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from loopwise.contracts import SourceContract
from loopwise.lake.tables import DateRange

if TYPE_CHECKING:
    import pandas as pd
    from pydantic import BaseModel
    from pyspark.sql import DataFrame
    from torch import nn

# Reads a source's silver table (by the source's name) for a window, or whole when the window is
# None; the engine pins and records the Delta version it read, for lineage.
Reader = Callable[[str, DateRange | None], "DataFrame"]


@dataclass(frozen=True)
class Source:
    """A landed source: its contract (raw -> bronze) and its silver transform (bronze -> silver)."""

    contract: SourceContract
    silver: Callable[[DataFrame], DataFrame]
    silver_description: str

    @property
    def name(self) -> str:
        return self.contract.name


@dataclass(frozen=True)
class FeatureTable:
    """A daily feature table: one row per entity and day, feeding one Feast feature view.

    `build(read, window)` returns the rows for every day of `window`, with `event_timestamp` and
    `partition_date`; `read` gives silver tables (by source name) for any window it needs.
    """

    name: str
    view: str
    reads: tuple[str, ...]
    build: Callable[[Reader, DateRange], DataFrame]
    description: str


@dataclass(frozen=True)
class Outcomes:
    """Where a model's labels land once known: a silver source with the split key and the label column.

    Read without Spark (a Delta read of two columns), so rollout analysis and performance tracking can join
    served predictions to their outcomes as they arrive.
    """

    source: str
    label: str


@dataclass(frozen=True)
class ModelSpec:
    """A model, declared once: the engine and the Dagster layer derive everything else from it.

    `rows(read)` returns the labelled entity rows: the feature service's join keys,
    `event_timestamp` (the as-of time of the features), `label`, `split_key`, `partition_date` and
    every request-time input. The feature list is the Feast feature service's, nowhere else.
    """

    name: str
    feature_service: str
    rows: Callable[[Reader], DataFrame]
    reads: tuple[str, ...]
    label: str
    split_key: str
    module: Callable[[int], nn.Module]  # number of inputs -> a module mapping them to one logit
    text: str | None = None  # a request-time text input, embedded by the engine's MiniLM encoder
    categorical: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # request-time inputs, one-hot
    numeric: tuple[str, ...] = ()  # request-time numeric inputs
    segments: Mapping[str, str] = field(default_factory=dict)  # name -> pandas query over holdout rows
    segment_by: tuple[str, ...] = ()  # one segment per value of each of these columns
    request: type[BaseModel] | None = None  # what a caller sends to predict
    outcomes: Outcomes | None = None  # where labels of served predictions arrive (joined on split_key)
    task: str = "binary"
    description: str = ""

    @property
    def slug(self) -> str:
        """The model's name as an identifier: asset keys, groups, table names."""
        return self.name.replace("-", "_")

    @property
    def training_table(self) -> str:
        return f"training_set_{self.slug}"

    @property
    def inputs(self) -> list[str]:
        """Every request-time input a caller sends besides the entity keys."""
        return [*([self.text] if self.text else []), *self.categorical, *self.numeric]


@dataclass(frozen=True)
class Feed:
    """A synthetic feed of the use case, for the demo and tests: every source's clean rows for a day."""

    generate: Callable[[date, int, int, str | None], dict[str, pd.DataFrame]]  # (day, rows, seed, drift)
    drift_aspects: Mapping[str, str] = field(default_factory=dict)  # what --drift accepts


@dataclass(frozen=True)
class UseCase:
    name: str
    sources: tuple[Source, ...]
    feature_tables: tuple[FeatureTable, ...]
    models: tuple[ModelSpec, ...]
    feed: Feed
    feature_repo: Path

    def source(self, name: str) -> Source:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(f"unknown source {name!r}; {self.name} declares {[s.name for s in self.sources]}")

    def feature_table(self, name: str) -> FeatureTable:
        for t in self.feature_tables:
            if t.name == name:
                return t
        raise KeyError(f"unknown feature table {name!r}; {self.name} declares {[t.name for t in self.feature_tables]}")

    def model(self, name: str) -> ModelSpec:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"unknown model {name!r}; {self.name} declares {[m.name for m in self.models]}")

    @property
    def contracts(self) -> dict[str, SourceContract]:
        return {s.name: s.contract for s in self.sources}


class UseCaseError(ImportError):
    """The configured use-case package cannot be imported or declares nothing usable."""


def load(package: str) -> UseCase:
    """The `USE_CASE` that a use-case package declares."""
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise UseCaseError(f"use case {package!r} cannot be imported ({exc}); set `use_case` in the profile "
                           "(or LOOPWISE__USE_CASE) to an importable package that defines USE_CASE") from exc
    use_case = getattr(module, "USE_CASE", None)
    if not isinstance(use_case, UseCase):
        raise UseCaseError(f"package {package!r} defines no USE_CASE (a loopwise.usecase.UseCase)")
    return use_case
