"""The one training loop: CPU or CUDA (bf16 autocast), gradient accumulation, early stopping,
deterministic seeds, a progress bar, a checkpoint each epoch and resume after a kill, and
data-parallel training over torchrun's ranks (DDP: gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, TensorDataset


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 8
    batch_size: int = 64  # per rank: the global batch under DDP is batch_size * WORLD_SIZE
    learning_rate: float = 1e-3
    encoder_learning_rate: float = 2e-5  # used when the encoder is fine-tuned
    gradient_accumulation: int = 1
    patience: int = 2
    seed: int = 7
    device: str = "auto"  # auto: CUDA when present, else CPU; under DDP on CUDA always cuda:{LOCAL_RANK}
    # DDP over torchrun's RANK/LOCAL_RANK/WORLD_SIZE (gloo on CPU, nccl on CUDA). Also switched on by
    # torchrun's WORLD_SIZE > 1 alone: N ranks training N independent copies into one checkpoint_dir is never wanted.
    distributed: bool = False
    progress: bool = True


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float  # mean over every rank's samples
    val_loss: float  # over the whole validation set, the same on every rank
    samples_per_second: float  # all ranks together


@dataclass
class TrainResult:
    history: list[EpochMetrics]
    best_epoch: int
    device: str
    resumed_from: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    world_size: int = 1

    @property
    def best_val_loss(self) -> float:
        return min(h.val_loss for h in self.history)


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in a data-parallel run; a single process is rank 0 of 1."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    distributed: bool = False

    @property
    def writes(self) -> bool:
        """Only rank 0 writes checkpoints: the ranks hold the same weights, and N writers would race."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def all_reduce(self, values: list[float], device: torch.device, op: str = "sum") -> list[float]:
        """The sums (or maxima) of `values` over every rank; the values themselves in one process."""
        if not self.distributed:
            return values
        import torch.distributed as dist

        # float64 on the collective's device (nccl reduces only CUDA tensors); every rank gets the same bits back
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return tensor.tolist()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def _torchrun_env() -> tuple[int, int, int]:
    """RANK, LOCAL_RANK and WORLD_SIZE as torchrun sets them (0, 0, 1 outside torchrun)."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")),
            int(os.environ.get("WORLD_SIZE", "1")))


def setup_ranks(config: TrainConfig, device: torch.device) -> tuple[Ranks, torch.device]:
    """Join torchrun's process group when configured (or when WORLD_SIZE > 1) and pin this rank's device."""
    rank, local_rank, world_size = _torchrun_env()
    if not (config.distributed or world_size > 1):
        return Ranks(), device
    import torch.distributed as dist

    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local_rank} has no GPU: {torch.cuda.device_count()} visible "
                               f"(run torchrun with --nproc-per-node <= {torch.cuda.device_count()})")
        device = torch.device("cuda", local_rank)  # without this every rank lands on cuda:0
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # torchrun sets MASTER_ADDR/MASTER_PORT; the defaults serve a lone process (WORLD_SIZE 1) started without it
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29511")
        # device_id binds nccl to this rank's GPU up front, so its barriers need not guess which one
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", world_size=world_size, rank=rank,
                                device_id=device if device.type == "cuda" else None)
    return Ranks(dist.get_rank(), local_rank, dist.get_world_size(), distributed=True), device


def _loss(model: nn.Module, batch: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Batches are (features, labels) for a tabular model, (features, embedding, labels) with a frozen
    encoder, or (features, ids, mask, labels) when the encoder is fine-tuned."""
    tensors = [t.to(device, non_blocking=True) for t in batch]
    features, labels = tensors[0], tensors[-1]
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        if len(tensors) == 2:
            logits = model(features)
        elif len(tensors) == 3:
            logits = model(features, tensors[1])
        elif len(tensors) == 4:
            logits = model(features, input_ids=tensors[1], attention_mask=tensors[2])
        else:
            raise ValueError(f"a batch of {len(tensors)} tensors: expected (features, labels), "
                             "(features, embedding, labels) or (features, input_ids, attention_mask, labels)")
    return nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)


@torch.no_grad()
def _loss_sum(model: nn.Module, data: Dataset, device: torch.device, batch_size: int) -> tuple[float, int]:
    model.eval()
    total, n = 0.0, 0
    for batch in DataLoader(data, batch_size=batch_size):
        total += float(_loss(model, batch, device)) * len(batch[0])
        n += len(batch[0])
    return total, n


def evaluate_loss(model: nn.Module, data: TensorDataset, device: torch.device, batch_size: int = 512) -> float:
    total, n = _loss_sum(model, data, device, batch_size)
    return total / max(n, 1)


def _validation_loss(model: nn.Module, data: TensorDataset, device: torch.device, ranks: Ranks) -> float:
    """Each rank scores its own 1/N of the validation set (no padding, unlike DistributedSampler) and the
    sums are all-reduced: every rank gets the same loss, so their early-stopping decisions agree."""
    shard = Subset(data, range(ranks.rank, len(data), ranks.world_size)) if ranks.distributed else data
    total, n = ranks.all_reduce(list(map(float, _loss_sum(model, shard, device, batch_size=512))), device)
    return total / max(n, 1.0)


def train(model: nn.Module, train_data: TensorDataset, val_data: TensorDataset, config: TrainConfig,
          checkpoint_dir: Path) -> TrainResult:
    """Train until early stopping; resume from `checkpoint_dir/last.pt` if a previous run was killed.

    Under torchrun every rank calls this with the same arguments; rank 0 alone writes the checkpoints,
    which every rank reads back, so `checkpoint_dir` must be visible to all of them (one node, or a shared volume).
    """
    from tqdm import tqdm

    seed_everything(config.seed)
    ranks, device = setup_ranks(config, pick_device(config.device))
    model.to(device)
    groups = [{"params": [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("encoder.")],
               "lr": config.learning_rate}]
    encoder_params = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("encoder.")]
    if encoder_params:
        groups.append({"params": encoder_params, "lr": config.encoder_learning_rate})
    optimizer = torch.optim.AdamW(groups)

    last, best = checkpoint_dir / "last.pt", checkpoint_dir / "best.pt"
    if ranks.writes:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    history: list[EpochMetrics] = []
    start, resumed_from, best_loss, stale = 1, None, float("inf"), 0
    ranks.barrier()  # rank 0 has made checkpoint_dir; every rank now decides on resuming from the same last.pt
    if last.exists():
        state = torch.load(last, map_location=device, weights_only=False)
        if state["config"] == asdict(config):
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            history = [EpochMetrics(**h) for h in state["history"]]
            torch.set_rng_state(state["rng"].cpu())
            start = resumed_from = state["epoch"] + 1
            best_loss, stale = state["best_loss"], state["stale"]
    # After loading: DDP broadcasts rank 0's weights at construction, and buckets the gradients it all-reduces.
    wrapped: nn.Module = (nn.parallel.DistributedDataParallel(model, device_ids=[ranks.local_rank]
                                                              if device.type == "cuda" else None)
                          if ranks.distributed else model)

    # One sampler for one process and for N ranks: the epoch's permutation is the same, and rank r takes every
    # N-th sample of it, so N ranks at batch_size b step on exactly the global batches one process sees at N*b.
    sampler: DistributedSampler[Any] = DistributedSampler(train_data, num_replicas=ranks.world_size, rank=ranks.rank,
                                                          shuffle=True, seed=config.seed)
    for epoch in range(start, config.epochs + 1):
        if stale >= config.patience:
            break
        sampler.set_epoch(epoch)  # the same batches whether or not the run was resumed
        loader = DataLoader(train_data, batch_size=config.batch_size, sampler=sampler,
                            pin_memory=device.type == "cuda")
        wrapped.train()
        started, seen, total = time.perf_counter(), 0, 0.0
        optimizer.zero_grad()
        bar = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", disable=not config.progress or not ranks.writes,
                   leave=False)
        for step, batch in enumerate(bar, start=1):
            steps = step % config.gradient_accumulation == 0 or step == len(loader)
            # Micro-batches that do not step accumulate locally: one all-reduce per optimizer step, not per batch.
            with wrapped.no_sync() if ranks.distributed and not steps else nullcontext():  # type: ignore[operator]
                loss = _loss(wrapped, batch, device) / config.gradient_accumulation
                loss.backward()
            if steps:
                optimizer.step()
                optimizer.zero_grad()
            total += float(loss.detach()) * config.gradient_accumulation * len(batch[0])
            seen += len(batch[0])
            bar.set_postfix(loss=f"{total / seen:.4f}")
        total, seen_all = ranks.all_reduce([total, float(seen)], device)
        (elapsed,) = ranks.all_reduce([time.perf_counter() - started], device, op="max")
        val_loss = _validation_loss(model, val_data, device, ranks)
        history.append(EpochMetrics(epoch, total / max(seen_all, 1.0), val_loss, seen_all / elapsed))
        if val_loss < best_loss - 1e-6:
            best_loss, stale = val_loss, 0
            if ranks.writes:
                torch.save(model.state_dict(), best)
        else:
            stale += 1
        if ranks.writes:
            torch.save({"config": asdict(config), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "history": [asdict(h) for h in history], "epoch": epoch, "rng": torch.get_rng_state(),
                        "best_loss": best_loss, "stale": stale}, last.with_suffix(".tmp"))
            last.with_suffix(".tmp").replace(last)  # a kill mid-save leaves the previous checkpoint intact
    ranks.barrier()  # rank 0 has finished writing best.pt before any rank reads it
    if best.exists():
        model.load_state_dict(torch.load(best, map_location=device, weights_only=True))
    best_epoch = min(history, key=lambda h: h.val_loss).epoch if history else 0
    return TrainResult(history, best_epoch, str(device), resumed_from, world_size=ranks.world_size)
