"""The training loop on CPU with the real MiniLM encoder (frozen): it learns, resumes, and repeats."""

import os
import signal
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pytest
import torch
from loopwise.training.data import InputLayout, Prepared, prepare
from loopwise.training.loop import TrainConfig, train
from loopwise.training.model import ScoringModel, TabularMLP, embed_texts, load_encoder
from supportdesk.contracts import CHANNELS
from supportdesk.feed import generate_day

ROOT = Path(__file__).resolve().parent.parent
TINY = TrainConfig(epochs=6, batch_size=32, learning_rate=3e-3, patience=3, seed=5, progress=False)
# No service features (no Feast here): the ticket's channel, one-hot, and its text.
LAYOUT = InputLayout(features=(), categorical={"channel": CHANNELS}, text="text")


def labelled_tickets(days: int = 4, per_day: int = 160) -> pd.DataFrame:
    """Real synthetic tickets with their outcomes (features left empty: the text must carry it)."""
    frames = [generate_day(date(2026, 3, 2) + timedelta(days=i), per_day, seed=3).frames for i in range(days)]
    tickets = pd.concat([f["tickets"] for f in frames])
    outcomes = pd.concat([f["ticket_outcomes"] for f in frames]).drop_duplicates("ticket_id")
    data = tickets.merge(outcomes, on="ticket_id")
    data["text"] = data["subject"] + ". " + data["body"]
    data["escalated"] = data["escalated"] == "true"
    return data.reset_index(drop=True)


@pytest.fixture(scope="module")
def dataset():  # type: ignore[no-untyped-def]
    data = labelled_tickets()
    encoder, tokenizer = load_encoder()
    embeddings = embed_texts(encoder, tokenizer, data["text"].tolist())
    return data, embeddings, encoder


def prepared_for(data: pd.DataFrame, text: torch.Tensor | tuple[torch.Tensor, ...] | None) -> Prepared:
    return prepare(data, LAYOUT, "escalated", "ticket_id", text)


def model_for(prepared, encoder, hidden: int = 32, freeze_encoder: bool = True) -> ScoringModel:  # type: ignore[no-untyped-def]
    """A text model: the ticket's embedding and its standardized inputs into a small MLP head."""
    torch.manual_seed(TINY.seed)
    n_features = len(LAYOUT.names)
    model = ScoringModel(head=TabularMLP(ScoringModel.n_inputs(n_features, text=True), hidden=hidden),
                         n_features=n_features, encoder=encoder, freeze_encoder=freeze_encoder)
    model.feature_mean.copy_(prepared.mean)
    model.feature_std.copy_(prepared.std)
    return model


def test_the_loss_falls_on_learnable_data(dataset, tmp_path: Path) -> None:
    data, embeddings, encoder = dataset
    prepared = prepared_for(data, embeddings)
    assert prepared.mean.shape == (len(CHANNELS),)  # the channel, one-hot: no customer features beside the text
    model = model_for(prepared, encoder)
    result = train(model, prepared.splits["train"], prepared.splits["validation"], TINY, tmp_path / "ckpt")
    losses = [h.train_loss for h in result.history]
    assert losses[-1] < losses[0] * 0.9
    assert result.best_val_loss < result.history[0].val_loss
    assert result.device == "cpu" and all(h.samples_per_second > 0 for h in result.history)
    assert not any(p.requires_grad for p in model.encoder.parameters())  # frozen encoder by default


def test_the_same_seed_gives_the_same_metrics(dataset, tmp_path: Path) -> None:
    data, embeddings, encoder = dataset
    prepared = prepared_for(data, embeddings)
    runs = [train(model_for(prepared, encoder), prepared.splits["train"], prepared.splits["validation"],
                  TrainConfig(**{**TINY.__dict__, "epochs": 3}), tmp_path / f"run{i}") for i in range(2)]
    assert [h.val_loss for h in runs[0].history] == pytest.approx([h.val_loss for h in runs[1].history], abs=1e-6)


RESUMABLE = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_training import labelled_tickets, model_for, prepared_for, TINY
from loopwise.training.loop import TrainConfig, train
from loopwise.training.model import load_encoder
data = labelled_tickets()
embeddings = torch.load({emb!r})
encoder, _ = load_encoder()
prepared = prepared_for(data, embeddings)
result = train(model_for(prepared, encoder), prepared.splits["train"], prepared.splits["validation"],
               TrainConfig(**{{**TINY.__dict__, "patience": 99}}), __import__("pathlib").Path({ckpt!r}))
print("RESUMED", result.resumed_from, [round(h.val_loss, 6) for h in result.history])
"""


def test_a_killed_run_resumes_from_its_checkpoint(dataset, tmp_path: Path) -> None:
    _, embeddings, _ = dataset
    torch.save(embeddings, tmp_path / "emb.pt")
    code = RESUMABLE.format(tests=str(ROOT / "tests"), emb=str(tmp_path / "emb.pt"), ckpt=str(tmp_path / "ckpt"))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, start_new_session=True)
    last = tmp_path / "ckpt" / "last.pt"
    deadline = time.monotonic() + 240
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert last.exists(), "the run ended before its first checkpoint"
    done_before = torch.load(last, weights_only=False)["epoch"]
    assert done_before < TINY.epochs
    resumed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    line = next(x for x in resumed.stdout.splitlines() if x.startswith("RESUMED"))
    assert line.split()[1] == str(done_before + 1)
    fresh = subprocess.run([sys.executable, "-c", code.replace(str(tmp_path / "ckpt"), str(tmp_path / "fresh"))],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    fresh_line = next(x for x in fresh.stdout.splitlines() if x.startswith("RESUMED"))
    # Resuming reproduces the uninterrupted run's validation losses.
    assert line.split(" ", 2)[2] == fresh_line.split(" ", 2)[2]


def test_data_parallel_training_with_world_size_one_on_gloo(dataset, tmp_path: Path, monkeypatch) -> None:
    import socket

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("MASTER_PORT", str(s.getsockname()[1]))
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    data, embeddings, encoder = dataset
    prepared = prepared_for(data, embeddings)
    try:
        result = train(model_for(prepared, encoder), prepared.splits["train"], prepared.splits["validation"],
                       TrainConfig(**{**TINY.__dict__, "epochs": 2, "distributed": True}), tmp_path / "ddp")
        assert dist.is_initialized() and dist.get_backend() == "gloo" and dist.get_world_size() == 1
        assert len(result.history) == 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_full_fine_tuning_trains_the_encoder_through_the_same_loop(dataset, tmp_path: Path) -> None:
    from loopwise.training.data import tokenize
    from loopwise.training.model import load_encoder as fresh_encoder

    data = dataset[0].head(96)
    encoder, tokenizer = fresh_encoder()
    prepared = prepared_for(data, tokenize(tokenizer, data["text"].tolist(), max_length=32))
    model = model_for(prepared, encoder, hidden=16, freeze_encoder=False)
    before = model.encoder.embeddings.word_embeddings.weight.detach().clone()
    config = TrainConfig(**{**TINY.__dict__, "epochs": 1, "batch_size": 16})
    result = train(model, prepared.splits["train"], prepared.splits["validation"], config, tmp_path / "ft")
    assert len(result.history) == 1 and torch.isfinite(torch.tensor(result.history[0].train_loss))
    assert not torch.equal(before, model.encoder.embeddings.word_embeddings.weight.detach())


def test_a_tabular_model_trains_on_features_alone(dataset, tmp_path: Path) -> None:
    """A model without a text input: no encoder, batches of (features, labels), forward(features)."""
    data = dataset[0]
    layout = InputLayout(features=(), categorical={"channel": CHANNELS})
    prepared = prepare(data, layout, "escalated", "ticket_id")
    assert len(prepared.splits["train"].tensors) == 2
    torch.manual_seed(TINY.seed)
    model = ScoringModel(head=TabularMLP(ScoringModel.n_inputs(len(layout.names), text=False), hidden=8),
                         n_features=len(layout.names))
    result = train(model, prepared.splits["train"], prepared.splits["validation"],
                   TrainConfig(**{**TINY.__dict__, "epochs": 2}), tmp_path / "tabular")
    assert model.encoder is None and len(result.history) == 2
    assert all(torch.isfinite(torch.tensor([h.train_loss, h.val_loss])).all() for h in result.history)
    features = prepared.splits["holdout"].tensors[0]
    assert model(features).shape == (len(features),)


def test_the_feature_matrix_zero_fills_flags_presence_and_one_hots() -> None:
    import numpy as np
    from loopwise.training.data import feature_matrix

    layout = InputLayout(features=("orders", "spend"), presence=(("has_orders", "orders"),), numeric=("amount",),
                         categorical={"channel": ("email", "chat")})
    frame = pd.DataFrame({"orders": [2, None, 1.5], "amount": [10.0, float("nan"), 3.0],
                          "channel": ["chat", None, "web"]})  # `spend` absent: a feature the view lacks
    expected = np.array([[2, 0, 1, 10, 0, 1], [0, 0, 0, 0, 0, 0], [1.5, 0, 1, 3, 0, 0]], dtype=np.float32)
    got = feature_matrix(frame, layout)
    assert got.dtype == np.float32 and np.array_equal(got, expected), got
