"""The feature assets as the main job ran them: registry, daily features, online store, training sets."""

from datetime import timedelta

import dagster as dg
from loopwise.backends import Backends
from loopwise.config import load_settings
from loopwise.features.retrieval import Status, online_features
from supportdesk import USE_CASE

from assets import ALL_ASSETS
from assets.models import keys
from resources import build_resources
from tests.conftest import Built


def _metadata(built: Built, key: str | dg.AssetKey) -> dict:
    event = built.instance.get_latest_materialization_event(dg.AssetKey(key) if isinstance(key, str) else key)  # type: ignore[attr-defined]
    assert event is not None, key
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def test_features_flow_from_silver_to_the_online_store_and_the_training_sets(built: Built) -> None:
    registry = _metadata(built, "feast_registry")
    assert "feature_view:customer_orders" in registry["added"]
    assert {f"feature_service:{m.feature_service}" for m in USE_CASE.models} <= set(registry["added"].split(", "))
    pushed = _metadata(built, "online_features")
    assert pushed["customer_orders_entities"] > 100 and pushed["customer_support_entities"] > 50
    for table in USE_CASE.feature_tables:
        written = _metadata(built, table.name)
        assert written["partitions"] == "2026-03-02..2026-03-03"
        assert set(written["input_versions"]) == {f"silver_{s}" for s in table.reads}  # pinned reads, recorded
    for spec in USE_CASE.models:
        meta = _metadata(built, keys(spec)["training_set"])
        assert meta["feature_service"] == spec.feature_service and meta["dagster/row_count"] > 50
        assert 0 < meta["label_rate"] < 1
    # Applying the same repository again changes nothing.
    resources = build_resources(built.settings, USE_CASE)
    again = dg.materialize([a for a in ALL_ASSETS if a.key == dg.AssetKey("feast_registry")],
                           instance=built.instance, resources=resources)
    assert again.get_asset_materialization_events()[0].materialization.metadata["added"].value == "none"
    # Applied from this process (whose environment names another data root), the sources still point at this lake.
    sources = Backends(built.settings).feature_store().list_data_sources()
    assert sources and all(s.path.startswith(built.settings.lake_uri) for s in sources)


def test_serving_reads_each_models_features_online_with_the_profiles_staleness(built: Built) -> None:
    backends = Backends(built.settings)
    store = backends.feature_store()
    for spec in USE_CASE.models:  # an entity this model was trained on
        customer = backends.lake().table(spec.training_table).read().column("customer_id")[0].as_py()
        row = online_features(store, spec.feature_service, [{"customer_id": customer}], timedelta(days=36500))[0]
        assert row.key == {"customer_id": customer}
        assert any(v.status == Status.PRESENT for v in row.values.values()), spec.name
    # The profile's `features.stale_after_hours` decides what is stale: the test days are long past.
    rows = [{"customer_id": customer}]
    assert Status.STALE in {v.status for v in backends.online_features("refund_v1", rows)[0].values.values()}
    patient = Backends(load_settings(environ={**built.env, "LOOPWISE__FEATURES__STALE_AFTER_HOURS": "1e9"}))
    assert Status.STALE not in {v.status for v in patient.online_features("refund_v1", rows)[0].values.values()}


def test_feature_assets_are_grouped_and_fresh_by_policy() -> None:
    from definitions import defs

    graph = defs.resolve_asset_graph()
    for table in USE_CASE.feature_tables:
        assert graph.get(dg.AssetKey(table.name)).group_name == "features"
        assert graph.get(dg.AssetKey(table.name)).parent_keys == {dg.AssetKey(f"silver_{s}") for s in table.reads}
        assert graph.get(dg.AssetKey(table.name)).freshness_policy is not None
    for spec in USE_CASE.models:
        assert {graph.get(key).group_name for key in keys(spec).values()} == {spec.slug}
    assert dg.AssetKey("feast_registry") in graph.get(dg.AssetKey("online_features")).parent_keys
    assert graph.get(dg.AssetKey("online_features")).freshness_policy is not None
    assert len(ALL_ASSETS) == len({a.key for a in ALL_ASSETS})
