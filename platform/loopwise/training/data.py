"""From a training set (labelled rows joined with features) to tensors: the input layout, a stable split.

The layout is derived from the Feast feature service (the one place feature names are written)
and the model's declared request-time inputs; it is logged with the model, so serving builds
exactly the matrix training saw.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import TensorDataset

from loopwise.usecase import ModelSpec


@dataclass(frozen=True)
class InputLayout:
    """A model's input columns in order: service features, a presence flag per view, request-time inputs."""

    features: tuple[str, ...]
    presence: tuple[tuple[str, str], ...] = ()  # (flag, a feature of the view): the view had no row when it is null
    numeric: tuple[str, ...] = ()
    categorical: dict[str, tuple[str, ...]] = field(default_factory=dict)
    text: str | None = None

    @property
    def names(self) -> list[str]:
        return [*self.features, *(flag for flag, _ in self.presence), *self.numeric,
                *(f"{column}={level}" for column, levels in self.categorical.items() for level in levels)]

    @property
    def columns(self) -> list[str]:
        """The columns a frame must hold to be scored (features, then request-time inputs)."""
        return [*self.features, *self.numeric, *self.categorical, *([self.text] if self.text else [])]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> InputLayout:
        raw = json.loads(text)
        return cls(tuple(raw["features"]), tuple(tuple(p) for p in raw["presence"]), tuple(raw["numeric"]),
                   {k: tuple(v) for k, v in raw["categorical"].items()}, raw["text"])


def layout_for(store: Any, spec: ModelSpec) -> InputLayout:
    """The layout of a declared model: its Feast feature service's features and its request-time inputs."""
    service = store.get_feature_service(spec.feature_service)
    features: list[str] = []
    presence: list[tuple[str, str]] = []
    for projection in service.feature_view_projections:
        names = [f.name for f in projection.features]
        features += names
        if names:
            presence.append((f"has_{projection.name}", names[0]))
    return InputLayout(tuple(features), tuple(presence), tuple(spec.numeric), dict(spec.categorical), spec.text)


def split_of(key: str, validation: float = 0.15, holdout: float = 0.15) -> str:
    """train, validation or holdout: stable per key, whatever else is in the data."""
    bucket = zlib.crc32(str(key).encode()) % 1000 / 1000
    return "holdout" if bucket < holdout else "validation" if bucket < holdout + validation else "train"


def feature_matrix(frame: pd.DataFrame, layout: InputLayout) -> np.ndarray:
    """Numeric features (nulls as 0, with a presence flag per view), numeric inputs, one-hot categoricals."""
    floats = {c: frame[c].to_numpy(dtype="float64", na_value=np.nan) for c in (*layout.features, *layout.numeric)
              if c in frame}  # a feature the frame lacks is null
    return matrix_of({**floats, **{c: frame[c].to_numpy(dtype=object) for c in layout.categorical}}, layout, len(frame))


def matrix_of(columns: dict[str, np.ndarray], layout: InputLayout, rows: int) -> np.ndarray:
    """`feature_matrix` of columns already as arrays (features and numeric inputs float64, a null as NaN;
    categoricals object), with no pandas: a micro-batch's scoring is built from its requests this way."""
    def floats(names: tuple[str, ...]) -> np.ndarray:
        missing = np.full(rows, np.nan)
        return np.column_stack([columns.get(name, missing) for name in names]) if names else np.empty((rows, 0))

    features = floats(layout.features)
    present = ~np.isnan(features)
    parts = [np.where(present, features, 0.0)]
    if layout.presence:
        position = {name: i for i, name in enumerate(layout.features)}
        parts.append(present[:, [position[column] for _, column in layout.presence]])
    if layout.numeric:
        numeric = floats(layout.numeric)
        parts.append(np.where(np.isnan(numeric), 0.0, numeric))
    for column, levels in layout.categorical.items():
        parts.append(np.asarray(columns[column], dtype=object)[:, None] == np.array(levels, dtype=object)[None, :])
    return np.concatenate(parts, axis=1).astype(np.float32)


@dataclass
class Prepared:
    """Tensors per split, the feature standardization the model keeps, and each split's rows."""

    splits: dict[str, TensorDataset]
    mean: torch.Tensor
    std: torch.Tensor
    frames: dict[str, pd.DataFrame]


def tokenize(tokenizer: object, texts: list[str], max_length: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention masks, for fine-tuning the encoder."""
    batch = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")  # type: ignore[operator]
    return batch["input_ids"], batch["attention_mask"]


def prepare(frame: pd.DataFrame, layout: InputLayout, label: str, split_key: str,
            text: torch.Tensor | tuple[torch.Tensor, ...] | None = None) -> Prepared:
    """Split by key, build the input matrix, attach each row's text (an embedding, or token ids and mask)."""
    features = torch.from_numpy(feature_matrix(frame, layout))
    labels = torch.tensor(frame[label].astype("float32").to_numpy())
    split = frame[split_key].map(split_of).to_numpy()
    train = torch.from_numpy(split == "train")
    mean, std = features[train].mean(0), features[train].std(0).clamp(min=1e-6)
    texts = () if text is None else text if isinstance(text, tuple) else (text,)
    splits, frames = {}, {}
    for name in ("train", "validation", "holdout"):
        mask = torch.from_numpy(split == name)
        splits[name] = TensorDataset(features[mask], *(t[mask] for t in texts), labels[mask])
        frames[name] = frame[split == name].reset_index(drop=True)
    return Prepared(splits, mean, std, frames)
