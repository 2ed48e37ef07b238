"""Bronze assets: validated, typed, deduplicated rows; failing rows go to quarantine."""

from collections.abc import Iterator

import dagster as dg
from loopwise.contracts import SourceContract
from loopwise.pipelines import stages

from assets.automation import CARRY_DAY
from assets.metadata import delta_metadata
from assets.partitions import DAILY, SINGLE_RUN, window_of
from assets.usecase import USE_CASE
from resources import LakeResource, SparkResource


def bronze_asset(contract: SourceContract) -> dg.AssetsDefinition:
    name = f"bronze_{contract.name}"

    @dg.asset(
        name=name, deps=[f"raw_{contract.name}"], partitions_def=DAILY, backfill_policy=SINGLE_RUN,
        group_name="bronze", kinds={"delta", "spark"},
        automation_condition=CARRY_DAY,
        description=f"{contract.description} Typed and deduplicated; rows failing the "
                    f"{contract.name}_contract expectation suite are quarantined.",
        check_specs=[dg.AssetCheckSpec(
            "bad_rows_below_threshold", asset=name, blocking=True,
            description="The share of quarantined rows stays within the configured threshold.")],
    )
    def _bronze(context: dg.AssetExecutionContext, spark: SparkResource,
                lake: LakeResource) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        result = stages.build_bronze(spark.session(), lake.lake(), contract, window_of(context),
                                     lake.max_bad_row_fraction)
        report = result.validation
        yield dg.MaterializeResult(metadata={
            **delta_metadata(result.write, stages.bronze_table(lake.lake(), contract.name).uri),
            "quarantined_rows": report.bad_rows,
            "quarantine_version": result.quarantine_version,
        })
        yield dg.AssetCheckResult(
            check_name="bad_rows_below_threshold",
            passed=result.passed,
            metadata={
                "rows_landed": report.rows,
                "rows_quarantined": report.bad_rows,
                "bad_row_fraction": round(report.bad_fraction, 5),
                "threshold": result.max_bad_row_fraction,
                "failed_expectations": dg.MetadataValue.json(report.failed_counts()),
                "expectations": dg.MetadataValue.json(report.rule_names),
            },
        )

    return _bronze


BRONZE_ASSETS = [bronze_asset(s.contract) for s in USE_CASE.sources]
__all__ = ["BRONZE_ASSETS"]
