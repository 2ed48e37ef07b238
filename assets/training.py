"""Model assets: train (GPU-ready), evaluate on the holdout, register through the gate."""

import json
from pathlib import Path
from typing import Any

import dagster as dg
from loopwise.config import load_settings
from loopwise.features.stages import LABEL, TRAINING_SET
from loopwise.registry import CHAMPION

from resources import EventStoreResource, FeatureStoreResource, LakeResource, MlflowResource

_training = load_settings().training


def k8s_tags(gpus: int, memory: str, priority_class: str) -> dict[str, Any]:
    """dagster-k8s run tags: GPU and memory requests, and the pod's PriorityClass."""
    resources: dict[str, Any] = {"requests": {"memory": memory}, "limits": {"memory": memory}}
    if gpus:
        resources["limits"]["nvidia.com/gpu"] = gpus
        resources["requests"]["nvidia.com/gpu"] = gpus
    return {"dagster-k8s/config": {"container_config": {"resources": resources},
                                   "pod_spec_config": {"priority_class_name": priority_class}}}


TRAINING_POD = k8s_tags(_training.gpus, _training.memory, _training.priority_class)


@dg.asset(deps=["training_set"], group_name="training", kinds={"pytorch", "mlflow"}, op_tags=TRAINING_POD,
          description="The escalation model (MiniLM text encoder + customer-feature MLP), trained on the training "
                      "set and logged to MLflow with its lineage.")
def trained_model(context: dg.AssetExecutionContext, lake: LakeResource, mlflow: MlflowResource,
                  feast: FeatureStoreResource) -> dg.Output[dict[str, Any]]:
    from loopwise.training.loop import TrainConfig  # torch loads where training runs, not with the definitions
    from loopwise.training.pipeline import train_and_log

    table = lake.lake().table(TRAINING_SET)
    version = table.current_version()
    frame = table.read().to_pandas()
    event = context.instance.get_latest_materialization_event(dg.AssetKey("training_set"))
    inputs = event.asset_materialization.metadata.get("input_versions") if event and event.asset_materialization else None
    partitions = f"{frame['partition_date'].min()}..{frame['partition_date'].max()}"
    tags = {"lineage.training_set_version": str(version), "lineage.feature_service": feast.service,
            "lineage.partitions": partitions, "lineage.inputs": json.dumps(inputs.value if inputs else {}),
            "dagster.run_id": context.run_id, "dagster.training_set_run_id": event.run_id if event else ""}
    config = TrainConfig(epochs=_training.epochs, batch_size=_training.batch_size, learning_rate=_training.learning_rate,
                         gradient_accumulation=_training.gradient_accumulation, patience=_training.patience,
                         seed=_training.seed, device=_training.device, progress=False)
    checkpoints = Path(lake.landing_dir).parent / "checkpoints" / f"training_set-v{version}"
    run, _ = train_and_log(frame, config, checkpoints, mlflow.tracking_uri, mlflow.artifact_uri, tags,
                           freeze_encoder=_training.freeze_encoder)
    history = run.result.history
    return dg.Output(
        {**run.summary(), "training_set_version": version, "tags": tags, "holdout_probabilities": run.holdout_probabilities},
        metadata={
            "mlflow_run_id": run.run_id, "model_uri": run.model_uri, "device": run.result.device,
            "best_epoch": run.result.best_epoch, "epochs_run": len(history),
            "samples_per_second": round(sum(h.samples_per_second for h in history) / len(history), 1),
            "metrics_per_epoch": dg.MetadataValue.json([{"epoch": h.epoch, "train_loss": round(h.train_loss, 5),
                                                          "val_loss": round(h.val_loss, 5)} for h in history]),
            "training_set_version": version, "feature_service": feast.service, "git_commit": run.git_commit,
            "input_versions": dg.MetadataValue.json(inputs.value if inputs else {}),
        },
    )


@dg.asset(group_name="training", kinds={"mlflow"},
          description="Holdout AUC, F1, calibration (Brier, reliability plot) and metrics per segment; the champion "
                      "is evaluated on the same holdout.")
def model_evaluation(trained_model: dict[str, Any], lake: LakeResource, mlflow: MlflowResource,
                     events: EventStoreResource) -> dg.Output[dict[str, Any]]:
    import numpy as np
    from loopwise.training.data import split_of
    from loopwise.training.evaluation import evaluate
    from loopwise.training.pipeline import predict

    frame = lake.lake().table(TRAINING_SET).read(version=trained_model["training_set_version"]).to_pandas()
    holdout = frame[frame["ticket_id"].map(split_of) == "holdout"].reset_index(drop=True)
    candidate = evaluate(holdout, np.asarray(trained_model["holdout_probabilities"]))
    registry = mlflow.registry(events.store())
    champion_version = registry.alias(CHAMPION)
    champion = None
    if champion_version:
        champion = evaluate(holdout, predict(f"models:/{registry.model}@{CHAMPION}", holdout)).metrics
    return dg.Output(
        {"metrics": candidate.metrics, "champion_metrics": champion, "champion_version": champion_version,
         **{k: trained_model[k] for k in ("run_id", "model_uri", "tags")}},
        metadata={**{k: v for k, v in candidate.metrics.items()},
                  "segments": dg.MetadataValue.json(candidate.segments),
                  "reliability_plot": dg.MetadataValue.md(candidate.reliability_markdown()),
                  "champion_version": champion_version or "none",
                  "label": LABEL},
    )


@dg.asset(group_name="training", kinds={"mlflow"},
          check_specs=[dg.AssetCheckSpec("passes_gate", asset="registered_model", blocking=True,
                                         description="Floors, ceilings, and not worse than the champion on the same "
                                                     "holdout beyond the tolerance.")],
          description="The version registered in MLflow; alias `challenger` moves only when the gate passes.")
def registered_model(model_evaluation: dict[str, Any], mlflow: MlflowResource, events: EventStoreResource):  # type: ignore[no-untyped-def]
    registry = mlflow.registry(events.store())
    version = registry.register(model_evaluation["model_uri"], model_evaluation["run_id"], model_evaluation["tags"])
    decision = registry.gate(version, model_evaluation["metrics"], mlflow.policy(), model_evaluation["champion_metrics"])
    yield dg.Output(version, metadata={"version": version, "model": registry.model,
                                       "challenger": registry.alias("challenger") or "none",
                                       "champion": registry.alias(CHAMPION) or "none"})
    yield dg.AssetCheckResult(check_name="passes_gate", passed=decision.passed,
                              metadata={"reasons": dg.MetadataValue.json(decision.reasons),
                                        "metrics": dg.MetadataValue.json(decision.candidate)})


TRAINING_ASSETS = [trained_model, model_evaluation, registered_model]
