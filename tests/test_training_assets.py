"""Every declared model trained, evaluated and registered as Dagster assets, with lineage back to raw;
a third model declared in this module is generated and materialized the same way; the training pod."""


import dagster as dg
from loopwise.events import Event, open_store
from loopwise.lineage import live_writes, model_lineage, recorded_writes
from loopwise.registry import ALIAS_MOVED, CHALLENGER, Registry
from loopwise.usecase import ModelSpec, Reader
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from supportdesk import USE_CASE
from supportdesk.models import mlp

from assets.models import k8s_tags, keys, model_assets
from resources import MlflowResource, build_resources
from tests.conftest import DAY1, DAY2, Built

# Its own rows' sources and those of the feature tables behind its feature service (refund_v1: orders only).
SOURCES_READ = {"ticket-escalation": {"tickets", "ticket_outcomes", "orders"}, "order-refund-risk": {"orders"}}


def _latest(built: Built, key: dg.AssetKey) -> dict:
    event = built.instance.get_latest_materialization_event(key)  # type: ignore[attr-defined]
    assert event is not None, key
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def test_every_declared_model_is_trained_evaluated_registered_and_traced_to_raw(built: Built) -> None:
    store = open_store(built.settings.events_url)
    assert len(USE_CASE.models) >= 2
    for spec in USE_CASE.models:
        k = keys(spec)
        assert built.instance.get_latest_materialization_event(k["registered_model"]), spec.name  # type: ignore[attr-defined]
        trained = _latest(built, k["trained_model"])
        assert trained["device"] == "cpu" and len(trained["metrics_per_epoch"]) >= 1
        assert trained["feature_service"] == spec.feature_service
        evaluation = _latest(built, k["model_evaluation"])
        assert 0 <= evaluation["auc"] <= 1 and "data:image/png;base64," in evaluation["reliability_plot"]
        assert {"customer=new", "customer=returning"} <= evaluation["segments"].keys()
        assert any(s.startswith(f"{spec.segment_by[0]}=") for s in evaluation["segments"])
        registered = _latest(built, k["registered_model"])
        assert registered["version"] == "1" and registered["challenger"] == "1"
        assert Registry(built.settings.tracking_uri, store, spec.name).alias(CHALLENGER) == "1"
        moves = [e for e in store.read(kind=ALIAS_MOVED) if e.subject == f"model:{spec.name}/1"]
        # The gate made it challenger; deploying released it as the model's first champion.
        assert [(e.payload["alias"], e.payload["to_version"]) for e in moves] == [("challenger", "1"), ("champion", "1")]

        chain = {s.asset: s for s in model_lineage(built.settings.tracking_uri, store, f"{spec.name}@challenger").steps}
        assert chain["feature service"].detail == spec.feature_service
        assert chain[spec.training_table].runs and chain[spec.training_table].runs[0]
        # Exactly the tables this model read: its sources through every stage, and no other source.
        traced = {t for t in chain if t.startswith(("silver_", "bronze_", "raw_"))}
        assert traced == {f"{stage}_{source}" for stage in ("silver", "bronze", "raw") for source in SOURCES_READ[spec.name]}
        for source in spec.reads:
            raw = chain[f"raw_{source}"]
            assert f"partitions {DAY1}..{DAY2}" in raw.detail and "from 2 landing files" in raw.detail
            assert raw.runs, "the Dagster run that materialized the raw partitions"


def test_training_reads_the_settings_when_the_run_starts_and_scores_holdout_rows_by_key(built: Built) -> None:
    import mlflow
    from loopwise.training.pipeline import evaluate_run, read_evaluation

    client = mlflow.MlflowClient(built.settings.tracking_uri)
    for spec in USE_CASE.models:
        trained = _latest(built, keys(spec)["trained_model"])
        # LOOPWISE__TRAINING__EPOCHS=3 was set after the definitions were imported (the profile says 8).
        assert client.get_run(trained["mlflow_run_id"]).data.params["epochs"] == "3"
        logged = read_evaluation(built.settings.tracking_uri, trained["mlflow_run_id"])
        rows = built.lake.table(spec.training_table).read(version=trained["training_set_version"]).to_pandas()
        shuffled = rows.sample(frac=1.0, random_state=3).reset_index(drop=True)  # another row order, same rows
        again = evaluate_run(spec, built.settings.tracking_uri, trained["mlflow_run_id"], trained["model_uri"], shuffled,
                             None)
        assert again.metrics == logged.metrics


def test_lineage_follows_the_writes_that_make_up_a_version_not_later_ones(tmp_path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'events.db'}")

    def wrote(table: str, version: int, partitions: str, inputs: dict[str, int], run: str) -> None:
        store.append(Event("asset.materialized", f"asset:{table}", {"run_id": run, "metadata": {
            "delta_table": table, "delta_version": version, "partitions": partitions, "input_versions": inputs}}))

    wrote("silver_x", 0, "2026-03-02..2026-03-03", {"bronze_x": 0}, "r0")
    wrote("silver_x", 1, "2026-03-03", {"bronze_x": 1}, "r1")  # day 2 rewritten
    wrote("silver_x", 2, "2026-03-02..2026-03-03", {"bronze_x": 2}, "r2")  # everything rewritten later
    writes = recorded_writes(store)["silver_x"]
    assert [(w.version, w.inputs) for w in live_writes(writes, 0)] == [(0, {"bronze_x": 0})]
    assert [(w.version, w.run_id) for w in live_writes(writes, 1)] == [(1, "r1"), (0, "r0")]
    assert [w.version for w in live_writes(writes, 2)] == [2]


def labelled_phone_tickets(read: Reader) -> DataFrame:
    """A throwaway task: will a ticket come in by phone, from the customer's history and the text's length?"""
    return read("tickets", None).select(
        "ticket_id", "customer_id", F.col("created_at").alias("event_timestamp"), "text_length",
        (F.col("channel") == "phone").alias("by_phone"), F.col("created_date").alias("partition_date"))


THROWAWAY = ModelSpec(name="phone-ticket", feature_service="escalation_v1", rows=labelled_phone_tickets,
                      reads=("tickets",), label="by_phone", split_key="ticket_id", module=mlp(hidden=8),
                      numeric=("text_length",), segments={"long": "text_length > 200"})


def test_a_model_declared_in_this_module_gets_its_assets_and_registers(built: Built) -> None:
    assets = model_assets(THROWAWAY)
    assert {a.key for a in assets} == set(keys(THROWAWAY).values())
    assert {a.group_names_by_key[a.key] for a in assets} == {"phone_ticket"}
    resources = build_resources(built.settings, USE_CASE)
    resources["mlflow"] = MlflowResource(tracking_uri=built.settings.tracking_uri, artifact_uri=built.settings.artifact_uri,
                                         gates={THROWAWAY.name: {"floors": {}, "ceilings": {}, "tolerance": 0.0}})
    result = dg.materialize(assets, instance=built.instance, resources=resources)
    assert result.success
    meta = {e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}
    assert meta["phone_ticket/training_set"]["dagster/row_count"].value > 100
    assert "text_length" in meta["phone_ticket/trained_model"]["inputs"].value
    assert "long" in meta["phone_ticket/model_evaluation"]["segments"].value
    assert meta["phone_ticket/registered_model"]["version"].value == "1"
    assert Registry(built.settings.tracking_uri, open_store(built.settings.events_url), THROWAWAY.name).alias(CHALLENGER) == "1"


def _pod_for_run(run: object) -> object:
    """The pod spec dagster-k8s's run launcher builds for a run: its container context from the run's tags."""
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job

    context = K8sContainerContext.create_for_run(run, None, include_run_tags=True)  # type: ignore[arg-type]
    config = DagsterK8sJobConfig(job_image="loopwise:test", dagster_home="/opt/dagster/home",
                                 instance_config_map="dagster-instance")
    job = construct_dagster_k8s_job(config, ["dagster", "api", "execute_run"], "train", component="run_worker",
                                    user_defined_k8s_config=context.run_k8s_config)
    return job.spec.template.spec


def test_a_training_run_pod_requests_the_profiles_gpu_memory_and_priority(monkeypatch) -> None:
    """A run of each model's training job, as dagster-k8s's run launcher turns it into a pod."""
    import importlib
    import sys

    for name, value in {"LOOPWISE_PROFILE": "prod", "LOOPWISE_SECRET_POSTGRES_PASSWORD": "x",
                        "LOOPWISE_SECRET_REDIS_PASSWORD": "x"}.items():
        monkeypatch.setenv(name, value)
    layer = lambda name: name == "definitions" or name.startswith(("assets", "jobs", "sensors"))  # noqa: E731
    for module in [m for m in sys.modules if layer(m)]:
        monkeypatch.delitem(sys.modules, module)  # the definitions as the prod profile builds them
    try:
        prod = importlib.import_module("definitions").defs
        with dg.instance_for_test() as instance:
            for spec in USE_CASE.models:
                job = prod.resolve_job_def(f"train_{spec.slug}")
                # A launched run carries its job's tags (the UI's launch merges the job's tags, execute_job its run tags).
                assert job.tags == job.run_tags
                run = instance.create_run_for_job(job_def=job, run_config={}, tags=job.run_tags)
                pod = _pod_for_run(instance.get_run_by_id(run.run_id))
                resources = pod.containers[0].resources
                assert resources.limits["nvidia.com/gpu"] == "1" and resources.requests["nvidia.com/gpu"] == "1"
                assert resources.limits["memory"] == "32Gi" and pod.priority_class_name == "loopwise-prod"
    finally:
        for module in [m for m in sys.modules if layer(m)]:
            del sys.modules[module]  # monkeypatch puts the dev profile's modules back
    assert type(prod.resolve_job_def("data_layer").executor_def).__name__ == "ExecutorDefinition"
    assert prod.resolve_job_def("data_layer").executor_def.name == "k8s"


def test_the_dev_training_pod_asks_for_no_gpu() -> None:
    from definitions import defs

    with dg.instance_for_test() as instance:
        job = defs.resolve_job_def(f"train_{USE_CASE.models[0].slug}")
        run = instance.create_run_for_job(job_def=job, run_config={}, tags=job.run_tags)
        pod = _pod_for_run(instance.get_run_by_id(run.run_id))
    assert pod.priority_class_name == "loopwise-dev" and "nvidia.com/gpu" not in (pod.containers[0].resources.limits or {})
    assert k8s_tags(0, "8Gi", "loopwise-dev")["dagster-k8s/config"]["container_config"]["resources"]["limits"] == {"memory": "8Gi"}


def test_the_training_sets_freshness_check_fails_with_the_reason_a_staleness_retrain_acts_on(
        built: Built, monkeypatch, tmp_path) -> None:
    """Dagster's UI shows on each training set what a staleness retrain acts on: `fresh_for_training` passes when
    the set is built; the retraining sensor reports it failed, with the decision's own reason, once it is stale, and
    passed again when it is not; a state is reported once, not every tick."""
    from datetime import UTC, datetime

    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus as Status
    from loopwise.monitoring.retrain import RetrainPolicy, decide_retrain

    from assets.models import FRESH_FOR_TRAINING
    from sensors.monitoring import new_labelled_days, report_training_freshness

    checks = {spec.name: dg.AssetCheckKey(keys(spec)["training_set"], FRESH_FOR_TRAINING) for spec in USE_CASE.models}

    def latest(model: str):  # type: ignore[no-untyped-def]
        return built.instance.event_log_storage.get_latest_asset_check_execution_by_key(  # type: ignore[attr-defined]
            [checks[model]])[checks[model]]

    assert {latest(m).status for m in checks} == {Status.SUCCEEDED}  # passed when the training set was built
    for name, value in built.env.items():
        monkeypatch.setenv(name, value)
    resources = build_resources(built.settings, USE_CASE)
    context = dg.build_sensor_context(instance=built.instance)
    monkeypatch.setenv("LOOPWISE__MONITORING__MAX_AGE_DAYS", "0.000001")  # every training set is now too old
    now = datetime.now(UTC)
    reported = report_training_freshness(context, resources["lake"], now)
    assert {e.check_name for e in reported} == {FRESH_FOR_TRAINING} and len(reported) == len(checks)
    for spec in USE_CASE.models:
        record = latest(spec.name)
        assert record.status == Status.FAILED
        built_at = built.instance.get_latest_materialization_event(keys(spec)["training_set"]).timestamp
        decision = decide_retrain(open_store(f"sqlite:///{tmp_path / spec.slug}.db"), spec.name,
                                  RetrainPolicy(0, 7, 0.000001), now=now,
                                  new_labelled_days=new_labelled_days(resources["lake"], spec.name),
                                  trained_at=datetime.fromtimestamp(built_at, UTC))
        assert decision is not None and decision.cause == "stale"
        assert record.event.dagster_event.event_specific_data.description == decision.reason
    assert report_training_freshness(context, resources["lake"], now) == []  # unchanged: nothing reported again
    monkeypatch.delenv("LOOPWISE__MONITORING__MAX_AGE_DAYS")
    assert len(report_training_freshness(context, resources["lake"], datetime.now(UTC))) == len(checks)
    assert {latest(m).status for m in checks} == {Status.SUCCEEDED}
