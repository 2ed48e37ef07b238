"""Feature assets: one daily table per declared feature table, the Feast registry, the online store."""

from datetime import timedelta

import dagster as dg
from loopwise.config import load_settings
from loopwise.features import stages as features
from loopwise.features.store import repo_digest
from loopwise.usecase import FeatureTable

from assets.automation import CARRY_DAY, CARRY_DAY_ONLINE, ON_REPO_CHANGE
from assets.metadata import delta_metadata
from assets.partitions import DAILY, SINGLE_RUN, window_of
from assets.usecase import USE_CASE
from resources import FeatureStoreResource, LakeResource, SparkResource

# Written once a day: a feature table more than a day and a half behind is stale in the UI.
FRESH_DAILY = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=36), warn_window=timedelta(hours=26))


def feature_table_asset(table: FeatureTable) -> dg.AssetsDefinition:
    @dg.asset(
        name=table.name, deps=[f"silver_{s}" for s in table.reads], partitions_def=DAILY, backfill_policy=SINGLE_RUN,
        group_name="features", kinds={"delta", "spark"}, freshness_policy=FRESH_DAILY, description=table.description,
        automation_condition=CARRY_DAY,
    )
    def _table(context: dg.AssetExecutionContext, spark: SparkResource, lake: LakeResource) -> dg.MaterializeResult:
        write = features.build_feature_table(spark.session(), lake.lake(), table, window_of(context))
        return dg.MaterializeResult(metadata=delta_metadata(write, lake.lake().table(table.name).uri))

    return _table


@dg.asset(group_name="features", kinds={"feast"}, code_version=repo_digest(USE_CASE.feature_repo, load_settings().lake_uri),
          automation_condition=ON_REPO_CHANGE,
          description="`feast apply` of feature_repo/: entities, feature views, feature services. Its code version "
                      "is the repository's digest: the UI shows it changed when feature_repo/ does.")
def feast_registry(feast: FeatureStoreResource) -> dg.MaterializeResult:
    from loopwise.features.store import apply_repo

    diff = apply_repo(feast.store(), feast.location().repo_dir, feast.lake_uri)
    return dg.MaterializeResult(metadata={
        "added": ", ".join(diff.added) or "none", "changed": ", ".join(diff.changed) or "none",
        "removed": ", ".join(diff.removed) or "none",
        "added_features": ", ".join(diff.added_features) or "none",
        "removed_features": ", ".join(diff.removed_features) or "none",
    })


@dg.asset(
    deps=[*(t.name for t in USE_CASE.feature_tables), "feast_registry"], partitions_def=DAILY,
    backfill_policy=SINGLE_RUN, group_name="features", kinds={"feast", "sqlite"}, freshness_policy=FRESH_DAILY,
    automation_condition=CARRY_DAY_ONLINE,
    description="The partition's newest feature row per entity of every feature table, pushed to the online store.",
)
def online_features(context: dg.AssetExecutionContext, lake: LakeResource,
                    feast: FeatureStoreResource) -> dg.MaterializeResult:
    store = feast.current_store()
    pushed = {t.view: features.push_online(store, lake.lake(), t, window_of(context)) for t in USE_CASE.feature_tables}
    return dg.MaterializeResult(metadata={
        "online_store": feast.online_store,
        **{f"{view}_entities": r.entities for view, r in pushed.items()},
        **{f"{view}_values": r.values for view, r in pushed.items()},
        # Redis keeps a stored row whose event time is newer (a backfill of an older day): counted, not written.
        **{f"{view}_kept_newer_online": r.skipped_older for view, r in pushed.items()},
    })


FEATURE_TABLE_ASSETS = [feature_table_asset(t) for t in USE_CASE.feature_tables]
FEATURE_ASSETS = [*FEATURE_TABLE_ASSETS, feast_registry, online_features]
