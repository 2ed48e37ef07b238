"""Great Expectations suites per source, evaluated on Spark Connect DataFrames row by row.

GX 1.x reports, for each failed expectation, the index columns of every unexpected row
(`unexpected_index_list`), which become the quarantine's reasons. GX takes seconds to import,
so it is imported here, where validation runs, never when definitions load.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

from loopwise.contracts import SourceContract

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


TIMESTAMP_REGEX = r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01]) ([01]\d|2[0-3]):[0-5]\d:[0-5]\d$"
NUMBER_REGEX = r"^-?\d+(\.\d+)?$"
INDEX_COLUMNS = ["partition_date", "_line"]
OCCURRENCE_COLUMN = "_key_occurrence"


@dataclass(frozen=True)
class Rule:
    """One expectation with the plain-language name the quarantine and metadata show."""

    name: str
    expectation: Any  # a gx.expectations.Expectation


def rules_for(contract: SourceContract) -> list[Rule]:
    """The expectation suite of a source, derived from its contract."""
    import great_expectations as gx

    e = gx.expectations
    rules = [
        Rule("record has every field of the header",
             e.ExpectColumnValuesToBeInSet(column="_field_shortfall", value_set=[0])),
        Rule("record is valid UTF-8", e.ExpectColumnValuesToNotMatchRegex(column="_landed_row", regex="\ufffd")),
        Rule(f"{contract.key} is unique in its partition",
             e.ExpectColumnValuesToBeInSet(column=OCCURRENCE_COLUMN, value_set=[1])),
    ]
    for c in contract.columns:
        if c.required:
            rules.append(Rule(f"{c.name} is present", e.ExpectColumnValuesToNotBeNull(column=c.name)))
        if c.kind == "timestamp":
            rules.append(Rule(f"{c.name} is a timestamp YYYY-MM-DD HH:MM:SS",
                              e.ExpectColumnValuesToMatchRegex(column=c.name, regex=TIMESTAMP_REGEX)))
        elif c.kind == "amount":
            rules.append(Rule(f"{c.name} is a number", e.ExpectColumnValuesToMatchRegex(column=c.name, regex=NUMBER_REGEX)))
            rules.append(Rule(f"{c.name} is not negative", e.ExpectColumnValuesToNotMatchRegex(column=c.name, regex=r"^-")))
        if c.allowed:
            rules.append(Rule(f"{c.name} is one of {', '.join(c.allowed)}",
                              e.ExpectColumnValuesToBeInSet(column=c.name, value_set=list(c.allowed))))
    return rules


@dataclass
class ValidationReport:
    """Which rows failed which expectations, for one source over one or more partitions."""

    source: str
    rows: int
    failures: dict[tuple[date, int], list[str]] = field(default_factory=dict)
    rule_names: list[str] = field(default_factory=list)

    @property
    def bad_rows(self) -> int:
        return len(self.failures)

    @property
    def bad_fraction(self) -> float:
        return self.bad_rows / self.rows if self.rows else 0.0

    def failed_counts(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for names in self.failures.values():
            counts.update(names)
        return dict(counts.most_common())


def _context() -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def validate(raw: DataFrame, contract: SourceContract) -> ValidationReport:
    """Run the source's suite over raw rows; every failing row is named with every rule it broke.

    Two passes: every expectation pass/fail only, then the failed ones again for the index of
    each unexpected row. Only failed expectations have unexpected rows, so the report is the same
    as one complete pass, which is 3x slower on Sail: it queries every expectation's unexpected
    values and rows even when there are none.

    `raw` carries `_key_occurrence` from ingest: computing it there, once, instead of with a
    window here made validation about 5x faster on Sail, which re-runs the plan for each of
    GX's metric queries (it does not support persist).
    """
    rules = rules_for(contract)
    batch = _batch(contract, raw)
    by_signature = {_signature(r.expectation.configuration): r for r in rules}
    names = {signature: r.name for signature, r in by_signature.items()}
    report = ValidationReport(contract.name, raw.count(), rule_names=[r.name for r in rules])
    summary = batch.validate(_suite(contract, rules), result_format={"result_format": "BOOLEAN_ONLY"})
    _raise_errors(summary.results, names, contract)
    failed_rules = [by_signature[_signature(o.expectation_config)] for o in summary.results if not o.success]
    if not failed_rules:
        return report
    detail = batch.validate(_suite(contract, failed_rules), result_format={
        "result_format": "COMPLETE", "unexpected_index_column_names": INDEX_COLUMNS})
    _raise_errors(detail.results, names, contract)
    for outcome in detail.results:
        name = _name(outcome.expectation_config, names)
        for row in outcome.result.get("unexpected_index_list") or []:
            key = (_as_date(row["partition_date"]), int(row["_line"]))
            report.failures.setdefault(key, []).append(name)
    return report


def _batch(contract: SourceContract, raw: DataFrame) -> Any:
    asset = _context().data_sources.add_spark(f"lake_{contract.name}").add_dataframe_asset(contract.name)
    return asset.add_batch_definition_whole_dataframe("partition").get_batch(batch_parameters={"dataframe": raw})


def _suite(contract: SourceContract, rules: list[Rule]) -> Any:
    import great_expectations as gx

    return gx.ExpectationSuite(name=f"{contract.name}_contract", expectations=[r.expectation for r in rules])


def _raise_errors(outcomes: list[Any], names: dict[str, str], contract: SourceContract) -> None:
    for outcome in outcomes:
        if outcome.exception_info and outcome.exception_info.get("raised_exception"):
            raise RuntimeError(f"expectation {_name(outcome.expectation_config, names)!r} on {contract.name} "
                               f"could not run: {outcome.exception_info.get('exception_message')}")


def _name(config: Any, names: dict[str, str]) -> str:
    return names.get(_signature(config)) or f"{config.type} {config.kwargs.get('column', '')}".strip()


def _signature(config: Any) -> str:
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("result_format", "batch_id")}
    return f"{config.type}:{json.dumps(kwargs, sort_keys=True, default=str)}"


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])
