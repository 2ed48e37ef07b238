"""Drift statistics: profile a reference once, then check each day's data against the profile alone.

The column tests and their defaults are Evidently 0.7's (`loopwise.monitoring.stattests`); the verdicts agree
with Evidently run on the full reference. Where the profile cannot give Evidently's number exactly (Wasserstein
with the two quantile functions crossing inside a sketch bin, KS/PSI/JS overrides on a large continuous
reference, capped categories) the column says `exact=False` unless its verdict is certified anyway; passing the
full `reference` to `check_drift` recomputes those columns exactly. Loopwise adds null-share drift per column
and text drift (embeddings and unseen words).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from loopwise.monitoring import stattests
from loopwise.monitoring.profiles import (
    KINDS,
    PROFILE_TYPES,
    WORD_COUNT_EDGES,
    CategoricalProfile,
    ColumnKind,
    ColumnProfile,
    NumericProfile,
    TextProfile,
    binned,
    category_counts,
    float_values,
    infer_kind,
    plain_column,
    word_count_histogram,
)
from loopwise.monitoring.stattests import DEFAULT_THRESHOLDS, TESTS_BY_KIND, TestResult
from loopwise.monitoring.text import Embed, classifier_auc, minilm_embed, mmd_test, sample_texts, tokens, top_unseen, unseen_share

PROFILE_FORMAT = "loopwise.drift-profile/1"
OTHER = "(other)"


@dataclass(frozen=True)
class ColumnTest:
    """A column's test and threshold; None keeps Evidently's default for that column."""

    test: str | None = None
    threshold: float | None = None

    def __post_init__(self) -> None:
        stattests.validate_test(self.test)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | ColumnTest | None) -> ColumnTest:
        if d is None or isinstance(d, ColumnTest):
            return d or cls()
        unknown = set(d) - {"test", "threshold"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)} in a column test {dict(d)} (use test, threshold)")
        return cls(test=d.get("test"), threshold=None if d.get("threshold") is None else float(d["threshold"]))


@dataclass
class DriftConfig:
    """Which tests and thresholds decide drift. Defaults are Evidently 0.7's; overrides go per column, then per kind."""

    drift_share: float = 0.5  # the dataset drifts when this share of its columns drifted
    columns: dict[str, ColumnTest] = field(default_factory=dict)
    numeric: ColumnTest = field(default_factory=ColumnTest)
    categorical: ColumnTest = field(default_factory=ColumnTest)
    text: ColumnTest = field(default_factory=ColumnTest)
    # null-share drift: a two-proportion z-test on the share of nulls, and a minimum change in that share. The
    # change is an effect size of 0.1, as Evidently's tests on large references are: an entity missing from a
    # feature view nulls each of its features at once, and at 0.02 chance (0.373 -> 0.297 of 1,200 and 300
    # requests, p 0.014) flagged ten columns of one model's undrifted traffic.
    null_share_p_value: float = 0.05
    null_share_min_difference: float = 0.1
    null_drift_counts: bool = True  # a column whose null share drifted counts as drifted in the dataset's share
    # text: the classifier's AUC must also beat chance at this level; unseen words drift at this excess share
    text_p_value: float = 0.01
    unseen_word_threshold: float = 0.1
    text_sample_rows: int = 256  # texts embedded per side
    # An effect-size verdict (Wasserstein, Jensen-Shannon, PSI) also needs the difference to be significant: a
    # two-sample test's p-value (Kolmogorov-Smirnov on numeric values, chi-square of homogeneity on counts) at or
    # below this. None: Evidently's verdicts, the effect size alone. Evidently sizes its effect thresholds for
    # large samples; on a few hundred answers a distance's sampling noise alone reaches them.
    significance: float | None = None
    # profile size
    sketch_bins: int = 1000
    max_categories: int = 10_000
    max_vocabulary: int = 5000
    workers: int | None = None  # columns checked in parallel; None: one per core

    def __post_init__(self) -> None:
        self.columns = {name: ColumnTest.from_dict(t) for name, t in self.columns.items()}
        for kind in KINDS:
            setattr(self, kind, ColumnTest.from_dict(getattr(self, kind)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> DriftConfig:
        """From a plain dict (a YAML profile's section): unknown keys are refused, naming the valid ones."""
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown drift settings {sorted(unknown)}; valid: {sorted(names)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def column_test(self, name: str, kind: str) -> ColumnTest:
        """The column's override, falling back field by field to its kind's."""
        own, by_kind = self.columns.get(name, ColumnTest()), getattr(self, kind)
        test = own.test or by_kind.test
        if test is not None and test not in TESTS_BY_KIND[kind]:
            raise ValueError(f"test {test!r} does not apply to {kind} column {name!r}; use one of {TESTS_BY_KIND[kind]}")
        return ColumnTest(test, own.threshold if own.threshold is not None else by_kind.threshold)


@dataclass
class ColumnDrift:
    """One column's verdict; `statistic` is the test's own (D, chi-square, z, distance, AUC) and the threshold is
    compared with `p_value` for the p-value tests, with `statistic` otherwise."""

    name: str
    kind: str
    test: str
    statistic: float | None
    threshold: float | None
    drifted: bool
    p_value: float | None
    null_share_reference: float
    null_share_current: float
    null_drifted: bool
    histogram: dict[str, list]  # {"bins": labels, "reference": shares, "current": shares}
    rows_reference: int = 0  # values tested (nulls dropped)
    rows_current: int = 0
    exact: bool = True  # the verdict is Evidently's on the full reference, certified
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def counts_as_drifted(self) -> bool:
        return self.drifted or self.null_drifted

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


@dataclass
class DriftReport:
    columns: list[ColumnDrift]
    drift_share: float = 0.5
    null_drift_counts: bool = True

    def counted(self, column: ColumnDrift) -> bool:
        return column.counts_as_drifted if self.null_drift_counts else column.drifted

    @property
    def number_drifted(self) -> int:
        return sum(self.counted(c) for c in self.columns)

    @property
    def share_drifted(self) -> float:
        return self.number_drifted / len(self.columns) if self.columns else 0.0

    @property
    def drifted(self) -> bool:
        return bool(self.columns) and self.share_drifted >= self.drift_share

    def column(self, name: str) -> ColumnDrift:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"no column {name!r} in the drift report (columns: {[c.name for c in self.columns]})")

    def to_dict(self) -> dict[str, Any]:
        return {"drifted": self.drifted, "share_drifted": self.share_drifted, "number_drifted": self.number_drifted,
                "drift_share": self.drift_share, "null_drift_counts": self.null_drift_counts,
                "columns": [c.to_dict() for c in self.columns]}

    def markdown(self, max_histograms: int = 10) -> str:
        from loopwise.monitoring.markdown import report_markdown

        return report_markdown(self, max_histograms)


@dataclass
class ReferenceProfile:
    """What a drift check needs from the reference, profiled once (see `loopwise.monitoring.profiles`)."""

    rows: int
    columns: dict[str, ColumnProfile]

    @property
    def kinds(self) -> dict[str, str]:
        return {name: p.kind for name, p in self.columns.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"format": PROFILE_FORMAT, "rows": self.rows,
                "columns": {name: p.to_dict() for name, p in self.columns.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReferenceProfile:
        if d.get("format") != PROFILE_FORMAT:
            raise ValueError(f"not a drift profile: format {d.get('format')!r}, expected {PROFILE_FORMAT!r}")
        return cls(rows=d["rows"], columns={name: PROFILE_TYPES[c["kind"]].from_dict(c) for name, c in d["columns"].items()})

    def json_size(self) -> int:
        """Bytes of the profile as compact JSON."""
        return len(json.dumps(self.to_dict(), separators=(",", ":")))


Table = pa.Table | pd.DataFrame


def as_table(data: Table) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pd.DataFrame):
        return pa.Table.from_pandas(data, preserve_index=False)
    raise TypeError(f"expected a pyarrow Table or a pandas DataFrame, got {type(data).__name__}")


def profile_reference(table: Table, columns: Mapping[str, ColumnKind] | None = None, *, text_columns: Sequence[str] = (),
                      embed: Embed | None = None, config: DriftConfig | None = None) -> ReferenceProfile:
    """Profile the reference once: per column, the counts, sketch, sample and display bins that checks need.

    `columns` names the columns and their kinds; otherwise every column of a supported type, kinds inferred as
    Evidently 0.7 does, with `text_columns` as text. Text needs `embed` (default: the engine's MiniLM encoder).
    """
    config = config or DriftConfig()
    table = as_table(table)
    kinds = dict(columns) if columns is not None else {
        name: kind for name in table.column_names if (kind := infer_kind(table.column(name))) is not None}
    kinds.update({name: "text" for name in text_columns})
    missing = [name for name in kinds if name not in table.column_names]
    if missing:
        raise ValueError(f"columns {missing} are not in the reference table (columns: {table.column_names})")
    for name, kind in kinds.items():
        if kind not in KINDS:
            raise ValueError(f"column {name!r} has kind {kind!r}; use one of {KINDS}")
    if embed is None and "text" in kinds.values():
        embed = minilm_embed()

    def profile(name: str) -> ColumnProfile:
        column, kind = table.column(name), kinds[name]
        if kind == "numeric":
            return NumericProfile.of(column, config.sketch_bins)
        if kind == "categorical":
            return CategoricalProfile.of(column, config.max_categories)
        assert embed is not None
        return TextProfile.of(column, embed, config.text_sample_rows, config.max_vocabulary)

    return ReferenceProfile(rows=table.num_rows, columns=dict(zip(kinds, parallel(profile, list(kinds), config.workers), strict=True)))


def check_drift(profile: ReferenceProfile, current: Table, config: DriftConfig | None = None, *,
                embed: Embed | None = None, reference: Table | None = None) -> DriftReport:
    """Check a day's data against the profile: one `ColumnDrift` per profiled column, and the dataset verdict.

    `reference` (optional, the table profiled) recomputes exactly the columns whose verdict the profile could
    not certify as Evidently's.
    """
    config = config or DriftConfig()
    current = as_table(current)
    missing = [name for name in profile.columns if name not in current.column_names]
    if missing:
        raise ValueError(f"columns {missing} of the reference profile are missing from the current data "
                         f"(current columns: {current.column_names})")
    full = as_table(reference) if reference is not None else None
    if embed is None and "text" in profile.kinds.values():
        embed = minilm_embed()

    def check(name: str) -> ColumnDrift:
        column_profile = profile.columns[name]
        test = config.column_test(name, column_profile.kind)
        column = current.column(name)
        if isinstance(column_profile, NumericProfile):
            drift = check_numeric(name, column_profile, column, test, config)
            if not drift.exact and full is not None:
                exact_values = float_values(full.column(name))
                drift = check_numeric(name, column_profile, column, test, config,
                                      exact_reference=np.sort(exact_values[np.isfinite(exact_values)]))
            return drift
        if isinstance(column_profile, CategoricalProfile):
            drift = check_categorical(name, column_profile, column, test, config)
            if not drift.exact and full is not None:
                drift = check_categorical(name, CategoricalProfile.of(full.column(name), 2**62), column, test, config)
            return drift
        assert embed is not None
        return check_text(name, column_profile, column, test, config, embed)

    names = list(profile.columns)
    return DriftReport(parallel(check, names, config.workers), drift_share=config.drift_share,
                       null_drift_counts=config.null_drift_counts)


def parallel(work: Callable[[str], Any], names: list[str], workers: int | None) -> list:
    """`work` on every name, on threads (numpy's sorts and Arrow's kernels release the GIL), in order."""
    workers = min(workers or os.cpu_count() or 1, max(len(names), 1))
    if workers <= 1:
        return [work(name) for name in names]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(work, names))


# -- per kind ---------------------------------------------------------------------------------------------------

def null_shares(nulls_ref: int, rows_ref: int, nulls_cur: int, rows_cur: int, config: DriftConfig) -> tuple[float, float, bool]:
    share_ref = nulls_ref / rows_ref if rows_ref else 0.0
    share_cur = nulls_cur / rows_cur if rows_cur else 0.0
    p = stattests.two_proportion_p_value(nulls_ref, rows_ref, nulls_cur, rows_cur)
    return share_ref, share_cur, p < config.null_share_p_value and abs(share_cur - share_ref) >= config.null_share_min_difference


def verdict(test: str, result: TestResult, threshold: float) -> bool:
    return stattests.is_drifted(test, result.score, threshold)


def untested(name: str, kind: str, shares: tuple[float, float, bool], histogram: dict, n_ref: int, n_cur: int) -> ColumnDrift:
    """A column with no values on one side: no distribution test (Evidently refuses it), null-share drift only."""
    return ColumnDrift(name, kind, "none", None, None, False, None, *shares, histogram, n_ref, n_cur,
                       details={"reason": "no non-null values in the " + ("reference" if n_ref == 0 else "current data")})


def check_numeric(name: str, profile: NumericProfile, column: pa.ChunkedArray, chosen: ColumnTest, config: DriftConfig,
                  exact_reference: np.ndarray | None = None) -> ColumnDrift:
    values = float_values(column)
    current = np.sort(values[np.isfinite(values)])
    shares = null_shares(profile.nulls, profile.rows, int(np.isnan(values).sum()), len(values), config)
    histogram = numeric_histogram(profile, current)
    if profile.n == 0 or len(current) == 0:
        return untested(name, "numeric", shares, histogram, profile.n, len(current))

    current_counts = stattests.distinct_counts(current) if profile.distinct <= stattests.FEW_VALUES else None
    if current_counts is not None and profile.discrete is not None:
        distinct = len(np.union1d(profile.discrete[0], current_counts[0]))
    else:
        distinct = profile.distinct
    test = chosen.test or stattests.default_test("numeric", profile.n, distinct)
    threshold = DEFAULT_THRESHOLDS[test] if chosen.threshold is None else chosen.threshold
    integer = profile.integer and pa.types.is_integer(plain_column(column).type) and column.null_count == 0
    details: dict[str, Any] = {}
    exact = True

    reference = exact_reference if exact_reference is not None else profile.exact_values()
    counts_test = test in (stattests.CHI_SQUARE, stattests.Z) or (
        test in (stattests.PSI, stattests.JENSEN_SHANNON) and profile.distinct <= stattests.BINNED_VALUES)
    if counts_test and profile.discrete is not None and exact_reference is None:
        cur_keys, cur_counts = current_counts or stattests.distinct_counts(current)
        keys, ref, cur = stattests.align_counts(profile.discrete, (cur_keys.tolist(), cur_counts))
        result = stattests.counts_test(test, keys, ref, cur)
    elif reference is not None:
        result = stattests.values_test(test, reference, current, profile.distinct, integer)
    elif test == stattests.WASSERSTEIN:
        assert profile.sketch is not None
        norm = max(profile.std, 0.001)
        low, high = (bound / norm for bound in profile.sketch.wasserstein_bounds(current))
        result = TestResult(low, None)
        exact = stattests.is_drifted(test, low, threshold) == stattests.is_drifted(test, high, threshold)
        details["statistic_bounds"] = [low, high]
    else:
        assert profile.sketch is not None
        result = stattests.values_test(test, profile.sketch.reconstruct(), current, profile.distinct, integer)
        exact = False
    if not exact:
        details["note"] = "verdict not certified from the profile: pass reference= to check_drift for Evidently's exact one"
    drifted = verdict(test, result, threshold)
    if drifted and config.significance is not None and test in stattests.EFFECT_SIZES:
        full = reference if reference is not None else profile.sketch.reconstruct()  # type: ignore[union-attr]
        drifted = significant(stattests.values_test(stattests.KS, full, current, profile.distinct).p_value,
                              stattests.KS, config, details)
    return ColumnDrift(name, "numeric", test, result.statistic, threshold, drifted, result.p_value,
                       *shares, histogram, profile.n, len(current), exact, details)


def significant(p_value: float | None, test: str, config: DriftConfig, details: dict[str, Any]) -> bool:
    """Whether an effect past its threshold is also significant (`DriftConfig.significance`); noted in `details`."""
    assert p_value is not None and config.significance is not None
    details["significance"] = {"test": test, "p_value": p_value, "at": config.significance}
    return p_value <= config.significance


def check_categorical(name: str, profile: CategoricalProfile, column: pa.ChunkedArray, chosen: ColumnTest,
                      config: DriftConfig) -> ColumnDrift:
    keys, counts, nulls = category_counts(column)
    shares = null_shares(profile.nulls, profile.rows, nulls, len(column), config)
    reference = (profile.categories, profile.counts)
    exact = profile.other_count == 0
    current = (keys, counts)
    if not exact:
        # values beyond the profile's categories cannot be told apart from new ones: lump both sides' into one
        known = set(profile.categories)
        kept = np.array([k in known for k in keys], dtype=bool)
        current = ([k for k, keep in zip(keys, kept, strict=True) if keep] + [OTHER],
                   np.append(counts[kept], counts[~kept].sum()))
        reference = (profile.categories + [OTHER], np.append(profile.counts, profile.other_count))
    union, ref, cur = stattests.align_counts(reference, current)
    histogram = categorical_histogram(union, ref, cur)
    if profile.n == 0 or counts.sum() == 0:
        return untested(name, "categorical", shares, histogram, profile.n, int(counts.sum()))
    distinct = len(union) + (profile.other_levels - 1 if not exact else 0)
    test = chosen.test or stattests.default_test("categorical", profile.n, distinct)
    threshold = DEFAULT_THRESHOLDS[test] if chosen.threshold is None else chosen.threshold
    result = stattests.counts_test(test, union, ref, cur)
    new = [k for k, r in zip(union, ref, strict=True) if r == 0]
    details: dict[str, Any] = {"new_categories": new[:10], "new_category_share": float(cur[ref == 0].sum() / cur.sum())}
    if not exact:
        details["note"] = (f"{profile.other_levels} reference categories beyond max_categories are lumped: "
                           "pass reference= to check_drift for Evidently's exact verdict")
    drifted = verdict(test, result, threshold)
    if drifted and config.significance is not None and test in stattests.EFFECT_SIZES:
        drifted = significant(stattests.homogeneity_p_value(ref, cur), stattests.CHI_SQUARE, config, details)
    return ColumnDrift(name, "categorical", test, result.statistic, threshold, drifted,
                       result.p_value, *shares, histogram, profile.n, int(counts.sum()), exact, details)


def check_text(name: str, profile: TextProfile, column: pa.ChunkedArray, chosen: ColumnTest, config: DriftConfig,
               embed: Embed) -> ColumnDrift:
    texts = plain_column(column).combine_chunks()
    shares = null_shares(profile.nulls, profile.rows, texts.null_count, len(texts), config)
    histogram = text_histogram(profile, texts)
    n_cur = len(texts) - texts.null_count
    if profile.n == 0 or n_cur == 0 or len(profile.embeddings) < 2:
        return untested(name, "text", shares, histogram, profile.n, n_cur)
    test = chosen.test or stattests.EMBEDDING_CLASSIFIER
    threshold = DEFAULT_THRESHOLDS[test] if chosen.threshold is None else chosen.threshold
    sample = sample_texts(texts, config.text_sample_rows)
    embedded = np.asarray(embed(sample), dtype=np.float32)
    if embedded.shape[1:] != profile.embeddings.shape[1:]:
        raise ValueError(f"text column {name!r}: embed gives {embedded.shape[1:]} per text, the profile holds "
                         f"{profile.embeddings.shape[1:]}: check with the encoder the reference was profiled with")
    if test == stattests.EMBEDDING_CLASSIFIER:
        auc, p = classifier_auc(profile.embeddings, embedded)
        result = TestResult(auc, None)
        embedding_drifted = auc >= threshold and p <= config.text_p_value
        details: dict[str, Any] = {"auc_p_value": p}
    else:
        mmd2, p = mmd_test(profile.embeddings, embedded)
        result = TestResult(mmd2, p)
        embedding_drifted = p < threshold
        details = {}
    words = tokens(texts)
    unseen = unseen_share(words, profile.vocabulary)
    unseen_drifted = unseen - profile.unseen_share >= config.unseen_word_threshold
    details.update({"embedding_drifted": embedding_drifted, "unseen_word_share": unseen,
                    "reference_unseen_word_share": profile.unseen_share, "unseen_words_drifted": unseen_drifted,
                    "top_unseen_words": top_unseen(words, profile.vocabulary), "texts_embedded": len(sample)})
    return ColumnDrift(name, "text", test, result.statistic, threshold, embedding_drifted or unseen_drifted,
                       result.p_value, *shares, histogram, profile.n, n_cur, True, details)


# -- display histograms --------------------------------------------------------------------------------------------

def shares(counts: Sequence[float] | np.ndarray) -> list[float]:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return (counts / total if total else counts).tolist()


def numeric_histogram(profile: NumericProfile, current: np.ndarray) -> dict[str, list]:
    edges = profile.display_edges
    if profile.discrete is not None and profile.distinct <= 10:
        labels = [number(v) for v in profile.discrete[0]]
    else:
        labels = ([f"< {number(edges[0])}"] + [f"{number(a)} to {number(b)}" for a, b in zip(edges[:-1], edges[1:], strict=True)]
                  + [f">= {number(edges[-1])}"]) if edges else ["all"]
    return {"bins": labels, "reference": shares(profile.display_counts), "current": shares(binned(current, edges))}


def categorical_histogram(keys: list, ref: np.ndarray, cur: np.ndarray, top: int = 8) -> dict[str, list]:
    """The reference's most frequent categories, the current's large ones, and the rest as (other)."""
    ref_share, cur_share = np.asarray(shares(ref)), np.asarray(shares(cur))
    shown = list(np.argsort(-ref_share, kind="stable")[:top])
    shown += [i for i in np.argsort(-cur_share, kind="stable")[:3] if cur_share[i] >= 0.05 and i not in shown]
    rest = np.setdiff1d(np.arange(len(keys)), shown)
    labels = [str(keys[i]) for i in shown] + ([OTHER] if len(rest) else [])
    pick = lambda s: [float(s[i]) for i in shown] + ([float(s[rest].sum())] if len(rest) else [])
    return {"bins": labels, "reference": pick(ref_share), "current": pick(cur_share)}


def text_histogram(profile: TextProfile, texts: pa.Array) -> dict[str, list]:
    bounds = list(WORD_COUNT_EDGES)
    labels = ["0 words"] + [f"{a}-{b - 1} words" for a, b in zip(bounds[:-1], bounds[1:], strict=True)] + [f">= {bounds[-1]} words"]
    return {"bins": labels, "reference": shares(profile.word_counts), "current": shares(word_count_histogram(texts))}


def number(value: float) -> str:
    return f"{value:.4g}"


def json_safe(value: Any) -> Any:
    """NaN and infinities as strings, numpy scalars as Python's: strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


__all__ = ["ColumnDrift", "ColumnKind", "ColumnTest", "DriftConfig", "DriftReport", "ReferenceProfile", "check_drift",
           "profile_reference"]
