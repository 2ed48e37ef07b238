"""Text drift: embedding drift (a domain classifier's ROC AUC, or MMD) and the share of unseen tokens.

The statistics take an `embed` callable (texts -> one row per text), so they do not depend on a model;
`minilm_embed` gives the engine's MiniLM encoder in that shape.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats

Embed = Callable[[list[str]], np.ndarray]
TOKEN_SEPARATOR = r"[^\w]+"


def tokens(texts: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Every word of every text, lower-cased, flattened (no loop per row)."""
    words = pc.list_flatten(pc.split_pattern_regex(pc.utf8_lower(pc.drop_null(texts)), TOKEN_SEPARATOR))
    if isinstance(words, pa.ChunkedArray):
        words = words.combine_chunks()
    return pc.filter(words, pc.not_equal(words, ""))


def vocabulary(words: pa.Array, limit: int) -> list[str]:
    """The `limit` most frequent words, most frequent first (ties by word, for a stable profile)."""
    if len(words) == 0:
        return []
    counts = pc.value_counts(words)
    table = pa.table({"word": counts.field("values"), "count": counts.field("counts")})
    table = table.sort_by([("count", "descending"), ("word", "ascending")]).slice(0, limit)
    return table.column("word").to_pylist()


def unseen_share(words: pa.Array, known: list[str]) -> float:
    """Share of word occurrences not in `known`."""
    if len(words) == 0:
        return 0.0
    seen = pc.sum(pc.is_in(words, value_set=pa.array(known, pa.string()))).as_py() or 0
    return 1.0 - seen / len(words)


def top_unseen(words: pa.Array, known: list[str], limit: int = 10) -> list[str]:
    """The most frequent words of `words` not in `known`."""
    if len(words) == 0:
        return []
    new = pc.filter(words, pc.invert(pc.is_in(words, value_set=pa.array(known, pa.string()))))
    return vocabulary(new, limit)


def sample_texts(texts: pa.ChunkedArray | pa.Array, rows: int, seed: int = 0) -> list[str]:
    """Up to `rows` non-null texts, drawn without replacement, in their table order."""
    present = pc.drop_null(texts)
    if len(present) > rows:
        picked = np.sort(np.random.default_rng(seed).choice(len(present), rows, replace=False))
        present = present.take(pa.array(picked))
    return present.to_pylist()


def classifier_auc(reference: np.ndarray, current: np.ndarray, folds: int = 5) -> tuple[float, float]:
    """Cross-validated ROC AUC of a logistic regression telling current from reference embeddings, and the
    one-sided p-value of that AUC against 0.5 (the Mann-Whitney normal approximation)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    x = np.vstack([reference, current]).astype(np.float64)
    y = np.r_[np.zeros(len(reference)), np.ones(len(current))]
    folds = max(2, min(folds, len(reference), len(current)))
    scores = cross_val_predict(LogisticRegression(max_iter=1000), x, y,
                               cv=StratifiedKFold(folds, shuffle=True, random_state=0), method="decision_function")
    auc = float(roc_auc_score(y, scores))
    n1, n2 = len(reference), len(current)
    z = (auc - 0.5) / np.sqrt((n1 + n2 + 1) / (12 * n1 * n2))
    return auc, float(stats.norm.sf(z))


def mmd_test(reference: np.ndarray, current: np.ndarray, permutations: int = 200, seed: int = 0
             ) -> tuple[float, float]:
    """Unbiased squared MMD with an RBF kernel (median-distance bandwidth) and its permutation p-value."""
    x = np.vstack([reference, current]).astype(np.float64)
    squared = np.maximum((x * x).sum(1)[:, None] + (x * x).sum(1)[None, :] - 2 * x @ x.T, 0)
    n1, n = len(reference), len(x)
    bandwidth = np.median(squared[:n1, n1:]) or 1.0
    kernel = np.exp(-squared / bandwidth)
    np.fill_diagonal(kernel, 0.0)
    rng = np.random.default_rng(seed)
    labels = np.zeros((permutations + 1, n), dtype=bool)
    labels[0, n1:] = True
    for i in range(1, permutations + 1):
        labels[i, rng.permutation(n)[: n - n1]] = True
    is_cur = labels.astype(np.float64)
    is_ref = 1.0 - is_cur
    n2 = n - n1
    ref_rows = is_ref @ kernel
    within_ref = (ref_rows * is_ref).sum(1) / (n1 * (n1 - 1))
    across = (ref_rows * is_cur).sum(1) / (n1 * n2)
    within_cur = ((is_cur @ kernel) * is_cur).sum(1) / (n2 * (n2 - 1))
    mmd2 = within_ref + within_cur - 2 * across
    p_value = float((np.sum(mmd2[1:] >= mmd2[0]) + 1) / (permutations + 1))
    return float(mmd2[0]), p_value


def minilm_embed(max_length: int = 64, batch_size: int = 64) -> Embed:
    """The engine's packaged all-MiniLM-L6-v2 as an `embed` callable (loaded on first use, then kept)."""

    @lru_cache(maxsize=1)
    def encoder() -> tuple[object, object]:
        from loopwise.training.model import load_encoder

        return load_encoder()

    def embed(texts: list[str]) -> np.ndarray:
        from loopwise.training.model import embed_texts

        model, tokenizer = encoder()
        return embed_texts(model, tokenizer, texts, max_length=max_length, batch_size=batch_size).numpy()  # type: ignore[arg-type]

    return embed
