"""Per-column reference profiles: what a day's drift check needs from the reference, small and JSON-safe.

- numeric: rows, nulls, exact std/min/max/distinct count; all values when the reference has at most 1,000 (the
  p-value tests need them, and Evidently switches tests there); otherwise a `RankSketch` (about 1,070 bins:
  1,000 equal-rank bins refined to single values at both tails), plus value counts when there are at most 20
  distinct values; and a 10-bin display histogram.
- categorical: counts of the `max_categories` most frequent values, the rest lumped (and marked inexact).
- text: a sample of reference embeddings (float16), the most frequent words, the reference's own unseen-word
  share (words of odd rows missing from the vocabulary of even rows), and a histogram of words per text.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loopwise.monitoring import stattests
from loopwise.monitoring.sketch import RankSketch
from loopwise.monitoring.text import TOKEN_SEPARATOR, Embed, sample_texts, tokens, unseen_share, vocabulary

ColumnKind = Literal["numeric", "categorical", "text"]
KINDS: tuple[str, ...] = ("numeric", "categorical", "text")
INTEGER_CATEGORY_LIMIT = 10  # Evidently 0.7 infers an integer column with at most 10 distinct values as categorical
WORD_COUNT_EDGES = (1, 5, 10, 20, 50)


def encode_array(values: np.ndarray) -> dict[str, Any]:
    """A numeric array as JSON: dtype, shape and little-endian bytes in base64 (exact, and half a float list's size)."""
    values = np.ascontiguousarray(values)
    little = values.astype(values.dtype.newbyteorder("<"))
    return {"dtype": little.dtype.str, "shape": list(values.shape), "base64": base64.b64encode(little.tobytes()).decode()}


def decode_array(d: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d["base64"]), dtype=np.dtype(d["dtype"])).reshape(d["shape"]).copy()


def float_values(column: pa.ChunkedArray) -> np.ndarray:
    """A numeric column as float64 with NaN for nulls."""
    return np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


def plain_column(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Dictionary-encoded columns decoded to their values."""
    if pa.types.is_dictionary(column.type):
        return column.cast(column.type.value_type)
    return column


def category_counts(column: pa.ChunkedArray) -> tuple[list, np.ndarray, int]:
    """Distinct non-null values (NaN dropped, as Evidently drops it), their counts, and the nulls."""
    column = plain_column(column)
    nulls = column.null_count
    if pa.types.is_floating(column.type):
        nan = pc.is_nan(column)
        nulls += int(pc.sum(nan).as_py() or 0)
        column = pc.filter(column, pc.invert(pc.fill_null(nan, True)))
    counted = pc.value_counts(pc.drop_null(column))
    if len(counted) == 0:
        return [], np.zeros(0), nulls
    return counted.field("values").to_pylist(), counted.field("counts").to_numpy().astype(np.float64), nulls


def infer_kind(column: pa.ChunkedArray) -> str | None:
    """Evidently 0.7's inference: floats numeric, integers numeric above 10 distinct values, strings and booleans
    categorical (text only when named as such); other types are not checked."""
    kind = plain_column(column).type
    if pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return "numeric"
    if pa.types.is_integer(kind):
        return "categorical" if pc.count_distinct(column).as_py() <= INTEGER_CATEGORY_LIMIT else "numeric"
    if pa.types.is_boolean(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "categorical"
    return None


@dataclass
class NumericProfile:
    rows: int
    nulls: int
    n: int  # finite values: the rows Evidently tests
    integer: bool
    std: float
    minimum: float
    maximum: float
    distinct: int
    values: np.ndarray | None  # all finite values, ascending, when n <= 1000
    discrete: tuple[list[float], np.ndarray] | None  # distinct values and counts, when distinct <= 20
    sketch: RankSketch | None  # when n > 1000
    display_edges: list[float]
    display_counts: list[int]
    kind: str = "numeric"

    @classmethod
    def of(cls, column: pa.ChunkedArray, sketch_bins: int) -> NumericProfile:
        values = float_values(column)
        finite = np.sort(values[np.isfinite(values)])
        n = len(finite)
        keys, counts = stattests.distinct_counts(finite)
        edges = display_edges(finite, keys[:11].tolist())
        return cls(
            rows=len(values), nulls=int(np.isnan(values).sum()), n=n,
            integer=pa.types.is_integer(plain_column(column).type) and column.null_count == 0,
            std=float(np.std(finite)) if n else 0.0, minimum=float(finite[0]) if n else 0.0,
            maximum=float(finite[-1]) if n else 0.0, distinct=len(keys),
            values=finite if n <= stattests.SMALL_REFERENCE_ROWS else None,
            discrete=(keys.tolist(), counts) if len(keys) <= stattests.BINNED_VALUES else None,
            sketch=RankSketch.of_sorted(finite, sketch_bins) if n > stattests.SMALL_REFERENCE_ROWS else None,
            display_edges=edges, display_counts=binned(finite, edges).tolist())

    def exact_values(self) -> np.ndarray | None:
        """The reference's finite values when the profile holds them exactly (all of them, or as value counts)."""
        if self.values is not None:
            return self.values
        if self.discrete is not None:
            return np.repeat(np.asarray(self.discrete[0], dtype=np.float64), self.discrete[1].astype(np.int64))
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "rows": self.rows, "nulls": self.nulls, "n": self.n, "integer": self.integer,
                "std": self.std, "minimum": self.minimum, "maximum": self.maximum, "distinct": self.distinct,
                "values": None if self.values is None else encode_array(self.values),
                "discrete": None if self.discrete is None else {"values": self.discrete[0],
                                                                "counts": self.discrete[1].astype(int).tolist()},
                "sketch": None if self.sketch is None else {
                    **{k: v for k, v in self.sketch.to_dict().items() if k not in ("low", "high", "sums")},
                    **{k: encode_array(getattr(self.sketch, k)) for k in ("low", "high", "sums")}},
                "display_edges": self.display_edges, "display_counts": self.display_counts}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NumericProfile:
        sketch = d["sketch"]
        return cls(
            rows=d["rows"], nulls=d["nulls"], n=d["n"], integer=d["integer"], std=d["std"], minimum=d["minimum"],
            maximum=d["maximum"], distinct=d["distinct"],
            values=None if d["values"] is None else decode_array(d["values"]),
            discrete=None if d["discrete"] is None else ([float(v) for v in d["discrete"]["values"]],
                                                         np.asarray(d["discrete"]["counts"], dtype=np.float64)),
            sketch=None if sketch is None else RankSketch.from_dict(
                {**sketch, **{k: decode_array(sketch[k]) for k in ("low", "high", "sums")}}),
            display_edges=d["display_edges"], display_counts=d["display_counts"])


@dataclass
class CategoricalProfile:
    rows: int
    nulls: int
    n: int
    categories: list  # the most frequent values, most frequent first
    counts: np.ndarray
    other_count: int  # rows of the values beyond `max_categories`
    other_levels: int
    kind: str = "categorical"

    @classmethod
    def of(cls, column: pa.ChunkedArray, max_categories: int) -> CategoricalProfile:
        keys, counts, nulls = category_counts(column)
        order = np.argsort(-counts, kind="stable")
        kept, rest = order[:max_categories], order[max_categories:]
        return cls(rows=len(column), nulls=nulls, n=int(counts.sum()), categories=[keys[i] for i in kept],
                   counts=counts[kept], other_count=int(counts[rest].sum()), other_levels=len(rest))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "rows": self.rows, "nulls": self.nulls, "n": self.n, "categories": self.categories,
                "counts": self.counts.astype(int).tolist(), "other_count": self.other_count,
                "other_levels": self.other_levels}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CategoricalProfile:
        return cls(rows=d["rows"], nulls=d["nulls"], n=d["n"], categories=list(d["categories"]),
                   counts=np.asarray(d["counts"], dtype=np.float64), other_count=d["other_count"],
                   other_levels=d["other_levels"])


@dataclass
class TextProfile:
    rows: int
    nulls: int
    n: int
    embeddings: np.ndarray  # a sample of the reference's texts, one row each
    vocabulary: list[str]
    unseen_share: float  # the reference against itself: odd rows' words missing from even rows' vocabulary
    word_counts: list[int]  # texts per words-per-text bin (WORD_COUNT_EDGES)
    kind: str = "text"

    @classmethod
    def of(cls, column: pa.ChunkedArray, embed: Embed, sample_rows: int, max_vocabulary: int) -> TextProfile:
        texts = plain_column(column).combine_chunks()
        words = tokens(texts)
        is_even = pa.array(np.arange(len(texts)) % 2 == 0)
        even, odd = texts.filter(is_even), texts.filter(pc.invert(is_even))
        sample = sample_texts(texts, sample_rows)
        embeddings = np.asarray(embed(sample), dtype=np.float32) if sample else np.zeros((0, 0), np.float32)
        return cls(rows=len(texts), nulls=texts.null_count, n=len(texts) - texts.null_count,
                   embeddings=embeddings, vocabulary=vocabulary(words, max_vocabulary),
                   unseen_share=unseen_share(tokens(odd), vocabulary(tokens(even), max_vocabulary)),
                   word_counts=word_count_histogram(texts))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "rows": self.rows, "nulls": self.nulls, "n": self.n,
                "embeddings": encode_array(self.embeddings.astype(np.float16)), "vocabulary": self.vocabulary,
                "unseen_share": self.unseen_share, "word_counts": self.word_counts}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TextProfile:
        return cls(rows=d["rows"], nulls=d["nulls"], n=d["n"], embeddings=decode_array(d["embeddings"]).astype(np.float32),
                   vocabulary=list(d["vocabulary"]), unseen_share=d["unseen_share"], word_counts=d["word_counts"])


ColumnProfile = NumericProfile | CategoricalProfile | TextProfile
PROFILE_TYPES: dict[str, type] = {"numeric": NumericProfile, "categorical": CategoricalProfile, "text": TextProfile}


def display_edges(sorted_values: np.ndarray, distinct: list[float]) -> list[float]:
    """Edges of a readable 10-bin histogram: 8 equal bins between the 1st and 99th percentiles and one outside
    each; for at most 10 distinct values, one bin per value (edges half way between)."""
    if len(sorted_values) == 0:
        return []
    if len(distinct) <= 10:
        return [float((a + b) / 2) for a, b in zip(distinct[:-1], distinct[1:], strict=True)]
    low, high = np.quantile(sorted_values, [0.01, 0.99])
    if high <= low:
        low, high = sorted_values[0], sorted_values[-1]
    return np.unique(np.linspace(low, high, 9)).tolist()


def binned(sorted_values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Counts of an ascending array in (-inf, e0), [e0, e1), ..., [e_last, inf)."""
    at = np.searchsorted(sorted_values, np.asarray(edges, dtype=np.float64), side="left")
    return np.diff(np.concatenate([[0], at, [len(sorted_values)]])).astype(np.int64)


def word_count_histogram(texts: pa.Array) -> list[int]:
    """Texts per bin of words per text: 0, 1-4, 5-9, 10-19, 20-49, 50 and more (nulls not counted)."""
    present = pc.drop_null(texts)
    words = pc.split_pattern_regex(pc.utf8_lower(present), TOKEN_SEPARATOR)
    # a text starting or ending with a separator splits into empty strings too: count only real words
    lengths = pc.list_value_length(words).to_numpy(zero_copy_only=False).astype(np.int64) - empty_words_per_text(words)
    return np.bincount(np.searchsorted(WORD_COUNT_EDGES, lengths, side="right"), minlength=len(WORD_COUNT_EDGES) + 1).tolist()


def empty_words_per_text(words: pa.Array) -> np.ndarray:
    """How many of each text's split pieces are empty strings."""
    flat = pc.list_flatten(words)
    parents = pc.list_parent_indices(words).to_numpy(zero_copy_only=False)
    empty = pc.equal(pc.utf8_length(flat), 0).to_numpy(zero_copy_only=False)
    return np.bincount(parents[empty], minlength=len(words)).astype(np.int64)
