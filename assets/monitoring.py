"""Monitoring assets, generated for every declared model in its own group, downstream of its endpoint:
reference profile (its champion's training set, profiled once) -> drift report and model performance, one
partition per day of predictions. Both record their verdicts in the state store, where the retraining sensor
and the service's metrics read them."""

from datetime import date
from typing import Any

import dagster as dg
from loopwise.config import load_settings
from loopwise.registry import CHAMPION
from loopwise.usecase import ModelSpec

from assets.models import keys
from assets.partitions import DAILY
from assets.usecase import USE_CASE
from resources import EventStoreResource, FeatureStoreResource, LakeResource, MlflowResource


def monitoring_keys(spec: ModelSpec) -> dict[str, dg.AssetKey]:
    return {step: dg.AssetKey([spec.slug, step]) for step in ("reference_profile", "drift_report", "model_performance")}


def champion_reference(spec: ModelSpec, lake: LakeResource, mlflow: MlflowResource, events: EventStoreResource,
                       feast: FeatureStoreResource) -> tuple[Any, Any, bool]:
    """(reference, layout, built): the current champion's profiled reference, built and saved if missing."""
    from loopwise.features.store import ensure_applied
    from loopwise.monitoring.drift import DriftConfig
    from loopwise.monitoring.model import build_reference, load_reference, reference_frame, save_reference
    from loopwise.training.data import layout_for
    from loopwise.training.pipeline import holdout_scores
    from mlflow import MlflowClient

    settings = load_settings()
    store = events.store()
    champion = mlflow.registry(spec.name, store).alias(CHAMPION)
    if champion is None:
        raise dg.Failure(f"{spec.name} has no champion yet: materialize {keys(spec)['deployed_endpoint'].to_user_string()}")
    feature_store = feast.current_store()
    ensure_applied(feature_store, USE_CASE.feature_repo, settings.lake_uri)
    layout = layout_for(feature_store, spec)
    root = settings.paths.monitoring
    reference = load_reference(root, spec.name, champion)
    if reference is not None:
        return reference, layout, False
    config = DriftConfig.from_dict(settings.monitoring.drift_config(spec.name))
    if settings.monitoring.reference == "served":
        from loopwise.monitoring.model import served_baseline, served_frame

        baseline = served_baseline(lake.lake(), spec, champion, settings.monitoring.baseline_rows)
        if baseline is None:
            raise dg.Failure(f"{spec.name} version {champion} has answered fewer than {settings.monitoring.baseline_rows} "
                             "predictions: its served baseline (monitoring.baseline_rows) is not formed yet")
        until = baseline["at"].max().isoformat()
        reference = build_reference(spec.name, champion, -1, served_frame(baseline, layout), layout, config,
                                    source="served", until=until)
        save_reference(root, reference)
        return reference, layout, True
    run_id = MlflowClient(mlflow.tracking_uri, mlflow.tracking_uri).get_model_version(spec.name, champion).run_id
    run = MlflowClient(mlflow.tracking_uri).get_run(run_id)
    version = int(run.data.tags.get("lineage.training_set_version", -1))
    training = lake.lake().table(spec.training_table).read(version=None if version < 0 else version).to_pandas()
    scores = holdout_scores(mlflow.tracking_uri, run_id, spec.split_key)
    training[spec.split_key] = training[spec.split_key].astype(str)
    holdout = training.merge(scores, on=spec.split_key)
    frame = reference_frame(holdout, layout, holdout["probability"])
    reference = build_reference(spec.name, champion, version, frame, layout, config)
    save_reference(root, reference)
    return reference, layout, True


def monitoring_assets(spec: ModelSpec) -> list[dg.AssetsDefinition]:
    k, m = keys(spec), monitoring_keys(spec)
    group = spec.slug

    @dg.asset(key=m["reference_profile"], deps=[k["deployed_endpoint"]], group_name=group, kinds={"python"},
              description=f"{spec.name}: what its champion's drift is measured against, profiled once: its first "
                          "answered predictions (monitoring.reference: served) or its training set's holdout rows "
                          "with the champion's scores (training); sketches and histograms.")
    def reference_profile(lake: LakeResource, mlflow: MlflowResource, events: EventStoreResource,
                          feast: FeatureStoreResource) -> dg.MaterializeResult:
        reference, _, built = champion_reference(spec, lake, mlflow, events, feast)
        return dg.MaterializeResult(metadata={
            "champion_version": reference.version, "source": reference.source,
            "training_set_version": reference.training_set_version,
            "rows": reference.rows, "profile_bytes": reference.profile.json_size(), "built_now": built,
            "columns": dg.MetadataValue.json(reference.profile.kinds)})

    @dg.asset(key=m["drift_report"], deps=[m["reference_profile"]], group_name=group, partitions_def=DAILY,
              kinds={"python"},
              description=f"{spec.name}: a day's drift of what it was served with (features, inputs, score, from "
                          "the prediction log) against its champion's reference; per feature: test, statistic, "
                          "threshold, verdict.")
    def drift_report(context: dg.AssetExecutionContext, lake: LakeResource, mlflow: MlflowResource,
                     events: EventStoreResource, feast: FeatureStoreResource) -> dg.MaterializeResult:
        from loopwise.monitoring.drift import DriftConfig
        from loopwise.monitoring.model import check_day, record_drift

        day = date.fromisoformat(context.partition_key)
        reference, layout, _ = champion_reference(spec, lake, mlflow, events, feast)
        config = DriftConfig.from_dict(load_settings().monitoring.drift_config(spec.name))
        try:
            report, rows = check_day(lake.lake(), spec, layout, reference, day, config)
        except ValueError as exc:  # nothing answered after the reference yet: not a failure, nothing to report
            return dg.MaterializeResult(metadata={"checked": False, "why": str(exc)})
        record_drift(events.store(), spec.name, day, reference, report, rows, context.run.run_id)
        drifted = [c.name for c in report.columns if report.counted(c)]
        return dg.MaterializeResult(metadata={
            "drifted": report.drifted, "share_drifted": round(report.share_drifted, 4), "rows": rows,
            "drifted_columns": ", ".join(drifted) or "none", "reference_version": reference.version,
            "report": dg.MetadataValue.md(report.markdown())})

    @dg.asset(key=m["model_performance"], deps=[k["deployed_endpoint"]], group_name=group, partitions_def=DAILY,
              kinds={"python"},
              description=f"{spec.name}: per version that answered on the day, AUC and log-loss on the outcomes "
                          "that arrived (joined through the prediction log), against the version's own evaluation.")
    def model_performance(context: dg.AssetExecutionContext, lake: LakeResource, mlflow: MlflowResource,
                          events: EventStoreResource) -> dg.MaterializeResult:
        from loopwise.monitoring.model import day_performance, record_performance
        from loopwise.training.pipeline import read_evaluation
        from mlflow import MlflowClient

        settings = load_settings().monitoring
        day = date.fromisoformat(context.partition_key)
        client = MlflowClient(mlflow.tracking_uri, mlflow.tracking_uri)
        expected = {}
        for version in client.search_model_versions(f"name='{spec.name}'"):
            try:
                expected[str(version.version)] = float(read_evaluation(mlflow.tracking_uri, version.run_id).metrics["auc"])
            except Exception:  # noqa: BLE001 - a version logged without Loopwise's evaluation has no expectation
                continue
        performance = day_performance(lake.lake(), spec, day, expected, min_labelled=settings.min_labelled,
                                      tolerance=settings.degradation_tolerance)
        record_performance(events.store(), performance, context.run.run_id)
        rows = ["| version | answered | labelled | AUC | log-loss | evaluated AUC | degraded |", "|---|---|---|---|---|---|---|"]
        rows += [f"| {v.version} | {v.answered} | {v.labelled} | {_num(v.auc)} | {_num(v.log_loss)} | "
                 f"{_num(v.expected_auc)} | {'yes' if v.degraded else 'no'} |" for v in performance.versions]
        return dg.MaterializeResult(metadata={"degraded": performance.degraded, "versions": len(performance.versions),
                                              "performance": dg.MetadataValue.md("\n".join(rows))})

    return [reference_profile, drift_report, model_performance]


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


MONITORING_ASSETS = [asset for spec in USE_CASE.models for asset in monitoring_assets(spec)]
