"""Feature assets: daily feature tables, the Feast registry, the online store, the training set."""

from datetime import timedelta

import dagster as dg
from loopwise.features import stages as features

from assets.metadata import delta_metadata
from assets.partitions import DAILY, SINGLE_RUN, window_of
from resources import FeatureStoreResource, LakeResource, SparkResource

# Written once a day: a feature table more than a day and a half behind is stale in the UI.
FRESH_DAILY = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=36), warn_window=timedelta(hours=26))
VIEWS = {"customer_orders": features.ORDER_FEATURES, "customer_support": features.SUPPORT_FEATURES}


@dg.asset(
    name=features.ORDER_FEATURES, deps=["silver_orders"], partitions_def=DAILY, backfill_policy=SINGLE_RUN,
    group_name="features", kinds={"delta", "spark"}, freshness_policy=FRESH_DAILY,
    description="Per customer and day: orders, EUR amounts, refund and cancel rates over 7/30/90 days, "
                "days since the last order, tenure (feature view customer_orders).",
)
def features_customer_orders(context: dg.AssetExecutionContext, spark: SparkResource,
                             lake: LakeResource) -> dg.MaterializeResult:
    write = features.build_order_features(spark.session(), lake.lake(), window_of(context))
    return dg.MaterializeResult(metadata=delta_metadata(write, features.feature_table(lake.lake(), write.table).uri))


@dg.asset(
    name=features.SUPPORT_FEATURES, deps=["silver_tickets", "silver_ticket_outcomes"], partitions_def=DAILY,
    backfill_policy=SINGLE_RUN, group_name="features", kinds={"delta", "spark"}, freshness_policy=FRESH_DAILY,
    description="Per customer and day: tickets over 7/30/90 days, channel shares, escalation rate over "
                "outcomes known by then (feature view customer_support).",
)
def features_customer_support(context: dg.AssetExecutionContext, spark: SparkResource,
                              lake: LakeResource) -> dg.MaterializeResult:
    write = features.build_support_features(spark.session(), lake.lake(), window_of(context))
    return dg.MaterializeResult(metadata=delta_metadata(write, features.feature_table(lake.lake(), write.table).uri))


@dg.asset(group_name="features", kinds={"feast"},
          description="`feast apply` of feature_repo/: entities, feature views, feature services.")
def feast_registry(feast: FeatureStoreResource) -> dg.MaterializeResult:
    from loopwise.features.store import apply_repo

    diff = apply_repo(feast.store(), feast.location().repo_dir)
    return dg.MaterializeResult(metadata={
        "added": ", ".join(diff.added) or "none", "changed": ", ".join(diff.changed) or "none",
        "removed": ", ".join(diff.removed) or "none",
        "added_features": ", ".join(diff.added_features) or "none",
        "removed_features": ", ".join(diff.removed_features) or "none",
    })


@dg.asset(
    deps=[features.ORDER_FEATURES, features.SUPPORT_FEATURES, "feast_registry"], partitions_def=DAILY,
    backfill_policy=SINGLE_RUN, group_name="features", kinds={"feast", "sqlite"}, freshness_policy=FRESH_DAILY,
    description="The partition's newest feature row per customer, pushed to the online store for serving.",
)
def online_features(context: dg.AssetExecutionContext, lake: LakeResource,
                    feast: FeatureStoreResource) -> dg.MaterializeResult:
    store = feast.store()
    pushed = {view: features.push_online(store, lake.lake(), view, table, window_of(context))
              for view, table in VIEWS.items()}
    return dg.MaterializeResult(metadata={
        "online_store": feast.online_store,
        **{f"{view}_entities": r.entities for view, r in pushed.items()},
        **{f"{view}_values": r.values for view, r in pushed.items()},
        # Redis keeps a stored row whose event time is newer (a backfill of an older day): counted, not written.
        **{f"{view}_kept_newer_online": r.skipped_older for view, r in pushed.items()},
    })


@dg.asset(
    deps=["silver_tickets", "silver_ticket_outcomes", features.ORDER_FEATURES, features.SUPPORT_FEATURES,
          "feast_registry"],
    group_name="training", kinds={"delta", "feast"},
    description="Every ticket with a known outcome, joined as of its creation time with the feature "
                "service's features through Feast's get_historical_features.",
)
def training_set(spark: SparkResource, lake: LakeResource, feast: FeatureStoreResource) -> dg.MaterializeResult:
    result = features.build_training_set(spark.session(), lake.lake(), feast.store(), feast.service)
    return dg.MaterializeResult(metadata={
        **delta_metadata(result.write, lake.lake().table(features.TRAINING_SET).uri),
        "label_rate": round(result.label_rate, 4),
        "positives": result.positives,
        "feature_service": result.service,
        "input_versions": dg.MetadataValue.json(result.input_versions),
    })


FEATURE_ASSETS = [features_customer_orders, features_customer_support, feast_registry, online_features, training_set]
