"""Data-parallel training is real: two torchrun ranks on gloo learn what one process learns, and only rank 0 writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Trains a tiny MLP (forward(features) -> logits of shape (batch,)) on a synthetic, learnable, deterministic
# problem and reports, per rank, its history and every file it handed to torch.save.
SCRIPT = """
import json, os, sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from loopwise.training.loop import TrainConfig, train

out, batch_size, distributed, checkpoint_dir = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "ddp", Path(sys.argv[4])
rank = int(os.environ.get("RANK", "0"))
written = []
_save = torch.save


def recording_save(obj, f, *args, **kwargs):
    written.append(str(f))
    return _save(obj, f, *args, **kwargs)


torch.save = recording_save


class TinyMLP(nn.Module):
    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_features, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)


def synthetic(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = ((x @ torch.linspace(-1.0, 1.0, 8) + 0.3 * torch.randn(n, generator=g)) > 0).float()
    return TensorDataset(x, y)


torch.manual_seed(0)
model = TinyMLP(8)
config = TrainConfig(epochs=5, batch_size=batch_size, learning_rate=1e-2, patience=99, seed=3, device="cpu",
                     distributed=distributed, progress=False)
result = train(model, synthetic(512, 1), synthetic(200, 2), config, checkpoint_dir)
(out / f"rank{rank}.json").write_text(json.dumps({
    "world_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
    "resumed_from": result.resumed_from, "written": written,
    "train_loss": [h.train_loss for h in result.history], "val_loss": [h.val_loss for h in result.history],
    "weights": [float(p.detach().double().sum()) for p in model.parameters()],
}))
if torch.distributed.is_initialized():
    torch.distributed.destroy_process_group()
"""

GLOBAL_BATCH = 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(tmp_path: Path, name: str, ranks: int) -> dict[int, dict]:
    """Train in one process (ranks=1) or under torchrun; return each rank's report."""
    script, out = tmp_path / "train_tiny.py", tmp_path / name
    script.write_text(SCRIPT)
    out.mkdir(exist_ok=True)
    # One thread per process in both runs, so the matmuls sum in the same order (torchrun would set it anyway).
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_CONNECT_")} | {"OMP_NUM_THREADS": "1"}
    args = [str(out), str(GLOBAL_BATCH // ranks), "ddp" if ranks > 1 else "single", str(tmp_path / f"{name}-ckpt")]
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
                 "--master-addr", "127.0.0.1", "--master-port", str(_free_port())] if ranks > 1 else [sys.executable])
    done = subprocess.run([*launcher, str(script), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return {int(p.stem.removeprefix("rank")): json.loads(p.read_text()) for p in out.glob("rank*.json")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, dict], dict[int, dict]]:
    tmp_path = tmp_path_factory.mktemp("ddp")
    return tmp_path, _run(tmp_path, "single", ranks=1), _run(tmp_path, "ddp", ranks=2)


def test_two_ranks_learn_what_one_process_learns(runs) -> None:  # type: ignore[no-untyped-def]
    _, single, ddp = runs
    one, two = single[0], ddp[0]
    assert set(ddp) == {0, 1} and two["world_size"] == 2 and one["world_size"] == 1
    assert two["train_loss"][-1] < two["train_loss"][0] * 0.8  # it learns
    # Both ranks hold the same validation loss (all-reduced), so their early-stopping decisions agree.
    assert ddp[1]["val_loss"] == two["val_loss"] and ddp[1]["train_loss"] == two["train_loss"]
    # Each rank sees every 2nd sample of the epoch's permutation at half the batch size, so the two ranks step on
    # exactly the global batches of the single process, and DDP's averaged gradient is the full batch's mean
    # gradient. What is left is float32 summation order (two half-batch means averaged vs one mean, the validation
    # loss summed per shard): measured 1e-8 on the losses and 1e-7 on the weight sums after 80 steps. 1e-5 leaves
    # 1000x for other CPUs and still fails on any real difference (another permutation moves the losses by 7e-3).
    assert two["train_loss"] == pytest.approx(one["train_loss"], abs=1e-5)
    assert two["val_loss"] == pytest.approx(one["val_loss"], abs=1e-5)
    assert two["weights"] == pytest.approx(one["weights"], abs=1e-4)


def test_only_rank_zero_writes_checkpoints(runs) -> None:  # type: ignore[no-untyped-def]
    tmp_path, _, ddp = runs
    assert ddp[1]["written"] == []
    assert {Path(f).name for f in ddp[0]["written"]} == {"best.pt", "last.tmp"}
    assert sorted(p.name for p in (tmp_path / "ddp-ckpt").iterdir()) == ["best.pt", "last.pt"]


def test_every_rank_resumes_from_rank_zeros_checkpoint(runs) -> None:  # type: ignore[no-untyped-def]
    tmp_path, _, ddp = runs
    again = _run(tmp_path, "ddp", ranks=2)  # the same checkpoint_dir: the finished run resumes past its last epoch
    assert [again[r]["resumed_from"] for r in (0, 1)] == [6, 6]
    assert again[1]["val_loss"] == again[0]["val_loss"] == ddp[0]["val_loss"]
    assert again[0]["written"] == again[1]["written"] == []
