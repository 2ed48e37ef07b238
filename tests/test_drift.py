"""Drift statistics: verdicts on known shifts, no false alarms, Evidently's test selection, the profile's round trip."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from loopwise.monitoring import (
    ColumnTest,
    DriftConfig,
    ReferenceProfile,
    check_drift,
    minilm_embed,
    profile_reference,
    stattests,
)
from loopwise.monitoring.sketch import RankSketch
from scipy import stats


def mixture(rng: np.random.Generator, rows: int, weight: float) -> np.ndarray:
    return np.where(rng.random(rows) < weight, rng.normal(0, 1, rows), rng.normal(4, 0.5, rows))


def levels(rng: np.random.Generator, rows: int, count: int = 60, tilt: float = 0.0) -> np.ndarray:
    weights = 1.0 / np.arange(1, count + 1) ** (1.1 - tilt)
    return rng.choice([f"v{i}" for i in range(count)], rows, p=weights / weights.sum())


def day(rng: np.random.Generator, rows: int, *, shift: float = 0.0, scale: float = 1.0, tail_scale: float = 1.0,
        weight: float = 0.7, tilt: float = 0.0, null_share: float = 0.05, unseen: float = 0.0) -> pd.DataFrame:
    """A table of every kind of column; the keywords move one distribution each."""
    colour = rng.choice(["red", "green", "blue"], rows, p=[0.5, 0.3, 0.2]).astype(object)
    colour[rng.random(rows) < unseen] = "violet"
    with_nulls = rng.normal(0, 1, rows)
    with_nulls[rng.random(rows) < null_share] = np.nan
    return pd.DataFrame({
        "gauss": rng.normal(shift, scale, rows),
        "student_t": tail_scale * rng.standard_t(2, rows),
        "lognormal": rng.lognormal(0.0, 1.0, rows) * tail_scale,
        "mixture": mixture(rng, rows, weight),
        "with_nulls": with_nulls,
        "score": rng.beta(2, 5, rows),
        "colour": colour,
        "many_levels": levels(rng, rows, tilt=tilt),
    })


def drifted_columns(report) -> set[str]:
    return {c.name for c in report.columns if c.drifted}


@pytest.mark.parametrize("reference_rows", [5000, 600])
def test_same_distribution_raises_no_alarm_over_seeds(reference_rows):
    for seed in range(4):
        rng = np.random.default_rng(seed)
        profile = profile_reference(day(rng, reference_rows))
        report = check_drift(profile, day(rng, 3000))
        assert not report.drifted, report.markdown()
        assert not any(c.null_drifted for c in report.columns)
        if reference_rows > 1000:  # the distances at their thresholds: no column alarms at all
            assert drifted_columns(report) == set(), report.markdown()


@pytest.mark.parametrize("reference_rows", [5000, 600])
def test_shifted_mean_scale_tails_mixtures_and_levels_drift(reference_rows):
    rng = np.random.default_rng(1)
    profile = profile_reference(day(rng, reference_rows))
    # a small reference gets p-value tests, and chi-square alarms on levels it never saw (as in Evidently): there
    # the moved columns must be among the drifted, with a large reference exactly they
    same = (lambda found, moved: found == moved) if reference_rows > 1000 else (lambda found, moved: moved <= found)
    assert same(drifted_columns(check_drift(profile, day(rng, 3000, shift=0.4))), {"gauss"})
    assert same(drifted_columns(check_drift(profile, day(rng, 3000, scale=1.6))), {"gauss"})
    assert same(drifted_columns(check_drift(profile, day(rng, 3000, tail_scale=1.6))), {"student_t", "lognormal"})
    assert same(drifted_columns(check_drift(profile, day(rng, 3000, weight=0.4))), {"mixture"})
    assert same(drifted_columns(check_drift(profile, day(rng, 3000, tilt=0.6))), {"many_levels"})
    everything = check_drift(profile, day(rng, 3000, shift=0.4, tail_scale=1.6, weight=0.4, tilt=0.6))
    assert everything.share_drifted >= 5 / 8 and everything.drifted


def test_on_a_few_hundred_rows_an_effect_counts_only_where_it_is_significant():
    """Evidently's distances on 300 current rows against a 1,200-row reference alarm on chance (a heavy tail's
    Wasserstein, a 60-level Jensen-Shannon); `significance` keeps the verdicts whose difference a two-sample test
    also finds, so chance stays near its rate and every moved column is still caught."""
    chance, gated = [], []
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        profile, today = profile_reference(day(rng, 1200)), day(rng, 300)
        chance.append(drifted_columns(check_drift(profile, today)))
        gated.append(drifted_columns(check_drift(profile, today, DriftConfig(significance=0.05))))
    assert sum(map(len, chance)) >= 20, chance  # about two of the eight columns a check, undrifted
    assert sum(map(len, gated)) <= 4, gated  # 160 column checks at p 0.05, and only past a threshold too
    rng = np.random.default_rng(1)
    profile = profile_reference(day(rng, 1200))
    for moved, columns in [({"shift": 0.4}, {"gauss"}), ({"tail_scale": 1.6}, {"student_t", "lognormal"}),
                           ({"weight": 0.4}, {"mixture"}), ({"tilt": 0.6}, {"many_levels"})]:
        report = check_drift(profile, day(rng, 300, **moved), DriftConfig(significance=0.05))
        assert drifted_columns(report) == columns, (moved, report.markdown())
        assert all(report.column(c).details["significance"]["p_value"] <= 0.05 for c in columns)
        assert "and p ≤ 0.05" in report.markdown()  # the UI's table says why the column counts


def test_unseen_categories_drift_and_are_named():
    rng = np.random.default_rng(2)
    profile = profile_reference(day(rng, 5000))
    colour = check_drift(profile, day(rng, 3000, unseen=0.25)).column("colour")
    assert colour.drifted and colour.details["new_categories"] == ["violet"]
    assert colour.details["new_category_share"] == pytest.approx(0.25, abs=0.03)
    assert "violet" in colour.histogram["bins"]


def test_null_share_drift_is_its_own_verdict_and_counts_toward_the_share():
    rng = np.random.default_rng(3)
    profile = profile_reference(day(rng, 5000))
    report = check_drift(profile, day(rng, 3000, null_share=0.3))
    column = report.column("with_nulls")
    assert column.null_drifted and not column.drifted  # the non-null values did not move
    assert column.null_share_reference == pytest.approx(0.05, abs=0.01)
    assert column.null_share_current == pytest.approx(0.3, abs=0.03)
    assert report.number_drifted == 1
    quiet = check_drift(profile, day(rng, 3000, null_share=0.3), DriftConfig(null_drift_counts=False))
    assert quiet.number_drifted == 0


def test_a_column_with_no_values_today_is_null_drift_not_an_error():
    rng = np.random.default_rng(4)
    profile = profile_reference(day(rng, 2000))
    today = day(rng, 500)
    today["gauss"] = np.nan
    column = check_drift(profile, today).column("gauss")
    assert column.test == "none" and column.null_drifted and column.null_share_current == 1.0


def test_prediction_score_drift_is_a_numeric_column():
    rng = np.random.default_rng(5)
    reference = pd.DataFrame({"score": rng.beta(2, 5, 4000)})
    profile = profile_reference(reference)
    assert not check_drift(profile, pd.DataFrame({"score": rng.beta(2, 5, 2000)})).drifted
    shifted = check_drift(profile, pd.DataFrame({"score": rng.beta(3, 4, 2000)})).column("score")
    assert shifted.drifted and shifted.test == "wasserstein"


@pytest.mark.parametrize(("kind", "reference_rows", "distinct", "expected"), [
    ("numeric", 1001, 6, "wasserstein"), ("numeric", 1001, 5, "jensenshannon"), ("categorical", 1001, 2, "jensenshannon"),
    ("categorical", 1001, 40, "jensenshannon"), ("numeric", 1000, 6, "ks"), ("numeric", 1000, 5, "chisquare"),
    ("numeric", 1000, 2, "z"), ("categorical", 1000, 3, "chisquare"), ("categorical", 1000, 2, "z"),
])
def test_default_tests_are_evidentlys_registry(kind, reference_rows, distinct, expected):
    """evidently 0.7 legacy/calculations/stattests/registry.py `_get_default_stattest`."""
    assert stattests.default_test(kind, reference_rows, distinct) == expected


def test_distinct_values_are_counted_over_reference_and_current_together():
    rng = np.random.default_rng(6)
    reference = pd.DataFrame({"x": rng.integers(0, 5, 3000).astype(float), "small": rng.integers(0, 2, 3000).astype(float)})
    profile = profile_reference(reference)
    assert check_drift(profile, reference).column("x").test == "jensenshannon"  # 5 values
    assert check_drift(profile, reference.assign(x=reference["x"] + 0.5)).column("x").test == "wasserstein"  # 10
    small = profile_reference(reference.iloc[:800])
    assert check_drift(small, reference.iloc[800:1600]).column("small").test == "z"
    assert check_drift(small, reference.iloc[800:1600].assign(small=2.0)).column("small").test == "chisquare"


def test_statistics_equal_evidentlys_formulas_on_the_full_reference():
    rng = np.random.default_rng(7)
    ref, cur = rng.standard_t(3, 800), rng.standard_t(3, 700) * 1.1
    small = check_drift(profile_reference(pd.DataFrame({"x": ref})), pd.DataFrame({"x": cur})).column("x")
    assert small.test == "ks" and small.p_value == stats.ks_2samp(ref, cur).pvalue

    ref, cur = rng.lognormal(0, 1, 50_000), rng.lognormal(0.05, 1, 20_000)
    big = check_drift(profile_reference(pd.DataFrame({"x": ref})), pd.DataFrame({"x": cur})).column("x")
    exact = stats.wasserstein_distance(ref, cur) / np.std(ref)
    low, high = big.details["statistic_bounds"]
    assert low <= exact + 1e-12 <= high + 1e-12 and big.statistic == pytest.approx(exact, rel=1e-2) and big.exact


def test_sketch_bounds_contain_the_exact_wasserstein_distance_on_heavy_tails():
    rng = np.random.default_rng(8)
    for ref, cur in [(rng.standard_t(2, 30_000), rng.standard_t(2, 9_000) * 1.05),
                     (rng.lognormal(0, 2, 30_000), rng.lognormal(0.02, 2, 500)),
                     (mixture(rng, 30_000, 0.7), mixture(rng, 10_000, 0.65))]:
        low, high = RankSketch.of_sorted(np.sort(ref), 1000).wasserstein_bounds(np.sort(cur))
        exact = stats.wasserstein_distance(ref, cur)
        assert low - 1e-9 <= exact <= high + 1e-9 and (high - low) < 0.1 * exact


def test_overrides_per_column_and_per_kind_from_a_plain_dict():
    rng = np.random.default_rng(9)
    reference, today = day(rng, 5000), day(rng, 3000, shift=0.075)
    profile = profile_reference(reference)
    assert "gauss" not in drifted_columns(check_drift(profile, today))
    config = DriftConfig.from_dict({"drift_share": 0.1, "columns": {"gauss": {"threshold": 0.05}},
                                    "categorical": {"test": "psi", "threshold": 0.2}})
    report = check_drift(profile, today, config)
    assert report.column("gauss").drifted and report.column("gauss").threshold == 0.05
    assert report.column("colour").test == "psi" and report.column("colour").threshold == 0.2
    assert report.drifted  # 1 of 8 >= 0.1
    ks = check_drift(profile, today, DriftConfig(columns={"gauss": ColumnTest("ks")})).column("gauss")
    assert ks.test == "ks" and ks.p_value is not None and ks.drifted
    with pytest.raises(ValueError, match="unknown drift settings"):
        DriftConfig.from_dict({"drift_shares": 0.3})
    with pytest.raises(ValueError, match="unknown drift test 'wasserstien'"):
        DriftConfig.from_dict({"columns": {"gauss": {"test": "wasserstien"}}})
    with pytest.raises(ValueError, match="does not apply to categorical"):
        check_drift(profile, today, DriftConfig(columns={"colour": ColumnTest("wasserstein")}))


def test_the_full_reference_gives_the_exact_verdict_where_the_profile_cannot():
    rng = np.random.default_rng(10)
    reference, today = pd.DataFrame({"x": rng.normal(0, 1, 20_000)}), pd.DataFrame({"x": rng.normal(0.1, 1, 5000)})
    config = DriftConfig(numeric=ColumnTest("psi"))
    from_profile = check_drift(profile_reference(reference), today, config).column("x")
    exact = check_drift(profile_reference(reference), today, config, reference=reference).column("x")
    assert not from_profile.exact and exact.exact
    expected = stattests.values_test("psi", np.sort(reference["x"].to_numpy()), np.sort(today["x"].to_numpy()), 20_000)
    assert exact.statistic == expected.statistic
    assert from_profile.statistic == pytest.approx(exact.statistic, rel=0.05)

    many = pd.DataFrame({"level": levels(rng, 5000, count=40)})
    capped = DriftConfig(max_categories=10)
    today = pd.DataFrame({"level": levels(rng, 2000, count=40, tilt=0.5)})
    lumped = check_drift(profile_reference(many, config=capped), today).column("level")
    recounted = check_drift(profile_reference(many, config=capped), today, reference=many).column("level")
    uncapped = check_drift(profile_reference(many), today).column("level")
    assert not lumped.exact and recounted.exact and recounted.statistic == uncapped.statistic


def test_profile_round_trips_through_json_and_gives_the_same_report():
    rng = np.random.default_rng(11)
    reference = day(rng, 3000)
    reference["flag"] = rng.random(3000) < 0.3
    reference["count"] = rng.integers(0, 4, 3000)
    profile = profile_reference(pa.Table.from_pandas(reference))
    assert profile.kinds["flag"] == "categorical" and profile.kinds["count"] == "categorical"
    restored = ReferenceProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    today = day(rng, 2000, shift=0.3).assign(flag=rng.random(2000) < 0.4, count=rng.integers(0, 5, 2000))
    assert check_drift(restored, today).to_dict() == check_drift(profile, today).to_dict()
    assert profile.json_size() < 300_000


def test_markdown_shows_the_table_and_readable_histograms():
    rng = np.random.default_rng(12)
    profile = profile_reference(day(rng, 2000))
    text = check_drift(profile, day(rng, 1000, shift=0.5)).markdown()
    assert "| column | kind | test | statistic | threshold |" in text
    assert "| gauss | numeric | Wasserstein distance (normed) |" in text and "**drifted**" in text
    assert "**gauss** (numeric, drifted)" in text and "█" in text


def test_missing_column_is_named():
    rng = np.random.default_rng(13)
    profile = profile_reference(day(rng, 500))
    with pytest.raises(ValueError, match=r"\['score'\].*missing from the current data"):
        check_drift(profile, day(rng, 500).drop(columns="score"))


TOPICS = {
    "weather": (["rain", "wind", "storm", "sunshine", "fog", "snow"], ["morning", "afternoon", "weekend", "night"]),
    "cooking": (["pasta", "curry", "bread", "soup", "salad", "dumplings"], ["oven", "pan", "grill", "pot"]),
}


def sentences(rng: np.random.Generator, topic: str, rows: int) -> list[str]:
    things, places = TOPICS[topic]
    if topic == "weather":
        return [f"Expect {rng.choice(things)} this {rng.choice(places)}, with {rng.choice(things)} later on" for _ in range(rows)]
    return [f"Cook the {rng.choice(things)} in the {rng.choice(places)} and serve it with {rng.choice(things)}" for _ in range(rows)]


def test_text_drift_on_minilm_embeddings_and_unseen_words():
    rng = np.random.default_rng(14)
    encoder, seen = minilm_embed(), {}

    def embed(texts: list[str]) -> np.ndarray:  # the real encoder, each text embedded once across the checks
        missing = [t for t in dict.fromkeys(texts) if t not in seen]
        seen.update(zip(missing, encoder(missing) if missing else [], strict=True))
        return np.stack([seen[t] for t in texts])

    config = DriftConfig(text_sample_rows=32)
    profile = profile_reference(pd.DataFrame({"note": sentences(rng, "weather", 200)}), text_columns=["note"],
                                embed=embed, config=config)
    same = check_drift(profile, pd.DataFrame({"note": sentences(rng, "weather", 100)}), config, embed=embed).column("note")
    assert not same.drifted and same.details["unseen_word_share"] == 0.0
    cooking = pd.DataFrame({"note": sentences(rng, "cooking", 100)})
    new = check_drift(profile, cooking, config, embed=embed).column("note")
    assert new.drifted and new.details["embedding_drifted"] and new.details["unseen_words_drifted"]
    assert new.statistic > 0.9 and set(new.details["top_unseen_words"]) & {"cook", "oven", "pasta"}
    mmd = check_drift(profile, cooking, DriftConfig(text_sample_rows=32, text=ColumnTest("mmd")), embed=embed).column("note")
    assert mmd.test == "mmd" and mmd.p_value < 0.05 and mmd.drifted
