"""The synthetic feed: deterministic, seasonal, learnable, driftable, and malformed on request."""

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from loopwise.landing import malformed, zone
from supportdesk import USE_CASE
from supportdesk.feed import DriftSpec, DriftSpecError, generate_day

DAY = date(2026, 3, 2)  # a Monday
SOURCES = USE_CASE.contracts


def test_the_same_seed_lands_the_same_bytes(tmp_path: Path) -> None:
    a = zone.land_day(USE_CASE, tmp_path / "a", DAY, 150, seed=5, bad_row_fraction=0.05)
    b = zone.land_day(USE_CASE, tmp_path / "b", DAY, 150, seed=5, bad_row_fraction=0.05)
    c = zone.land_day(USE_CASE, tmp_path / "c", DAY, 150, seed=6, bad_row_fraction=0.05)
    assert [f.path.read_bytes() for f in a] == [f.path.read_bytes() for f in b]
    assert [f.path.read_bytes() for f in a] != [f.path.read_bytes() for f in c]


def test_orders_follow_a_weekly_season() -> None:
    counts = {d: len(generate_day(DAY + timedelta(days=d), 300, seed=1).frames["orders"]) for d in range(14)}
    weekend = np.mean([counts[d] for d in counts if (DAY + timedelta(days=d)).weekday() >= 5])
    midweek = np.mean([counts[d] for d in counts if (DAY + timedelta(days=d)).weekday() in (1, 2, 3)])
    assert weekend > 1.2 * midweek


def test_ticket_text_has_variety() -> None:
    tickets = generate_day(DAY, 500, seed=2).frames["tickets"]
    assert tickets["subject"].nunique() > 100
    assert tickets["body"].nunique() > 0.9 * len(tickets)
    assert tickets["body"].str.contains("[A-Z]{6,}", regex=True).any()  # shouting
    assert set(tickets["channel"]) == {"email", "chat", "phone", "web_form"}


def _labelled(seed: int, days: int = 6) -> pd.DataFrame:
    feeds = [generate_day(DAY + timedelta(days=i), 600, seed=seed).frames for i in range(days)]
    tickets, orders = (pd.concat([f[name] for f in feeds]) for name in ("tickets", "orders"))
    outcomes = pd.concat([f["ticket_outcomes"] for f in feeds]).drop_duplicates("ticket_id")
    refunds = orders.assign(refund=orders["status"] == "refunded").groupby("customer_id")["refund"].mean()
    data = tickets.merge(outcomes, on="ticket_id")
    data["refund_rate"] = data["customer_id"].map(refunds).fillna(0.0)
    data["label"] = data["escalated"] == "true"
    return data


def test_escalation_is_learnable_from_text_and_history_but_not_trivial() -> None:
    from scipy.sparse import csr_matrix, hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    train, test = _labelled(seed=3), _labelled(seed=4)
    assert 0.1 < train["label"].mean() < 0.5
    vec = TfidfVectorizer(min_df=2, ngram_range=(1, 2))

    def features(d: pd.DataFrame, fit: bool) -> object:
        text = (d["subject"] + " " + d["body"]).str.lower()
        x = vec.fit_transform(text) if fit else vec.transform(text)
        return hstack([x, csr_matrix(d[["refund_rate"]].to_numpy())])

    def text(d: pd.DataFrame) -> pd.Series:
        return (d["subject"] + " " + d["body"]).str.lower()

    text_only = LogisticRegression(max_iter=2000).fit(vec.fit_transform(text(train)), train["label"])
    auc_text = roc_auc_score(test["label"], text_only.predict_proba(vec.transform(text(test)))[:, 1])
    both = LogisticRegression(max_iter=2000).fit(features(train, True), train["label"])
    auc_both = roc_auc_score(test["label"], both.predict_proba(features(test, False))[:, 1])
    assert 0.65 < auc_text < 0.95
    assert auc_both > auc_text  # the customer's history adds signal beyond the text


# The kinds each source's contract allows: an amount column adds the amount kinds, a text column
# (CSV only: Parquet cannot carry it) the wrong encoding, an enum column the unknown value.
MALFORMED_KINDS = {
    "tickets": {"missing_id", "bad_timestamp", "unknown_enum", "duplicate_id", "truncated_line", "wrong_encoding"},
    "orders": {"missing_id", "bad_timestamp", "negative_amount", "non_numeric_amount", "unknown_enum",
               "duplicate_id", "truncated_line"},
    "ticket_outcomes": {"missing_id", "bad_timestamp", "unknown_enum", "duplicate_id", "truncated_line"},
}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_every_malformed_kind_lands_and_reads_back_one_record_per_line(tmp_path: Path, fmt: str) -> None:
    landed = zone.land_day(USE_CASE, tmp_path, DAY, 300, seed=9, bad_row_fraction=0.1, fmt=fmt)
    assert sorted(f.source for f in landed) == sorted(MALFORMED_KINDS)
    for f in landed:
        expected = MALFORMED_KINDS[f.source] - ({"wrong_encoding"} if fmt == "parquet" else set())
        assert set(malformed.kinds_for(SOURCES[f.source], fmt)) == expected, f.source
        assert set(f.bad_lines.values()) == expected, f.source
        table = zone.read_landing_file(f.path, SOURCES[f.source]).table
        assert table.num_rows == f.rows  # a broken line never swallows its neighbours
        lines = table.column("_line").to_pylist()
        assert lines == list(range(1, f.rows + 1))


def test_wrong_encoding_is_kept_visible_not_dropped(tmp_path: Path) -> None:
    landed = {f.source: f for f in zone.land_day(USE_CASE, tmp_path, DAY, 300, seed=9, bad_row_fraction=0.1)}
    tickets = landed["tickets"]
    line = next(n for n, kind in tickets.bad_lines.items() if kind == "wrong_encoding")
    table = zone.read_landing_file(tickets.path, SOURCES["tickets"]).table.to_pylist()
    assert "\ufffd" in table[line - 1]["_landed_row"]


def test_drift_shifts_the_named_aspects() -> None:
    base = generate_day(DAY, 800, seed=3)
    drifted = generate_day(DAY, 800, seed=3, drift=DriftSpec.parse("topic,amounts=2,channel=chat"))
    assert drifted.frames["tickets"]["body"].str.contains("Plus").sum() > 50
    assert not base.frames["tickets"]["body"].str.contains("Plus").any()
    ratio = drifted.frames["orders"]["amount"].astype(float).mean() / base.frames["orders"]["amount"].astype(float).mean()
    assert 1.8 < ratio < 2.2
    assert (drifted.frames["tickets"]["channel"] == "chat").mean() > (base.frames["tickets"]["channel"] == "chat").mean() + 0.2


def test_escalation_drift_raises_the_rate() -> None:
    def rate(spec: str | None) -> float:
        return float((_outcomes(spec)["escalated"] == "true").mean())

    def _outcomes(spec: str | None) -> pd.DataFrame:
        return generate_day(DAY + timedelta(days=3), 800, seed=3, drift=DriftSpec.parse(spec)).frames["ticket_outcomes"]

    assert rate("escalation=1.5") > rate(None) + 0.05


def test_a_bad_drift_spec_lists_the_known_aspects() -> None:
    with pytest.raises(DriftSpecError, match="amounts=F"):
        DriftSpec.parse("weather=rainy")


def test_a_missing_landing_file_names_the_path_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(zone.LandingFileMissing) as err:
        zone.find_landing_file(tmp_path, "orders", DAY)
    assert str(tmp_path / "orders" / "2026-03-02.csv") in str(err.value)
    assert "loopwise land --date 2026-03-02" in str(err.value)


def test_extra_and_missing_columns_are_reported_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text("order_id,customer_id,ordered_at,amount,currency,status,coupon\n"
                    "O1,C1,2026-03-02 10:00:00,12.50,EUR,completed,SPRING\n")
    landed = zone.read_landing_file(path, SOURCES["orders"])
    assert landed.extra_columns == ["coupon"] and landed.missing_columns == []
    assert landed.table.to_pylist()[0]["_extra_columns"] == '{"coupon": "SPRING"}'
    path.write_text("order_id,customer_id,ordered_at,amount,status\nO1,C1,2026-03-02 10:00:00,12.50,completed\n")
    landed = zone.read_landing_file(path, SOURCES["orders"])
    assert landed.missing_columns == ["currency"]
    assert landed.table.to_pylist()[0]["currency"] is None
