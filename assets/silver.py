"""Silver assets: cleaned, conformed tables shaped for the feature store, one per declared source."""

import dagster as dg
from loopwise.pipelines import stages
from loopwise.usecase import Source

from assets.automation import CARRY_DAY
from assets.metadata import delta_metadata
from assets.partitions import DAILY, SINGLE_RUN, window_of
from assets.usecase import USE_CASE
from resources import LakeResource, SparkResource


def silver_asset(source: Source) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"silver_{source.name}", deps=[f"bronze_{source.name}"], partitions_def=DAILY,
        backfill_policy=SINGLE_RUN, group_name="silver", kinds={"delta", "spark"},
        automation_condition=CARRY_DAY,
        description=source.silver_description,
    )
    def _silver(context: dg.AssetExecutionContext, spark: SparkResource, lake: LakeResource) -> dg.MaterializeResult:
        write = stages.build_silver(spark.session(), lake.lake(), source, window_of(context))
        return dg.MaterializeResult(metadata=delta_metadata(write, stages.silver_table(lake.lake(), source.name).uri))

    return _silver


SILVER_ASSETS = [silver_asset(s) for s in USE_CASE.sources]
