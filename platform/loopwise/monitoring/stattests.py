"""Two-sample drift tests with Evidently 0.7's exact semantics (`evidently/legacy/calculations/stattests`).

Each test takes cleaned values (nulls, NaN and infinities dropped, as Evidently drops them) or value counts, and
returns a `TestResult`. The default selection mirrors `registry._get_default_stattest`: a reference of more than
1,000 rows gets Wasserstein (normed by the reference's std) for a numeric column with more than 5 distinct values
and Jensen-Shannon otherwise; a smaller reference gets Kolmogorov-Smirnov for such a numeric column, and
chi-square (more than 2 distinct values) or the two-proportion z-test (2 or fewer) otherwise. Distinct values
are counted over reference and current together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.spatial import distance

SMALL_REFERENCE_ROWS = 1000  # Evidently: "reference_data.shape[0] <= 1000" picks the p-value tests
FEW_VALUES = 5  # numeric columns with at most this many distinct values are tested as categories
BINNED_VALUES = 20  # get_binned_data: a numeric reference with more distinct values is binned by Sturges' rule

WASSERSTEIN, JENSEN_SHANNON, PSI = "wasserstein", "jensenshannon", "psi"
KS, CHI_SQUARE, Z = "ks", "chisquare", "z"
EMBEDDING_CLASSIFIER, MMD = "embedding_classifier", "mmd"
EFFECT_SIZES = (WASSERSTEIN, JENSEN_SHANNON, PSI)  # tests that compare a distance with a threshold, no p-value

DEFAULT_THRESHOLDS = {WASSERSTEIN: 0.1, JENSEN_SHANNON: 0.1, PSI: 0.1, KS: 0.05, CHI_SQUARE: 0.05, Z: 0.05,
                      EMBEDDING_CLASSIFIER: 0.55, MMD: 0.05}
TESTS_BY_KIND = {
    "numeric": (WASSERSTEIN, KS, PSI, JENSEN_SHANNON, CHI_SQUARE, Z),
    "categorical": (JENSEN_SHANNON, PSI, CHI_SQUARE, Z),
    "text": (EMBEDDING_CLASSIFIER, MMD),
}
DISPLAY_NAMES = {WASSERSTEIN: "Wasserstein distance (normed)", JENSEN_SHANNON: "Jensen-Shannon distance", PSI: "PSI",
                 KS: "K-S p-value", CHI_SQUARE: "chi-square p-value", Z: "Z-test p-value",
                 EMBEDDING_CLASSIFIER: "embedding classifier ROC AUC", MMD: "embedding MMD p-value"}


def validate_test(test: str | None) -> None:
    if test is not None and test not in DEFAULT_THRESHOLDS:
        raise ValueError(f"unknown drift test {test!r}; use one of {sorted(DEFAULT_THRESHOLDS)}")


@dataclass(frozen=True)
class TestResult:
    statistic: float
    p_value: float | None

    @property
    def score(self) -> float:
        """What the threshold is compared with: the p-value where the test has one (Evidently's drift_score)."""
        return self.statistic if self.p_value is None else self.p_value


def is_drifted(test: str, score: float, threshold: float) -> bool:
    """Evidently's comparison per test: KS drifts at p <= threshold, chi-square and z at p < threshold, distances at >=."""
    if test == KS:
        return score <= threshold
    if test in (CHI_SQUARE, Z, MMD):
        return score < threshold
    return score >= threshold


def default_test(kind: str, reference_rows: int, distinct_values: int) -> str:
    """The test Evidently 0.7 picks for a column (`_get_default_stattest`), text aside (Loopwise's own)."""
    if kind == "text":
        return EMBEDDING_CLASSIFIER
    if reference_rows <= SMALL_REFERENCE_ROWS:
        if kind == "numeric" and distinct_values > FEW_VALUES:
            return KS
        return CHI_SQUARE if distinct_values > 2 else Z
    if kind == "numeric" and distinct_values > FEW_VALUES:
        return WASSERSTEIN
    return JENSEN_SHANNON


# -- counts: categories, and numeric columns with few distinct values -------------------------------------------

def align_counts(reference: tuple[Sequence, np.ndarray], current: tuple[Sequence, np.ndarray]
                 ) -> tuple[list, np.ndarray, np.ndarray]:
    """Union of the keys (reference's first) with each side's counts, zero where a side lacks a key."""
    ref_keys, ref_counts = reference
    cur_keys, cur_counts = current
    index = {key: i for i, key in enumerate(ref_keys)}
    keys = list(ref_keys)
    for key in cur_keys:
        if key not in index:
            index[key] = len(keys)
            keys.append(key)
    ref = np.zeros(len(keys))
    cur = np.zeros(len(keys))
    ref[: len(ref_keys)] = ref_counts
    cur[[index[key] for key in cur_keys]] = cur_counts
    return keys, ref, cur


def fill_zeroes(percents: np.ndarray) -> np.ndarray:
    """get_binned_data(feel_zeroes=True): empty bins get the smallest share / 1e6, or 1e-4."""
    smallest = percents[percents != 0].min()
    out = percents.copy()
    out[out == 0] = smallest / 10**6 if smallest <= 0.0001 else 0.0001
    return out


def js_of_percents(ref: np.ndarray, cur: np.ndarray) -> TestResult:
    return TestResult(float(distance.jensenshannon(ref, cur)), None)


def psi_of_percents(ref: np.ndarray, cur: np.ndarray) -> TestResult:
    ref, cur = fill_zeroes(ref), fill_zeroes(cur)
    return TestResult(float(np.sum((ref - cur) * np.log(ref / cur))), None)


def chisquare_of_counts(ref: np.ndarray, cur: np.ndarray) -> TestResult:
    """Current counts against the reference's scaled to the current's size (Evidently's `_chi_stat_test`)."""
    expected = ref * (cur.sum() / ref.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        result = stats.chisquare(cur, expected)
    return TestResult(float(result.statistic), float(result.pvalue))


def z_of_counts(keys: Sequence, ref: np.ndarray, cur: np.ndarray) -> TestResult:
    """Two-proportion z-test of the share of values other than the smallest key (Evidently's `_z_stat_test`)."""
    present = (ref > 0) | (cur > 0)
    if (ref > 0).sum() == 1 and (cur > 0).sum() == 1 and np.array_equal(ref > 0, cur > 0):
        return TestResult(0.0, 1.0)
    first = sorted(k for k, p in zip(keys, present, strict=True) if p)[0]
    is_first = np.array([k == first for k in keys])
    n1, n2 = ref.sum(), cur.sum()
    p1, p2 = ref[~is_first].sum() / n1, cur[~is_first].sum() / n2
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    return TestResult(float(z), float(2 * (1 - stats.norm.cdf(np.abs(z)))))


def counts_test(test: str, keys: Sequence, ref: np.ndarray, cur: np.ndarray) -> TestResult:
    """A test on aligned counts; PSI and JS compare shares of each side's rows, as get_binned_data does."""
    if test == JENSEN_SHANNON:
        return js_of_percents(ref / ref.sum(), cur / cur.sum())
    if test == PSI:
        return psi_of_percents(ref / ref.sum(), cur / cur.sum())
    if test == CHI_SQUARE:
        return chisquare_of_counts(ref, cur)
    if test == Z:
        return z_of_counts(keys, ref, cur)
    raise ValueError(f"{test!r} is not a test on counts (use one of {JENSEN_SHANNON}, {PSI}, {CHI_SQUARE}, {Z})")


# -- numeric values -----------------------------------------------------------------------------------------------

def normed_std(reference: np.ndarray) -> float:
    return max(float(np.std(reference)), 0.001)


def sturges_percents(reference: np.ndarray, current: np.ndarray, integer: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """get_binned_data for a numeric reference with more than 20 distinct values: Sturges' bins over both."""
    combined = np.concatenate([reference, current])
    if integer:
        combined = combined.astype(np.int64)
    edges = np.histogram_bin_edges(combined, bins="sturges")
    return (np.histogram(reference, edges)[0] / len(reference), np.histogram(current, edges)[0] / len(current))


def values_test(test: str, reference: np.ndarray, current: np.ndarray, reference_distinct: int,
                integer: bool = False) -> TestResult:
    """A test on the full reference and current values, exactly as Evidently computes it."""
    if test == WASSERSTEIN:
        return TestResult(float(stats.wasserstein_distance(reference, current)) / normed_std(reference), None)
    if test == KS:
        result = stats.ks_2samp(reference, current)
        return TestResult(float(result.statistic), float(result.pvalue))
    if test in (PSI, JENSEN_SHANNON) and reference_distinct > BINNED_VALUES:
        ref, cur = sturges_percents(reference, current, integer)
        return psi_of_percents(ref, cur) if test == PSI else js_of_percents(ref, cur)
    ref_keys, ref_counts = distinct_counts(np.sort(reference))
    cur_keys, cur_counts = distinct_counts(np.sort(current))
    keys, ref, cur = align_counts((ref_keys.tolist(), ref_counts), (cur_keys.tolist(), cur_counts))
    return counts_test(test, keys, ref, cur)


def distinct_counts(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of an ascending array with their counts."""
    if len(sorted_values) == 0:
        return sorted_values[:0], np.zeros(0)
    starts = np.flatnonzero(np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]]))
    counts = np.diff(np.append(starts, len(sorted_values)))
    return sorted_values[starts], counts.astype(np.float64)


def homogeneity_p_value(ref: np.ndarray, cur: np.ndarray) -> float:
    """Chi-square test that two samples' counts over the same keys come from one distribution (a 2 x k table;
    keys neither side has are dropped)."""
    table = np.stack([ref, cur])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 1.0
    return float(stats.chi2_contingency(table, correction=False).pvalue)


def two_proportion_p_value(hits1: float, n1: float, hits2: float, n2: float) -> float:
    """Two-sided p-value that two shares are equal (1.0 when both are 0 or both 1)."""
    pooled = (hits1 + hits2) / (n1 + n2)
    if pooled in (0.0, 1.0) or n1 == 0 or n2 == 0:
        return 1.0
    z = (hits1 / n1 - hits2 / n2) / np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return float(2 * stats.norm.sf(abs(z)))
