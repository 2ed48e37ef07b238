"""The scoring runtime of a text encoder: PyTorch as trained, or ONNX Runtime (fp32, or int8 by dynamic quantization).

A service picks it once per process with `use_scoring_runtime`; training, evaluation and any process that
picks none score with PyTorch. The encoder with its mean pooling is exported once per set of weights (a
content digest, so a fine-tuned encoder gets its own file) into a local cache folder and reused from there.
Texts are scored in length buckets: sorted by token count, each bucket padded to its own longest text,
not to the longest of the whole batch.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from loopwise.training.model import EMBEDDING_DIM, mean_pool

Runtime = Literal["torch", "onnx", "onnx-int8"]
RUNTIMES: tuple[Runtime, ...] = ("torch", "onnx", "onnx-int8")
# Rows per length bucket. Measured on MiniLM int8, one ONNX Runtime thread, random texts of 17 to 48 tokens
# (CPU ms a text): a batch of 32 padded as one 8.1, in buckets of 8 5.9, of 2 or 4 5.5; a batch of 8 as one
# 6.5, in buckets of 2 5.4. Per-call overhead is small next to the padding saved.
BUCKET_ROWS = 2
OPSET = 17


@dataclass(frozen=True)
class ScoringRuntime:
    """What this process scores text with, and where exported encoders are kept."""

    name: Runtime = "torch"
    cache_dir: Path | None = None
    # ONNX Runtime's intra-op threads (0: one per core). One: a service scales by worker processes, and its event
    # loop, feature reads and log need a core while a batch scores. Measured with `loopwise serve` at concurrency
    # 8 on 2 cores that other processes kept busy (load 7-10): 35-42 requests/s with one thread, 22-30 with two.
    threads: int = 1


_active = ScoringRuntime()
_sessions: weakref.WeakKeyDictionary[nn.Module, dict[Runtime, OnnxEncoder]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def use_scoring_runtime(name: str, cache_dir: Path | str | None = None, threads: int = 1) -> ScoringRuntime:
    """Score text with `name` in this process from now on (a service calls this once, before loading models).

    `cache_dir` keeps the exported encoders (an ONNX runtime needs one); `threads` are ONNX Runtime's.
    """
    global _active
    if name not in RUNTIMES:
        raise ValueError(f"unknown scoring runtime {name!r}: choose one of {', '.join(RUNTIMES)} (serving.runtime)")
    if name != "torch" and cache_dir is None:
        raise ValueError(f"the {name} runtime needs a folder to keep exported encoders in (cache_dir)")
    _active = ScoringRuntime(name, None if cache_dir is None else Path(cache_dir), threads)  # type: ignore[arg-type]
    return _active


def scoring_runtime() -> ScoringRuntime:
    """The runtime this process scores text with (`torch` unless a service chose another)."""
    return _active


class _Pooled(nn.Module):
    """The encoder and its masked mean pooling as one graph: token ids and mask in, sentence embedding out."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden, attention_mask)


def weights_digest(encoder: nn.Module) -> str:
    """A digest of the encoder's weights and of the exporter's versions: the cache key of its exported files."""
    import onnxruntime

    h = hashlib.sha256(f"torch {torch.__version__} onnxruntime {onnxruntime.__version__} opset {OPSET}".encode())
    for name, tensor in encoder.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def export_onnx(encoder: nn.Module, path: Path) -> Path:
    """Export the encoder with mean pooling to ONNX, batch and sequence axes dynamic."""
    example = {"input_ids": torch.tensor([[101, 7592, 102], [101, 102, 0]]),
               "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]])}
    pooled = _Pooled(encoder).eval()
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}, "embedding": {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter (dynamo=False) is deprecated in torch 2.13 but exports this BERT-style
        # encoder as it is; the dynamo exporter needs onnxscript, which is not a dependency.
        warnings.simplefilter("ignore")
        torch.onnx.export(pooled, (example["input_ids"], example["attention_mask"]), str(path), dynamo=False,
                          input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                          dynamic_axes=axes, opset_version=OPSET)
    return path


def quantize_int8(source: Path, target: Path) -> Path:
    """Dynamic int8 quantization: int8 weights, activations quantized per call from their observed range."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per channel: one scale per output column of each weight. Measured on ~570 short texts against fp32 embeddings:
    # per tensor, min cosine 0.936 and a small head's scores off by up to 0.08; per channel, 0.984 and 0.036.
    # (uint8 weights, symmetric activations or ONNX Runtime's pre-processing pass changed neither much.)
    def advice(record: logging.LogRecord) -> bool:  # it advises a pre-processing pass, on the root logger, each time
        return not str(record.msg).startswith("Please consider to run pre-processing")

    logging.getLogger().addFilter(advice)
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        logging.getLogger().removeFilter(advice)
    return target


def exported(encoder: nn.Module, runtime: Runtime, cache_dir: Path) -> Path:
    """The encoder's ONNX file for `runtime` in `cache_dir`, exported (and quantized) only when not there yet."""
    if runtime == "torch":
        raise ValueError("the torch runtime has no exported file")
    cache_dir.mkdir(parents=True, exist_ok=True)
    digest = weights_digest(encoder)
    fp32 = cache_dir / f"encoder-{digest}.onnx"
    target = fp32 if runtime == "onnx" else cache_dir / f"encoder-{digest}-int8.onnx"
    if target.exists():
        return target
    # Written under a temporary name and renamed: several workers may export at once, each sees a whole file.
    with tempfile.TemporaryDirectory(dir=cache_dir) as work:
        if not fp32.exists():
            os.replace(export_onnx(encoder, Path(work) / "fp32.onnx"), fp32)
        if runtime == "onnx-int8":
            os.replace(quantize_int8(fp32, Path(work) / "int8.onnx"), target)
    return target


class OnnxEncoder:
    """An exported encoder in an ONNX Runtime session: texts' token ids in, sentence embeddings out."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # No busy-waiting between calls: the service's event loop shares these cores with scoring.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})[0]


def onnx_encoder(encoder: nn.Module, runtime: ScoringRuntime | None = None) -> OnnxEncoder:
    """The ONNX Runtime session for this encoder object under `runtime` (default: the process's), made once."""
    runtime = runtime or _active
    if runtime.cache_dir is None:
        raise ValueError(f"the {runtime.name} runtime needs a cache folder (use_scoring_runtime)")
    with _lock:
        known = _sessions.setdefault(encoder, {})
        if runtime.name not in known:
            known[runtime.name] = OnnxEncoder(exported(encoder, runtime.name, runtime.cache_dir), runtime.threads)
        return known[runtime.name]


def length_buckets(lengths: list[int], rows: int = BUCKET_ROWS) -> list[np.ndarray]:
    """Row indices grouped by token count: sorted, `rows` at a time (each bucket is padded to its own longest)."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i:i + rows] for i in range(0, len(order), rows)]


def embed_onnx(session: Any, tokenizer: Any, texts: list[str], max_length: int = 64,
               bucket_rows: int = BUCKET_ROWS) -> torch.Tensor:
    """Embeddings of texts through an exported encoder, scored in length buckets, returned in the texts' order.

    fp32 gives the same embeddings whatever the buckets; int8 quantizes activations per call from their range,
    so a text's embedding moves slightly with the texts it shares a bucket with.
    """
    if not texts:
        return torch.zeros(0, EMBEDDING_DIM)
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    pad = tokenizer.pad_token_id or 0
    out = np.empty((len(texts), EMBEDDING_DIM), dtype=np.float32)
    for bucket in length_buckets([len(i) for i in ids], bucket_rows):
        width = max(len(ids[i]) for i in bucket)
        input_ids = np.full((len(bucket), width), pad, dtype=np.int64)
        mask = np.zeros((len(bucket), width), dtype=np.int64)
        for row, i in enumerate(bucket):
            input_ids[row, :len(ids[i])] = ids[i]
            mask[row, :len(ids[i])] = 1
        out[bucket] = session(input_ids, mask)
    return torch.from_numpy(out)
