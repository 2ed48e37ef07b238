"""Train, evaluate and register as Dagster assets; lineage back to raw; the training pod on Kubernetes."""

import json
from pathlib import Path

import dagster as dg
from loopwise.config import Settings
from loopwise.contracts import SOURCES
from loopwise.events import open_store
from loopwise.landing import zone
from loopwise.lineage import model_lineage
from loopwise.registry import ALIAS_MOVED, CHALLENGER, Registry

from assets import DATA_LAYER_ASSETS, FEATURE_ASSETS
from assets.features import feast_registry, training_set
from assets.training import k8s_tags, model_evaluation, registered_model, trained_model
from resources import EventStoreResource, FeatureStoreResource, MlflowResource
from sensors import audit_trail_sensor
from tests.conftest import DAY1, DAY2
from tests.test_data_layer_assets import resources

REPO = Path(__file__).resolve().parent.parent / "feature_repo"


def test_train_evaluate_register_and_trace_back_to_raw(settings: Settings, lake, monkeypatch) -> None:
    monkeypatch.setenv("LOOPWISE__TRAINING__EPOCHS", "3")
    for day in (DAY1, DAY2):
        zone.land_day(settings.paths.landing, day, 200, seed=15)
    events = EventStoreResource(url=settings.events_url)
    res = {**resources(settings), "events": events,
           "feast": FeatureStoreResource(repo_dir=str(REPO), feast_dir=str(settings.paths.feast)),
           "mlflow": MlflowResource(tracking_uri=settings.tracking_uri, artifact_uri=settings.artifact_uri,
                                    floors={"auc": 0.0}, ceilings={"brier": 1.0})}
    partitioned = [a for a in [*DATA_LAYER_ASSETS, *FEATURE_ASSETS] if a not in (feast_registry, training_set)]
    with dg.instance_for_test() as instance:
        assert dg.materialize([feast_registry], instance=instance, resources=res).success
        assert dg.materialize(partitioned, instance=instance, resources=res, tags={
            "dagster/asset_partition_range_start": DAY1.isoformat(),
            "dagster/asset_partition_range_end": DAY2.isoformat()}).success
        assert dg.materialize([training_set], instance=instance, resources=res).success
        result = dg.materialize([trained_model, model_evaluation, registered_model], instance=instance, resources=res)
        assert result.success
        meta = {e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}
        assert meta["trained_model"]["device"].value == "cpu"
        assert len(meta["trained_model"]["metrics_per_epoch"].value) >= 1
        assert meta["trained_model"]["feature_service"].value == "escalation_v1"
        assert 0 <= meta["model_evaluation"]["auc"].value <= 1
        assert "data:image/png;base64," in meta["model_evaluation"]["reliability_plot"].value
        assert "channel=chat" in meta["model_evaluation"]["segments"].value
        check = next(iter(result.get_asset_check_evaluations()))
        assert check.passed and "no champion yet: nothing to compare against" in json.dumps(check.metadata["reasons"].value)
        audit_trail_sensor(dg.build_sensor_context(instance=instance, resources={"events": events}))

    store = open_store(settings.events_url)
    registry = Registry(settings.tracking_uri, store)
    assert registry.alias(CHALLENGER) == "1"
    assert [e.payload["to_version"] for e in store.read(kind=ALIAS_MOVED)] == ["1"]
    chain = {s.asset: s for s in model_lineage(settings.tracking_uri, store, lake, "ticket-escalation@challenger").steps}
    assert chain["feature service"].detail == "escalation_v1"
    assert chain["training_set"].runs and chain["training_set"].runs[0]
    assert "silver_tickets" in chain and "features_customer_orders" in chain
    assert {f"{stage}_{source}" for stage in ("silver", "bronze", "raw") for source in SOURCES} <= chain.keys()
    assert f"partitions {DAY1}..{DAY2}" in chain["raw_tickets"].detail
    assert chain["raw_tickets"].runs, "the Dagster run that materialized the raw partitions"


def test_the_training_pod_requests_gpu_memory_and_priority() -> None:
    from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job, get_user_defined_k8s_config

    def pod_for(tags: dict) -> object:
        as_run_tags = {k: json.dumps(v) for k, v in tags.items()}
        config = DagsterK8sJobConfig(job_image="loopwise:test", dagster_home="/opt/dagster/home",
                                     instance_config_map="dagster-instance")
        job = construct_dagster_k8s_job(config, ["dagster", "api", "execute_run"], "train",
                                        get_user_defined_k8s_config(as_run_tags))
        return job.spec.template.spec

    prod = pod_for(k8s_tags(1, "32Gi", "loopwise-prod"))
    resources = prod.containers[0].resources
    assert resources.limits["nvidia.com/gpu"] == "1" and resources.limits["memory"] == "32Gi"  # k8s quantities
    assert prod.priority_class_name == "loopwise-prod"
    dev = pod_for({k: json.loads(v) if isinstance(v, str) and v.startswith("{") else v
                   for k, v in trained_model.op.tags.items() if k.startswith("dagster-k8s")})
    assert dev.priority_class_name == "loopwise-dev" and "nvidia.com/gpu" not in (dev.containers[0].resources.limits or {})
