"""Silver assets: cleaned, conformed tables shaped for the feature store."""

import dagster as dg
from loopwise.contracts import SOURCES, SourceContract
from loopwise.pipelines import stages

from assets.metadata import delta_metadata
from assets.partitions import DAILY, SINGLE_RUN, window_of
from resources import LakeResource, SparkResource

DESCRIPTIONS = {
    "orders": "Orders with EUR amounts, status flags and order date.",
    "tickets": "Tickets with normalized text (subject and body) and its length.",
    "ticket_outcomes": "Escalation labels with the time they became known.",
}


def silver_asset(contract: SourceContract) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"silver_{contract.name}", deps=[f"bronze_{contract.name}"], partitions_def=DAILY,
        backfill_policy=SINGLE_RUN, group_name="silver", kinds={"delta", "spark"},
        description=DESCRIPTIONS[contract.name],
    )
    def _silver(context: dg.AssetExecutionContext, spark: SparkResource, lake: LakeResource) -> dg.MaterializeResult:
        write = stages.build_silver(spark.session(), lake.lake(), contract, window_of(context))
        return dg.MaterializeResult(metadata=delta_metadata(write, stages.silver_table(lake.lake(), contract.name).uri))

    return _silver


SILVER_ASSETS = [silver_asset(c) for c in SOURCES.values()]
