"""The bronze and silver transforms on small DataFrames, on Sail and on Apache Spark Connect."""

from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest
from loopwise.landing import zone
from loopwise.pipelines import stages, transforms
from loopwise.validation.suites import validate
from supportdesk import USE_CASE
from supportdesk import transforms as silver

DAY = date(2026, 3, 2)
AT = datetime(2026, 3, 3, 6, 0, 0)
SOURCES = USE_CASE.contracts


def raw_frame(spark, path: Path, source: str):
    table = zone.read_landing_file(path, SOURCES[source]).table
    table = table.append_column("partition_date", pa.array([DAY] * table.num_rows, pa.date32()))
    return spark.createDataFrame(table.to_pandas())


@pytest.fixture(scope="module")
def landed(tmp_path_factory) -> dict[str, zone.LandedFile]:
    root = tmp_path_factory.mktemp("landing")
    return {f.source: f for f in zone.land_day(USE_CASE, root, DAY, 120, seed=21, bad_row_fraction=0.08)}


def run_all(spark, landed: dict[str, zone.LandedFile]) -> dict[str, list[tuple]]:
    """Every stage's output for every source, as sorted rows."""
    out: dict[str, list[tuple]] = {}
    for source, f in landed.items():
        contract = SOURCES[source]
        raw = raw_frame(spark, f.path, source)
        report = validate(raw, contract)
        bad = stages.bad_rows_frame(spark, report)
        bronze = transforms.bronze(raw, bad, contract)
        out[f"failures_{source}"] = sorted((k[1], tuple(v)) for k, v in report.failures.items())
        out[f"bronze_{source}"] = sorted(map(tuple, bronze.collect()))
        out[f"quarantine_{source}"] = sorted(map(tuple, transforms.quarantine(raw, bad, source, AT).collect()))
        out[f"silver_{source}"] = sorted(map(tuple, USE_CASE.source(source).silver(bronze).collect()))
    return out


def test_validation_finds_exactly_the_malformed_lines(spark, landed) -> None:
    for source, f in landed.items():
        report = validate(raw_frame(spark, f.path, source), SOURCES[source])
        assert {line for _, line in report.failures} == set(f.bad_lines), source
        assert report.rows == f.rows


def test_a_row_is_named_with_every_rule_it_breaks_and_a_clean_partition_with_none(spark, tmp_path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text("order_id,customer_id,ordered_at,amount,currency,status\n"
                    "o-1,c-1,2026-03-02 10:00:00,12.50,EUR,completed\n"
                    ",c-2,2026-03-02 11:00:00,-3.00,EUR,shipped\n"
                    "o-3,c-3,2026-03-02 12:00:00,7.00,USD,refunded\n")
    report = validate(raw_frame(spark, path, "orders"), SOURCES["orders"])
    assert report.rows == 3
    assert set(report.failures) == {(DAY, 2)}
    assert sorted(report.failures[(DAY, 2)]) == ["amount is not negative", "order_id is present",
                                                 "status is one of completed, refunded, cancelled"]
    path.write_text("order_id,customer_id,ordered_at,amount,currency,status\n"
                    "o-1,c-1,2026-03-02 10:00:00,12.50,EUR,completed\n")
    clean = validate(raw_frame(spark, path, "orders"), SOURCES["orders"])
    assert (clean.rows, clean.failures) == (1, {})


def test_bronze_types_and_keeps_only_good_rows(spark, landed) -> None:
    f = landed["orders"]
    raw = raw_frame(spark, f.path, "orders")
    bad = stages.bad_rows_frame(spark, validate(raw, SOURCES["orders"]))
    rows = transforms.bronze(raw, bad, SOURCES["orders"]).collect()
    assert len(rows) == f.rows - len(f.bad_lines)
    assert all(isinstance(r.amount, Decimal) and r.amount >= 0 for r in rows)
    assert all(isinstance(r.ordered_at, datetime) for r in rows)
    assert len({r.order_id for r in rows}) == len(rows)
    assert not {r._line for r in rows} & set(f.bad_lines)


def test_quarantine_keeps_the_row_as_landed_with_its_reasons(spark, landed) -> None:
    f = landed["tickets"]
    raw = raw_frame(spark, f.path, "tickets")
    bad = stages.bad_rows_frame(spark, validate(raw, SOURCES["tickets"]))
    rows = {r.line: r for r in transforms.quarantine(raw, bad, "tickets", AT).collect()}
    assert set(rows) == set(f.bad_lines)
    for line, kind in f.bad_lines.items():
        reasons = rows[line].failed_expectations
        expected = {"missing_id": "ticket_id is present", "bad_timestamp": "created_at is a timestamp",
                    "unknown_enum": "channel is one of", "duplicate_id": "ticket_id is unique",
                    "truncated_line": "record has every field of the header", "wrong_encoding": "record is valid UTF-8"}[kind]
        assert expected in reasons, (line, kind, reasons)
        assert rows[line].landed_row == f.path.read_bytes().split(b"\n")[line].decode("utf-8", "replace")


def test_silver_orders_convert_to_eur_and_flag_status(spark) -> None:
    bronze = spark.createDataFrame(
        [("O1", "C1", datetime(2026, 3, 2, 10), Decimal("10.00"), "USD", "refunded", DAY, 1),
         ("O2", "C1", datetime(2026, 3, 2, 11), Decimal("10.00"), "GBP", "completed", DAY, 2)],
        "order_id string, customer_id string, ordered_at timestamp, amount decimal(12,2), currency string, "
        "status string, partition_date date, _line long")
    rows = {r.order_id: r for r in silver.silver_orders(bronze).collect()}
    assert rows["O1"].amount_eur == pytest.approx(9.2) and rows["O1"].is_refunded and not rows["O1"].is_cancelled
    assert rows["O2"].amount_eur == pytest.approx(11.7) and rows["O2"].order_date == DAY


EUR_CASES = {  # amount, currency -> EUR, rounded half up from the exact product
    "half cent": (Decimal("43.50"), "GBP", 50.90),  # 50.895: in doubles 50.894999..., which rounded down on Apache Spark
    "below half": (Decimal("0.04"), "GBP", 0.05),  # 0.0468
    "exact": (Decimal("1.25"), "USD", 1.15),
    "large": (Decimal("9999999999.99"), "USD", 9199999999.99),  # 9199999999.9908
    "unknown currency": (Decimal("5.00"), "JPY", None),
}


def eur_amounts(spark) -> dict[str, float | None]:
    bronze = spark.createDataFrame(
        [(name, "C1", datetime(2026, 3, 2, 10), amount, currency, "completed", DAY, 1)
         for name, (amount, currency, _) in EUR_CASES.items()],
        "order_id string, customer_id string, ordered_at timestamp, amount decimal(12,2), currency string, "
        "status string, partition_date date, _line long")
    return {r.order_id: r.amount_eur for r in silver.silver_orders(bronze).collect()}


def test_silver_eur_amounts_round_the_exact_product_half_up(spark) -> None:
    assert eur_amounts(spark) == {name: want for name, (_, _, want) in EUR_CASES.items()}


def test_silver_tickets_build_the_model_text(spark) -> None:
    bronze = spark.createDataFrame(
        [("T1", "C1", datetime(2026, 3, 2, 9), "chat", "Broken kettle", "It  leaks.", DAY, 1)],
        "ticket_id string, customer_id string, created_at timestamp, channel string, subject string, body string, "
        "partition_date date, _line long")
    row = silver.silver_tickets(bronze).collect()[0]
    assert row.text == "Broken kettle. It  leaks." and row.text_length == len(row.text)


WHITESPACE_CASES = {
    "one space": ("a b", "a b"),
    "runs": ("a  b \t\n c", "a b c"),
    "tab then space": ("a\t b", "a b"),
    "space then newline": ("a \nb", "a b"),
    "lone control": ("a\rb\x0bc\fd", "a b c d"),
    "edges": ("  \t a b \n", "a b"),
    "unicode spaces are text": ("a\u00a0b\u2003c", "a\u00a0b\u2003c"),
}


def normalized_text(spark) -> dict[str, str]:
    rows = [(name, "C1", "2026-03-02 09:00:00", "chat", "s", body, DAY, i)
            for i, (name, (body, _)) in enumerate(WHITESPACE_CASES.items())]
    raw = spark.createDataFrame(rows, "ticket_id string, customer_id string, created_at string, channel string, "
                                      "subject string, body string, partition_date date, _line long")
    no_bad = spark.createDataFrame([], "partition_date date, _line long")
    return {r.ticket_id: r.body for r in transforms.bronze(raw, no_bad, SOURCES["tickets"]).collect()}


def test_bronze_collapses_whitespace_runs_as_java_regex_s_does(spark) -> None:
    assert normalized_text(spark) == {name: want for name, (_, want) in WHITESPACE_CASES.items()}


@pytest.mark.apache_spark
def test_apache_spark_connect_gives_identical_results(spark, apache_spark, landed) -> None:
    """The same transforms on a real Apache Spark Connect server (local[2], needs Java 17)."""
    apache = apache_spark
    on_sail, on_apache = run_all(spark, landed), run_all(apache, landed)
    on_sail["whitespace"], on_apache["whitespace"] = normalized_text(spark), normalized_text(apache)
    on_sail["eur"], on_apache["eur"] = sorted(eur_amounts(spark).items()), sorted(eur_amounts(apache).items())
    assert on_sail.keys() == on_apache.keys()
    for name in on_sail:
        assert on_sail[name] == on_apache[name], name
    assert all(on_sail[k] for k in on_sail)  # nothing compared vacuously


@pytest.mark.apache_spark
def test_apache_spark_rounds_feature_boundaries_the_same(spark, apache_spark) -> None:
    """The feature tables' half-way rounding (tests/test_features.py), here beside the other Apache Spark tests:
    one worker starts the Java server once."""
    from tests.test_features import half_boundary_features

    assert half_boundary_features(apache_spark) == half_boundary_features(spark) == (0.02, 10.01, 0.0188)


ENGINE_ORDER_SCRIPT = """
import json
from loopwise.spark import connect, engine_version
apache = connect("local[2]", {"spark.sql.shuffle.partitions": "7"})
sail = connect(None)
versions = [engine_version(s) for s in (apache, sail, connect("local[2]"))]
print(json.dumps([*versions, apache.conf.get("spark.sql.shuffle.partitions")]))
"""


@pytest.mark.apache_spark
def test_each_engine_gets_its_own_session_in_either_order_and_the_process_exits(apache_spark) -> None:
    """Apache Spark first, then Sail, in a fresh process (the fixture did Sail first here). A configured
    shuffle partition count is kept; without one, local[N] uses 4, not Spark's cluster default of 200."""
    import json
    import subprocess
    import sys

    import pysail

    from tests.services import child_env

    done = subprocess.run([sys.executable, "-c", ENGINE_ORDER_SCRIPT], capture_output=True, text=True,
                          timeout=240, env=child_env())  # a hang at exit (a stop against a dead server) times out
    assert done.returncode == 0, done.stderr[-3000:]
    apache, sail, apache_again, partitions = json.loads(done.stdout.strip().splitlines()[-1])
    assert apache.startswith("4.") and apache_again == apache
    assert partitions == "7" and apache_spark.conf.get("spark.sql.shuffle.partitions") == "4"
    assert sail == f"Sail {pysail.__version__.split('+')[0]}" != apache
