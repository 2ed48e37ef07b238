"""The service's live state as observations of each model's `deployed_endpoint`, so the lineage graph
ends at the endpoint: versions loaded, readiness, predictions and errors. A sensor, because the
state lives outside Dagster (the running service) and is read over HTTP."""

from __future__ import annotations

import json
import ssl
import urllib.request

import dagster as dg
from loopwise.config import load_settings

from assets.models import keys
from assets.usecase import USE_CASE


def _tls_context(cert: str | None) -> ssl.SSLContext | None:
    """For a service on HTTPS: the system's CAs, and the service's own certificate trusted as it is.

    `loopwise serve` is often given a self-signed certificate (`loopwise.serving.tls`), which no system CA
    signs; partial-chain verification also accepts a CA-issued one named in `serving.tls_cert`.
    """
    if not cert:
        return None
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=cert)
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def _get(url: str, tls: ssl.SSLContext | None) -> str:
    with urllib.request.urlopen(url, timeout=5, context=tls) as response:
        return response.read().decode()


def _counter_totals(text: str, metric: str, label: str) -> dict[str, float]:
    """Sum a Prometheus counter by one label from the exposition text."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == metric:
                key = sample.labels.get(label, "")
                totals[key] = totals.get(key, 0.0) + sample.value
    return totals


@dg.sensor(minimum_interval_seconds=30,
           default_status=dg.DefaultSensorStatus.RUNNING if load_settings().automation.on_by_default
           else dg.DefaultSensorStatus.STOPPED,
           description="Reports the running service's versions, readiness, predictions and errors as observations "
                       "of each deployed_endpoint.")
def endpoint_observer(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    serving = load_settings().serving  # at each tick, not at import: the service may move without a code reload
    base = f"{'https' if serving.tls_cert else 'http'}://{serving.host}:{serving.port}"
    tls = _tls_context(serving.tls_cert)
    try:
        metrics = _get(f"{base}/metrics", tls)
        models = {spec.name: json.loads(_get(f"{base}/v1/models/{spec.name}", tls)) for spec in USE_CASE.models}
    except OSError as exc:
        return dg.SkipReason(f"no service at {base} ({exc}); start it with `loopwise serve`")
    predictions = _counter_totals(metrics, "loopwise_predictions_total", "model")
    errors = _counter_totals(metrics, "loopwise_errors_total", "cause")
    observations = [
        dg.AssetObservation(asset_key=keys(spec)["deployed_endpoint"], metadata={
            "url": base, "ready": models[spec.name]["ready"],
            "versions_loaded": dg.MetadataValue.json(models[spec.name]["versions"]),
            "traffic": dg.MetadataValue.json(models[spec.name]["traffic"]),
            "predictions": predictions.get(spec.name, 0.0), "errors_by_cause": dg.MetadataValue.json(errors)})
        for spec in USE_CASE.models]
    return dg.SensorResult(asset_events=observations)
