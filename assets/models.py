"""Model assets, generated for every declared model in an asset group of its own:
training set -> trained model -> evaluation -> registered model.

Assets pass models through MLflow (the run id in the upstream's materialization metadata; the
model, its holdout scores and its evaluation as the run's artifacts), never through a run's local
storage: on Kubernetes each run is its own pod.
"""


import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
from loopwise.config import load_settings
from loopwise.registry import CHAMPION
from loopwise.usecase import ModelSpec

from assets.metadata import delta_metadata
from assets.usecase import USE_CASE
from resources import EventStoreResource, FeatureStoreResource, LakeResource, MlflowResource, SparkResource, TrainingResource


def k8s_tags(gpus: int, memory: str, priority_class: str) -> dict[str, Any]:
    """dagster-k8s tags: GPU and memory requests, and the pod's PriorityClass."""
    resources: dict[str, Any] = {"requests": {"memory": memory}, "limits": {"memory": memory}}
    if gpus:
        resources["limits"]["nvidia.com/gpu"] = gpus
        resources["requests"]["nvidia.com/gpu"] = gpus
    return {"dagster-k8s/config": {"container_config": {"resources": resources},
                                   "pod_spec_config": {"priority_class_name": priority_class}}}


# What the training pod asks Kubernetes for is part of the definitions, like the partitions: read when they load.
_training, _monitoring = load_settings().training, load_settings().monitoring
TRAINING_POD = k8s_tags(_training.gpus, _training.memory, _training.priority_class)


def keys(spec: ModelSpec) -> dict[str, dg.AssetKey]:
    """The asset keys of a model's chain: `<model>/training_set`, `<model>/trained_model`, ..."""
    return {step: dg.AssetKey([spec.slug, step])
            for step in ("training_set", "trained_model", "model_evaluation", "registered_model", "deployed_endpoint")}


def _upstream(context: dg.AssetExecutionContext, key: dg.AssetKey) -> dict[str, Any]:
    """The metadata of an upstream asset's latest materialization, or an error naming the asset to materialize."""
    event = context.instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        raise dg.Failure(f"{key.to_user_string()} has never been materialized: materialize it first")
    metadata = {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}
    return {**metadata, "run_id": event.run_id}


FRESH_FOR_TRAINING = "fresh_for_training"
FRESH_DESCRIPTION = ("Fails, with the reason, when the retraining sensor finds the training set stale: "
                     "monitoring.stale_after_days newly labelled days landed since it was built, or it is older than "
                     "monitoring.max_age_days. Passes when it is built.")


def model_assets(spec: ModelSpec) -> list[dg.AssetsDefinition]:
    """The four assets of one declared model."""
    k = keys(spec)
    group = spec.slug

    # Dagster's freshness state shows what the retraining sensor acts on: a training set older than the max age
    # (the freshness policy), or with enough newly labelled days landed since it was built (FRESH_FOR_TRAINING,
    # passed when built; the retraining sensor reports it failed, with the reason it retrains on).
    @dg.asset(key=k["training_set"], group_name=group, kinds={"delta", "feast"},
              freshness_policy=dg.FreshnessPolicy.time_window(fail_window=timedelta(days=_monitoring.max_age_days)),
              deps=[*(f"silver_{s}" for s in spec.reads), *(t.name for t in USE_CASE.feature_tables), "feast_registry"],
              check_specs=[dg.AssetCheckSpec(FRESH_FOR_TRAINING, asset=k["training_set"], blocking=False,
                                             description=FRESH_DESCRIPTION)],
              description=f"{spec.name}: its labelled rows joined, as of each row's time, with the feature service "
                          f"{spec.feature_service} through Feast's get_historical_features.")
    def training_set(spark: SparkResource, lake: LakeResource, feast: FeatureStoreResource) -> dg.MaterializeResult:
        from loopwise.features.stages import build_training_set

        result = build_training_set(spark.session(), lake.lake(), feast.current_store(), spec, USE_CASE.feature_tables)
        return dg.MaterializeResult(metadata={
            **delta_metadata(result.write, lake.lake().table(spec.training_table).uri),
            "label_rate": round(result.label_rate, 4),
            "positives": result.positives,
            "feature_service": result.service,
        }, check_results=[dg.AssetCheckResult(check_name=FRESH_FOR_TRAINING, passed=True,
                                              severity=dg.AssetCheckSeverity.WARN,
                                              description="built now: no labelled day landed since",
                                              metadata={"new_labelled_days": 0, "age_days": 0.0})])

    @dg.asset(key=k["trained_model"], deps=[k["training_set"]], group_name=group, kinds={"pytorch", "mlflow"},
              op_tags=TRAINING_POD,
              description=f"{spec.name}: trained on its training set and logged to MLflow with its lineage. "
                          f"{spec.description}")
    def trained_model(context: dg.AssetExecutionContext, lake: LakeResource, mlflow: MlflowResource,
                      feast: FeatureStoreResource, training: TrainingResource) -> dg.MaterializeResult:
        from loopwise.training.data import layout_for  # torch loads where training runs, not with the definitions
        from loopwise.training.pipeline import train_and_log

        upstream = _upstream(context, k["training_set"])
        version = int(upstream["delta_version"])
        table = lake.lake().table(spec.training_table)
        frame = table.read(version=version).to_pandas()
        inputs = upstream.get("input_versions") or {}
        tags = {"lineage.training_table": spec.training_table, "lineage.training_set_version": str(version),
                "lineage.feature_service": spec.feature_service,
                "lineage.partitions": f"{frame['partition_date'].min()}..{frame['partition_date'].max()}",
                "lineage.inputs": json.dumps(inputs), "dagster.run_id": context.run.run_id,
                "dagster.training_set_run_id": upstream["run_id"], "loopwise.model": spec.name}
        layout = layout_for(feast.store(), spec)
        checkpoints = Path(training.checkpoint_dir) / spec.slug / f"training_set-v{version}"
        run = train_and_log(spec, frame, layout, training.config(), checkpoints, mlflow.tracking_uri,
                            mlflow.artifact_uri, tags, freeze_encoder=training.freeze_encoder,
                            embedding_cache=Path(training.embedding_dir),
                            runtime_dir=Path(training.runtime_dir) if training.runtime_dir else None)
        history = run.result.history
        return dg.MaterializeResult(metadata={
            "mlflow_run_id": run.run_id, "model_uri": run.model_uri, "device": run.result.device,
            "best_epoch": run.result.best_epoch, "epochs_run": len(history),
            "samples_per_second": round(sum(h.samples_per_second for h in history) / max(1, len(history)), 1),
            "metrics_per_epoch": dg.MetadataValue.json([{"epoch": h.epoch, "train_loss": round(h.train_loss, 5),
                                                          "val_loss": round(h.val_loss, 5)} for h in history]),
            "training_set_version": version, "feature_service": spec.feature_service, "git_commit": run.git_commit,
            "inputs": dg.MetadataValue.json(layout.names),
            **(run.embeddings.metadata() if run.embeddings else {}),  # texts embedded anew, and reused from the cache
        })

    @dg.asset(key=k["model_evaluation"], deps=[k["trained_model"]], group_name=group, kinds={"mlflow"},
              description=f"{spec.name}: holdout metrics, calibration and metrics per segment; the champion, if "
                          "any, is scored on the same holdout.")
    def model_evaluation(context: dg.AssetExecutionContext, lake: LakeResource, mlflow: MlflowResource,
                         events: EventStoreResource) -> dg.MaterializeResult:
        from loopwise.training.pipeline import evaluate_run

        trained = _upstream(context, k["trained_model"])
        frame = lake.lake().table(spec.training_table).read(version=int(trained["training_set_version"])).to_pandas()
        registry = mlflow.registry(spec.name, events.store())
        champion_version = registry.alias(CHAMPION)
        champion = (champion_version, f"models:/{spec.name}@{CHAMPION}") if champion_version else None
        result = evaluate_run(spec, mlflow.tracking_uri, trained["mlflow_run_id"], trained["model_uri"], frame, champion)
        return dg.MaterializeResult(metadata={
            **result.metrics, "mlflow_run_id": result.run_id, "model_uri": result.model_uri,
            "segments": dg.MetadataValue.json(result.segments),
            "reliability_plot": dg.MetadataValue.md(result.reliability_markdown),
            "champion_version": result.champion_version or "none", "label": spec.label,
        })

    @dg.asset(key=k["registered_model"], deps=[k["model_evaluation"]], group_name=group, kinds={"mlflow"},
              check_specs=[dg.AssetCheckSpec("passes_gate", asset=k["registered_model"], blocking=True,
                                             description="Floors, ceilings, and not worse than the champion on the "
                                                         "same holdout beyond the tolerance.")],
              description=f"{spec.name}: the version registered in MLflow; alias `challenger` moves only when the "
                          "gate passes.")
    def registered_model(context: dg.AssetExecutionContext, mlflow: MlflowResource, events: EventStoreResource):  # type: ignore[no-untyped-def]
        from loopwise.training.pipeline import read_evaluation

        evaluated = read_evaluation(mlflow.tracking_uri, _upstream(context, k["model_evaluation"])["mlflow_run_id"])
        registry = mlflow.registry(spec.name, events.store())
        tags = {key: value for key, value in registry.client.get_run(evaluated.run_id).data.tags.items()
                if key.startswith(("lineage.", "dagster.", "loopwise."))}
        version = registry.register(evaluated.model_uri, evaluated.run_id, tags)
        decision = registry.gate(version, evaluated.metrics, mlflow.policy(spec.name), evaluated.champion_metrics)
        yield dg.MaterializeResult(metadata={"version": version, "model": spec.name, "mlflow_run_id": evaluated.run_id,
                                             "challenger": registry.alias("challenger") or "none",
                                             "champion": registry.alias(CHAMPION) or "none"})
        yield dg.AssetCheckResult(check_name="passes_gate", passed=decision.passed,
                                  metadata={"reasons": dg.MetadataValue.json(decision.reasons),
                                            "metrics": dg.MetadataValue.json(decision.candidate)})

    @dg.asset(key=k["deployed_endpoint"], deps=[k["registered_model"]], group_name=group, kinds={"fastapi"},
              description=f"{spec.name}: what every `loopwise serve` replica answers with. Materializing it brings "
                          "the newest gated version towards production by the model's rollout policy (profile "
                          "`rollout`): released at once when the model has no champion yet, otherwise a canary, "
                          "blue/green, shadow or A/B rollout that the canary-analysis sensor advances, promotes or "
                          "rolls back on evidence. The service's live state arrives as observations.")
    def deployed_endpoint(context: dg.AssetExecutionContext, mlflow: MlflowResource,
                          events: EventStoreResource) -> dg.MaterializeResult:
        from loopwise.rollout.policy import deploy

        store = events.store()
        policy = load_settings().rollout.policy(spec.name)
        try:
            done = deploy(store, mlflow.registry(spec.name, store), spec.name, policy, actor="dagster",
                          reason=f"{k['deployed_endpoint'].to_user_string()} materialized by run {context.run.run_id}")
        except ValueError as exc:  # no gated version yet, or a bad policy: name the fix
            raise dg.Failure(str(exc)) from None
        rollout = done.rollout
        context.log.info(f"{spec.name}: {done.action} version {done.version}"
                         + (f" ({rollout.strategy.value} rollout {rollout.id}, {rollout.status.value})" if rollout else ""))
        return dg.MaterializeResult(metadata={
            "model": spec.name, "version": done.version, "action": done.action,
            "strategy": rollout.strategy.value if rollout else "none",
            "rollout_id": rollout.id if rollout else "none",
            "rollout_status": rollout.status.value if rollout else "none",
            "traffic": dg.MetadataValue.json({a.name: {"version": a.version, "weight": a.weight}
                                              for a in rollout.arms} if rollout else {}),
        })

    return [training_set, trained_model, model_evaluation, registered_model, deployed_endpoint]


MODEL_ASSETS = [asset for spec in USE_CASE.models for asset in model_assets(spec)]
