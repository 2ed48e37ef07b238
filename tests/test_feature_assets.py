"""The feature assets in a temporary Dagster instance: registry, daily features, online store, training set."""

from datetime import timedelta
from pathlib import Path

import dagster as dg
from loopwise.config import Settings
from loopwise.features import stages as features
from loopwise.features.retrieval import Status
from loopwise.features.retrieval import online_features as read_online
from loopwise.lake.tables import Lake
from loopwise.landing import zone

from assets import ALL_ASSETS, DATA_LAYER_ASSETS, FEATURE_ASSETS
from assets.features import feast_registry, online_features, training_set
from resources import FeatureStoreResource
from tests.conftest import DAY1, DAY2
from tests.test_data_layer_assets import resources

REPO = Path(__file__).resolve().parent.parent / "feature_repo"


def test_features_flow_from_silver_to_the_online_store_and_the_training_set(settings: Settings, lake: Lake,
                                                                            monkeypatch) -> None:
    for day in (DAY1, DAY2):
        zone.land_day(settings.paths.landing, day, 120, seed=14)
    feast = FeatureStoreResource(repo_dir=str(REPO), feast_dir=str(settings.paths.feast))
    res = {**resources(settings), "feast": feast}
    partitioned = [a for a in [*DATA_LAYER_ASSETS, *FEATURE_ASSETS] if a not in (feast_registry, training_set)]
    with dg.instance_for_test() as instance:
        registry = dg.materialize([feast_registry], instance=instance, resources=res)
        assert registry.success
        added = registry.get_asset_materialization_events()[0].materialization.metadata["added"].value
        assert "feature_view:customer_orders" in added and "feature_service:escalation_v1" in added
        daily = dg.materialize(partitioned, instance=instance, resources=res, tags={
            "dagster/asset_partition_range_start": DAY1.isoformat(),
            "dagster/asset_partition_range_end": DAY2.isoformat()})
        assert daily.success
        pushed = next(e for e in daily.get_asset_materialization_events() if e.asset_key == online_features.key)
        assert pushed.materialization.metadata["customer_orders_entities"].value > 100
        train = dg.materialize([training_set], instance=instance, resources=res)
        assert train.success
        meta = train.get_asset_materialization_events()[0].materialization.metadata
        assert meta["feature_service"].value == "escalation_v1" and meta["dagster/row_count"].value > 50
        assert 0 < meta["label_rate"].value < 1
        again = dg.materialize([feast_registry], instance=instance, resources=res)
        assert again.get_asset_materialization_events()[0].materialization.metadata["added"].value == "none"
    customer = lake.table(features.TRAINING_SET).read().column("customer_id")[0].as_py()
    row = read_online(feast.store(), [customer], stale_after=timedelta(days=36500))[0]
    assert row.values["orders_90d"].status == Status.PRESENT or row.values["tickets_90d"].status == Status.PRESENT


def test_feature_assets_are_grouped_and_fresh_by_policy() -> None:
    from definitions import defs

    graph = defs.resolve_asset_graph()
    for key in ("features_customer_orders", "features_customer_support", "feast_registry", "online_features"):
        assert graph.get(dg.AssetKey(key)).group_name == "features"
    assert graph.get(dg.AssetKey("training_set")).group_name == "training"
    assert graph.get(dg.AssetKey("features_customer_orders")).parent_keys == {dg.AssetKey("silver_orders")}
    assert dg.AssetKey("feast_registry") in graph.get(dg.AssetKey("online_features")).parent_keys
    for key in ("features_customer_orders", "features_customer_support", "online_features"):
        assert graph.get(dg.AssetKey(key)).freshness_policy is not None
    assert len(ALL_ASSETS) == len({a.key for a in ALL_ASSETS})
