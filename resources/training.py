"""How models train: epochs, batches, device, and the pod a training run asks Kubernetes for."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:
    from loopwise.training.loop import TrainConfig


class TrainingResource(dg.ConfigurableResource):
    """The profile's `training.*`, read when the definitions are built, not when a module is imported."""

    epochs: int = 8
    batch_size: int = 64
    learning_rate: float = 1e-3
    gradient_accumulation: int = 1
    patience: int = 2
    seed: int = 7
    device: str = "auto"
    distributed: bool = False
    freeze_encoder: bool = True
    checkpoint_dir: str
    embedding_dir: str  # a frozen text encoder's embeddings, cached by content hash (training/embeddings.py)
    runtime_dir: str | None = None  # exported encoders (shared with the service): CPU embeddings by ONNX Runtime

    def config(self) -> TrainConfig:
        from loopwise.training.loop import TrainConfig  # torch loads where training runs, not with the definitions

        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, learning_rate=self.learning_rate,
                           gradient_accumulation=self.gradient_accumulation, patience=self.patience, seed=self.seed,
                           device=self.device, distributed=self.distributed, progress=False)
