"""Scoring the real MiniLM encoder on ONNX Runtime: fp32 matches PyTorch, int8 agrees on labelled tickets,
length buckets change no score, the exported file is cached and reused, and a service's choice reaches scoring."""

from pathlib import Path

import numpy as np
import pytest
import torch
from loopwise.training import runtime
from loopwise.training.data import feature_matrix, split_of
from loopwise.training.model import embed_texts, load_encoder
from loopwise.training.runtime import ScoringRuntime, embed_onnx, onnx_encoder
from sklearn.metrics import roc_auc_score

from tests.test_training import LAYOUT, labelled_tickets, model_for, prepared_for

# int8 against fp32, the same head on the rows it did not train on (~170 of ~570 tickets). Measured here:
# max |delta score| 0.024, delta AUC -0.001; a text's bucket-mates move its int8 score by up to 0.028. The
# served model's agreement, on its ~1,000 holdout rows, is in benchmarks/RESULTS.md (predictions.py).
INT8_MAX_SCORE_DELTA = 0.06
INT8_MAX_AUC_DELTA = 0.01


class Tickets:
    """Labelled tickets, their fp32 embeddings, a head fitted on them, and ONNX sessions in a fresh cache."""

    def __init__(self, cache: Path) -> None:
        self.data = labelled_tickets()
        self.texts = self.data["text"].tolist()
        self.encoder, self.tokenizer = load_encoder()
        self.reference = embed_texts(self.encoder, self.tokenizer, self.texts)
        prepared = prepared_for(self.data, self.reference)
        self.model = model_for(prepared, self.encoder).eval()
        features, embeddings, labels = prepared.splits["train"].tensors
        optimizer = torch.optim.Adam(self.model.head.parameters(), lr=3e-3)
        torch.manual_seed(5)
        # Full batch, the head only, stopped early: a fraction of a second, where the training loop would
        # checkpoint the encoder each epoch. Measured: the unseen rows' AUC is 0.72 after 20-40 steps and 0.67
        # after 150, and the overfitted head is more sensitive to its inputs (int8 moves its scores by up to 0.24).
        for _ in range(25):
            optimizer.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(self.model(features, embeddings), labels)
            loss.backward()
            optimizer.step()
        self.unseen = np.flatnonzero(self.data["ticket_id"].map(split_of) != "train")
        self.cache = cache
        self.sessions = {name: onnx_encoder(self.encoder, ScoringRuntime(name, cache)) for name in ("onnx", "onnx-int8")}
        self.embeddings = {name: embed_onnx(s, self.tokenizer, self.texts) for name, s in self.sessions.items()}

    def scores(self, embeddings: torch.Tensor, rows: np.ndarray | None = None) -> np.ndarray:
        rows = self.unseen if rows is None else rows
        features = torch.from_numpy(feature_matrix(self.data.iloc[rows], LAYOUT))
        with torch.no_grad():
            return torch.sigmoid(self.model(features, embeddings[rows])).numpy()

    def auc(self, embeddings: torch.Tensor) -> float:
        return float(roc_auc_score(self.data["escalated"].to_numpy()[self.unseen], self.scores(embeddings)))


@pytest.fixture(scope="module")
def tickets(tmp_path_factory) -> Tickets:  # type: ignore[no-untyped-def]
    return Tickets(tmp_path_factory.mktemp("onnx-cache"))


def test_onnx_fp32_scores_as_torch_does(tickets: Tickets) -> None:
    assert (tickets.embeddings["onnx"] - tickets.reference).abs().max() < 1e-5
    assert np.abs(tickets.scores(tickets.embeddings["onnx"]) - tickets.scores(tickets.reference)).max() < 1e-5
    assert tickets.auc(tickets.embeddings["onnx"]) == pytest.approx(tickets.auc(tickets.reference), abs=1e-9)


def test_int8_agrees_with_fp32_on_labelled_tickets(tickets: Tickets) -> None:
    quantized = tickets.embeddings["onnx-int8"]
    delta = np.abs(tickets.scores(quantized) - tickets.scores(tickets.reference)).max()
    assert 0 < delta < INT8_MAX_SCORE_DELTA  # quantized: close, not equal
    assert abs(tickets.auc(quantized) - tickets.auc(tickets.reference)) <= INT8_MAX_AUC_DELTA
    assert tickets.auc(tickets.reference) > 0.6  # the head learned something for the agreement to mean anything


def test_length_buckets_change_no_score(tickets: Tickets) -> None:
    rows = np.arange(64)  # the first 64 tickets: 17 to 46 tokens
    texts = [tickets.texts[i] for i in rows]
    one_batch = embed_onnx(tickets.sessions["onnx"], tickets.tokenizer, texts, bucket_rows=len(texts))  # padded to the longest
    assert (tickets.embeddings["onnx"][rows] - one_batch).abs().max() < 1e-5
    # int8 quantizes activations per call, so a text's neighbours in its bucket move it slightly.
    one_batch = embed_onnx(tickets.sessions["onnx-int8"], tickets.tokenizer, texts, bucket_rows=len(texts))
    full = torch.zeros_like(tickets.reference)
    full[rows] = one_batch
    bucketed = tickets.scores(tickets.embeddings["onnx-int8"], rows)
    assert np.abs(bucketed - tickets.scores(full, rows)).max() < INT8_MAX_SCORE_DELTA


def test_length_buckets_group_texts_of_similar_length() -> None:
    buckets = runtime.length_buckets([30, 5, 12, 40, 6, 31], rows=2)
    assert [sorted(b.tolist()) for b in buckets] == [[1, 4], [0, 2], [3, 5]]


def test_the_exported_file_is_cached_and_reused(tickets: Tickets, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    files = sorted(p.name for p in tickets.cache.iterdir())
    assert len(files) == 2 and all(f.endswith(".onnx") for f in files)  # fp32 and int8, nothing left half-written
    stamps = {p.name: p.stat().st_mtime_ns for p in tickets.cache.iterdir()}

    def no_export(*args: object) -> Path:
        raise AssertionError("exported again although the file was cached")

    monkeypatch.setattr(runtime, "export_onnx", no_export)
    monkeypatch.setattr(runtime, "quantize_int8", no_export)
    assert runtime.exported(tickets.encoder, "onnx-int8", tickets.cache) == tickets.sessions["onnx-int8"].path
    assert {p.name: p.stat().st_mtime_ns for p in tickets.cache.iterdir()} == stamps
    # A session is made once per encoder object; other weights (a fine-tuned encoder) get files of their own.
    assert onnx_encoder(tickets.encoder, ScoringRuntime("onnx-int8", tickets.cache)) is tickets.sessions["onnx-int8"]
    digest = runtime.weights_digest(tickets.encoder)
    weight = next(tickets.encoder.parameters())
    with torch.no_grad():
        kept = weight.clone()
        weight.add_(1.0)
        try:
            assert runtime.weights_digest(tickets.encoder) != digest
        finally:
            weight.copy_(kept)


def test_a_service_choice_of_runtime_reaches_embed_texts(tickets: Tickets) -> None:
    texts = tickets.texts[:20]
    with pytest.raises(ValueError, match="serving.runtime"):
        runtime.use_scoring_runtime("tensorrt", tickets.cache)
    try:
        runtime.use_scoring_runtime("onnx-int8", tickets.cache)
        quantized = embed_texts(tickets.encoder, tickets.tokenizer, texts)
    finally:
        runtime.use_scoring_runtime("torch")
    assert torch.equal(quantized, embed_onnx(tickets.sessions["onnx-int8"], tickets.tokenizer, texts))  # the same session
    assert (embed_texts(tickets.encoder, tickets.tokenizer, texts) - tickets.reference[:20]).abs().max() < 1e-5
