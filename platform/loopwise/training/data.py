"""From a training set (labels joined with features) to tensors: a stable split, features, embeddings."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import TensorDataset

from loopwise.contracts import CHANNELS

NUMERIC_FEATURES = (
    "orders_7d", "orders_30d", "orders_90d", "amount_eur_sum_30d", "amount_eur_sum_90d", "amount_eur_mean_90d",
    "refund_rate_90d", "cancel_rate_90d", "days_since_last_order", "tenure_days", "tickets_7d", "tickets_30d",
    "tickets_90d", "share_email_30d", "share_chat_30d", "share_phone_30d", "share_web_form_30d", "escalations_90d",
    "resolved_tickets_90d", "escalation_rate_90d",
)
FEATURE_NAMES = (*NUMERIC_FEATURES, *(f"channel_{c}" for c in CHANNELS), "has_order_history", "has_support_history")


def split_of(ticket_id: str, validation: float = 0.15, holdout: float = 0.15) -> str:
    """train, validation or holdout: stable per ticket, whatever else is in the data."""
    bucket = zlib.crc32(ticket_id.encode()) % 1000 / 1000
    return "holdout" if bucket < holdout else "validation" if bucket < holdout + validation else "train"


def feature_matrix(frame: pd.DataFrame) -> np.ndarray:
    """Numeric features (nulls as 0 with presence flags) and the ticket's channel, one-hot."""
    numeric = frame.reindex(columns=list(NUMERIC_FEATURES)).astype("float64")
    flags = np.stack([frame.reindex(columns=["orders_90d"])["orders_90d"].notna().to_numpy(),
                      frame.reindex(columns=["tickets_90d"])["tickets_90d"].notna().to_numpy()], axis=1)
    channels = np.stack([(frame["channel"] == c).to_numpy() for c in CHANNELS], axis=1)
    return np.concatenate([numeric.fillna(0.0).to_numpy(), channels, flags], axis=1).astype(np.float32)


@dataclass
class Prepared:
    """Tensors per split, and the feature standardization the model keeps."""

    splits: dict[str, TensorDataset]
    mean: torch.Tensor
    std: torch.Tensor
    frames: dict[str, pd.DataFrame]


def tokenize(tokenizer: object, texts: list[str], max_length: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention masks, for fine-tuning the encoder."""
    batch = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")  # type: ignore[operator]
    return batch["input_ids"], batch["attention_mask"]


def prepare(frame: pd.DataFrame, text: torch.Tensor | tuple[torch.Tensor, ...], label: str = "escalated") -> Prepared:
    """Split, build features, and attach each row's text: an embedding (frozen encoder) or token ids and mask."""
    features = torch.from_numpy(feature_matrix(frame))
    labels = torch.tensor(frame[label].astype("float32").to_numpy())
    split = frame["ticket_id"].map(split_of).to_numpy()
    train = torch.from_numpy(split == "train")
    mean, std = features[train].mean(0), features[train].std(0).clamp(min=1e-6)
    splits, frames = {}, {}
    for name in ("train", "validation", "holdout"):
        mask = torch.from_numpy(split == name)
        texts = text if isinstance(text, tuple) else (text,)
        splits[name] = TensorDataset(features[mask], *(t[mask] for t in texts), labels[mask])
        frames[name] = frame[split == name].reset_index(drop=True)
    return Prepared(splits, mean, std, frames)
