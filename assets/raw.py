"""Raw assets: each day's landing file, as landed, in a Delta table (strings, line numbers)."""

from collections.abc import Iterator

import dagster as dg
from loopwise.contracts import SourceContract
from loopwise.pipelines import stages

from assets.metadata import delta_metadata
from assets.partitions import DAILY, SINGLE_RUN, window_of
from assets.usecase import USE_CASE
from resources import LakeResource


def raw_asset(contract: SourceContract) -> dg.AssetsDefinition:
    name = f"raw_{contract.name}"

    @dg.asset(
        name=name, partitions_def=DAILY, backfill_policy=SINGLE_RUN, group_name="raw", kinds={"delta"},
        description=f"{contract.description} Read as landed: every value a string, with its line number.",
        check_specs=[dg.AssetCheckSpec(
            "matches_contract", asset=name, blocking=True,
            description="Landed columns match the contract: missing columns block, extra ones warn.")],
    )
    def _raw(context: dg.AssetExecutionContext, lake: LakeResource) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        result = stages.ingest_raw(lake.lake(), lake.landing_root(), contract, window_of(context))
        yield dg.MaterializeResult(metadata={
            **delta_metadata(result.write, stages.raw_table(lake.lake(), contract.name).uri),
            "landing_files": "\n".join(result.files),
        })
        yield dg.AssetCheckResult(
            check_name="matches_contract",
            passed=not result.missing_columns and not result.extra_columns,
            severity=dg.AssetCheckSeverity.ERROR if result.missing_columns else dg.AssetCheckSeverity.WARN,
            metadata={"missing_columns": str(result.missing_columns or "none"),
                      "extra_columns (kept in _extra_columns)": str(result.extra_columns or "none")},
        )

    return _raw


RAW_ASSETS = [raw_asset(s.contract) for s in USE_CASE.sources]
