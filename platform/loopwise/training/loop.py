"""The one training loop: CPU or CUDA (bf16 autocast), gradient accumulation, early stopping,
deterministic seeds, a progress bar, a checkpoint each epoch and resume after a kill, and
data-parallel training (torchrun/DDP) by configuration.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 8
    batch_size: int = 64
    learning_rate: float = 1e-3
    encoder_learning_rate: float = 2e-5  # used when the encoder is fine-tuned
    gradient_accumulation: int = 1
    patience: int = 2
    seed: int = 7
    device: str = "auto"  # auto: CUDA when present, else CPU
    distributed: bool = False  # DDP over torchrun's WORLD_SIZE/RANK (gloo on CPU, nccl on CUDA)
    progress: bool = True


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    val_loss: float
    samples_per_second: float


@dataclass
class TrainResult:
    history: list[EpochMetrics]
    best_epoch: int
    device: str
    resumed_from: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def best_val_loss(self) -> float:
        return min(h.val_loss for h in self.history)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def _distributed(config: TrainConfig, device: torch.device) -> bool:
    if not config.distributed:
        return False
    import torch.distributed as dist

    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29511")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                world_size=int(os.environ.get("WORLD_SIZE", "1")), rank=int(os.environ.get("RANK", "0")))
    return True


def _loss(model: nn.Module, batch: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Batches are (features, embedding, labels) with a frozen encoder, or (features, ids, mask, labels)."""
    tensors = [t.to(device, non_blocking=True) for t in batch]
    features, labels = tensors[0], tensors[-1]
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        if len(tensors) == 4:
            logits = model(features, input_ids=tensors[1], attention_mask=tensors[2])
        else:
            logits = model(features, tensors[1])
    return nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)


@torch.no_grad()
def evaluate_loss(model: nn.Module, data: TensorDataset, device: torch.device, batch_size: int = 512) -> float:
    model.eval()
    total, n = 0.0, 0
    for batch in DataLoader(data, batch_size=batch_size):
        total += float(_loss(model, batch, device)) * len(batch[0])
        n += len(batch[0])
    return total / max(n, 1)


def train(model: nn.Module, train_data: TensorDataset, val_data: TensorDataset, config: TrainConfig,
          checkpoint_dir: Path) -> TrainResult:
    """Train until early stopping; resume from `checkpoint_dir/last.pt` if a previous run was killed."""
    from tqdm import tqdm

    seed_everything(config.seed)
    device = pick_device(config.device)
    model.to(device)
    distributed = _distributed(config, device)
    wrapped: nn.Module = nn.parallel.DistributedDataParallel(model) if distributed else model
    groups = [{"params": [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("encoder.")],
               "lr": config.learning_rate}]
    encoder_params = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("encoder.")]
    if encoder_params:
        groups.append({"params": encoder_params, "lr": config.encoder_learning_rate})
    optimizer = torch.optim.AdamW(groups)

    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    last, best = checkpoint_dir / "last.pt", checkpoint_dir / "best.pt"
    history: list[EpochMetrics] = []
    start, resumed_from, best_loss, stale = 1, None, float("inf"), 0
    if last.exists():
        state = torch.load(last, weights_only=False)
        if state["config"] == asdict(config):
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            history = [EpochMetrics(**h) for h in state["history"]]
            torch.set_rng_state(state["rng"])
            start = resumed_from = state["epoch"] + 1
            best_loss, stale = state["best_loss"], state["stale"]

    generator = torch.Generator().manual_seed(config.seed)
    sampler = DistributedSampler(train_data, seed=config.seed) if distributed else None
    for epoch in range(start, config.epochs + 1):
        if stale >= config.patience:
            break
        generator.manual_seed(config.seed + epoch)  # the same batches whether or not the run was resumed
        if sampler is not None:
            sampler.set_epoch(epoch)
        loader = DataLoader(train_data, batch_size=config.batch_size, shuffle=sampler is None, sampler=sampler,
                            generator=generator, pin_memory=device.type == "cuda")
        wrapped.train()
        started, seen, total = time.perf_counter(), 0, 0.0
        optimizer.zero_grad()
        bar = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", disable=not config.progress, leave=False)
        for step, batch in enumerate(bar, start=1):
            loss = _loss(wrapped, batch, device) / config.gradient_accumulation
            loss.backward()
            if step % config.gradient_accumulation == 0 or step == len(loader):
                optimizer.step()
                optimizer.zero_grad()
            total += float(loss.detach()) * config.gradient_accumulation * len(batch[0])
            seen += len(batch[0])
            bar.set_postfix(loss=f"{total / seen:.4f}")
        val_loss = evaluate_loss(model, val_data, device)
        history.append(EpochMetrics(epoch, total / max(seen, 1), val_loss, seen / (time.perf_counter() - started)))
        if val_loss < best_loss - 1e-6:
            best_loss, stale = val_loss, 0
            torch.save(model.state_dict(), best)
        else:
            stale += 1
        torch.save({"config": asdict(config), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "history": [asdict(h) for h in history], "epoch": epoch, "rng": torch.get_rng_state(),
                    "best_loss": best_loss, "stale": stale}, last.with_suffix(".tmp"))
        last.with_suffix(".tmp").replace(last)  # a kill mid-save leaves the previous checkpoint intact
    if best.exists():
        model.load_state_dict(torch.load(best, weights_only=True))
    best_epoch = min(history, key=lambda h: h.val_loss).epoch if history else 0
    return TrainResult(history, best_epoch, str(device), resumed_from)
