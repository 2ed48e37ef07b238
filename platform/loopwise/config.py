"""Configuration profiles: YAML per profile plus environment overrides, validated up front.

`LOOPWISE_PROFILE` picks the profile (dev, test, prod; default dev), `LOOPWISE_CONFIG` may
point at a YAML file of one's own, `LOOPWISE_DATA_DIR` sets the one data root, and any key can
be overridden as `LOOPWISE__SECTION__KEY=value` (the value is read as YAML). A bad value is
reported with its key and where it came from before any work starts.
"""

from __future__ import annotations

import os
from datetime import date, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

PROFILES_DIR = Path(__file__).parent / "profiles"
PROFILES = ("dev", "test", "prod")
ENV_PREFIX = "LOOPWISE__"


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the key and its source."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SparkSettings(_Section):
    remote: str | None = Field(
        None, description="Spark Connect URL (sc://host:15002); empty starts the embedded Sail server"
    )


class LakeSettings(_Section):
    uri: str | None = Field(None, description="root of the Delta tables; default <data_dir>/lake")
    storage_options: dict[str, str] = Field(default_factory=dict, description="delta-rs object store options")


class ValidationSettings(_Section):
    max_bad_row_fraction: float = Field(
        0.05, ge=0.0, le=1.0, description="a partition with a larger share of bad rows fails its blocking check"
    )


class EventsSettings(_Section):
    url: str | None = Field(None, description="sqlite:///path or postgresql://user@host:port/db; "
                                              "default sqlite under <data_dir>/events")
    password_secret: str | None = Field(None, description="name of the secret holding the database password")


class FeatureSettings(_Section):
    online_store: str = Field("sqlite", pattern="^(sqlite|redis)$", description="sqlite (embedded) or redis")
    redis_url: str = Field("127.0.0.1:6379", description="host:port of Redis when online_store is redis")
    redis_password_secret: str | None = Field(None, description="name of the secret holding Redis's password")
    stale_after_hours: float = Field(48.0, gt=0, description="an online value older than this is reported stale")


class GateSettings(_Section):
    """One model's gate; a key left out takes the registry-wide default."""

    floors: dict[str, float] | None = Field(None, description="minimum holdout metrics a version needs to become challenger")
    ceilings: dict[str, float] | None = Field(None, description="maximum holdout metrics (lower is better)")
    tolerance: float | None = Field(None, ge=0, description="how much worse than the champion a challenger may be")


class RegistrySettings(_Section):
    tracking_uri: str | None = Field(None, description="MLflow tracking/registry URI; default SQLite under <data_dir>/mlflow")
    artifact_uri: str | None = Field(None, description="where model artifacts go; default <data_dir>/mlflow/artifacts")
    floors: dict[str, float] = Field(default_factory=lambda: {"auc": 0.65},
                                     description="every model's default: minimum holdout metrics to become challenger")
    ceilings: dict[str, float] = Field(default_factory=lambda: {"brier": 0.25},
                                       description="every model's default: maximum holdout metrics (lower is better)")
    tolerance: float = Field(0.01, ge=0, description="every model's default: how much worse than the champion it may be")
    models: dict[str, GateSettings] = Field(default_factory=dict,
                                            description="per model (by registered name), the gate keys that differ")

    def gate(self, model: str) -> GateSettings:
        """The model's gate with every unset key taken from the registry-wide default."""
        own = self.models.get(model, GateSettings())
        return GateSettings(floors=self.floors if own.floors is None else own.floors,
                            ceilings=self.ceilings if own.ceilings is None else own.ceilings,
                            tolerance=self.tolerance if own.tolerance is None else own.tolerance)


class TrainingSettings(_Section):
    freeze_encoder: bool = Field(True, description="frozen MiniLM with a trained head (fast on CPU) or full fine-tuning")
    epochs: int = Field(8, gt=0)
    batch_size: int = Field(64, gt=0)
    learning_rate: float = Field(1e-3, gt=0)
    gradient_accumulation: int = Field(1, gt=0)
    patience: int = Field(2, gt=0)
    seed: int = 7
    device: str = Field("auto", description="auto (CUDA when present), cpu or cuda")
    distributed: bool = Field(False, description="data-parallel over torchrun's ranks: gloo on CPU, nccl on CUDA")
    gpus: int = Field(0, ge=0, description="nvidia.com/gpu the training pod requests on Kubernetes")
    memory: str = Field("8Gi", description="memory the training pod requests on Kubernetes")
    priority_class: str = Field("loopwise-dev", description="Kubernetes PriorityClass of training pods")


class PartitionSettings(_Section):
    start_date: date = Field(date(2026, 1, 1), description="first daily partition")


class AuthSettings(_Section):
    require_key_for_predictions: bool = Field(False, description="prediction routes need a key or token (viewer role)")
    oidc_issuer: str | None = Field(None, description="the OIDC issuer whose bearer tokens are accepted (iss)")
    oidc_audience: str | None = Field(None, description="the audience those tokens must carry (aud)")
    oidc_jwks_url: str | None = Field(None, description="where the issuer publishes its signing keys (JWKS)")
    role_claim: str = Field("loopwise_role", description="the token claim that holds the role: viewer, operator, admin")


class ServingSettings(_Section):
    host: str = Field("127.0.0.1", description="where `loopwise serve` listens")
    port: int = Field(8080, gt=0, lt=65536)
    workers: int = Field(1, gt=0, description="uvicorn worker processes")
    max_body_bytes: int = Field(1_048_576, gt=0, description="a larger request body gets 413")
    max_batch: int = Field(256, gt=0, description="most instances (or entities) one request may carry")
    micro_batching: bool = Field(True, description="score queued requests together (off: one request per scoring)")
    batch_wait_ms: float = Field(2.0, ge=0, description="how long a model's requests wait for others to share "
                                                        "their online read; each version then scores what queued "
                                                        "for it, with no further wait")
    runtime: str = Field("onnx-int8", pattern="^(torch|onnx|onnx-int8)$",
                         description="what a text encoder scores with: torch (fp32, as trained), onnx (ONNX Runtime "
                                     "fp32, the same scores) or onnx-int8 (dynamic int8 quantization; its agreement "
                                     "with fp32 is in benchmarks/RESULTS.md); exported once per set of weights "
                                     "under <data_dir>/runtime")
    group_commit_ms: float = Field(0.0, ge=0, description="how long the prediction log waits for more answers "
                                                          "before a write (0: writes at once; what comes during a "
                                                          "write is the next group)")
    flush_interval_seconds: float = Field(5.0, gt=0, description="how often logged predictions move into the Delta "
                                                                 "table that drift and rollout analysis read")
    log_dir: str | None = Field(None, description="the prediction log's write-ahead segments; default <data_dir>/predlog")
    tls_cert: str | None = Field(None, description="PEM certificate: serve HTTPS when set (with tls_key)")
    tls_key: str | None = Field(None, description="PEM private key for tls_cert")
    auth: AuthSettings = AuthSettings()


RULE_DEFAULTS: list[dict[str, Any]] = [
    {"rule": "error_rate", "max_rate": 0.01, "min_sample": 300},
    {"rule": "latency", "quantile": 0.99, "max_ms": 250.0, "min_sample": 300},
    {"rule": "accuracy", "measure_by": "log_loss", "max_degradation": 0.02, "min_sample": 200},
]


class RolloutPolicy(_Section):
    """How one model's new versions reach production; a key left out takes the rollout-wide default."""

    strategy: str | None = Field(None, pattern="^(canary|bluegreen|shadow|ab)$")
    steps: list[int] | None = Field(None, description="canary: the challenger's percent at each step")
    rules: list[dict[str, Any]] | None = Field(None, description="analysis rules (see rollout.rules)")
    ab: dict[str, Any] | None = Field(None, description="an A/B test's plan: metric, baseline_rate, "
                                                        "minimum_detectable_effect, alpha, power, test, split")


class RolloutSettings(_Section):
    strategy: str = Field("canary", pattern="^(canary|bluegreen|shadow|ab)$",
                          description="how a new champion is rolled out: canary, bluegreen, shadow or ab")
    steps: list[int] = Field(default_factory=lambda: [5, 25, 50, 100],
                             description="canary: the challenger's percent of traffic at each step")
    rules: list[dict[str, Any]] = Field(default_factory=lambda: [dict(r) for r in RULE_DEFAULTS], description=(
        "the analysis rules every step must pass; each names its `rule` (error_rate, latency, score_shift, accuracy) "
        "and its threshold, min_sample, alpha, failure_limit, consecutive_successes, inconclusive_limit"))
    analysis_interval_seconds: int = Field(30, gt=0, description="how often the canary-analysis sensor measures")
    models: dict[str, RolloutPolicy] = Field(default_factory=dict, description="per model, the keys that differ")

    def policy(self, model: str) -> RolloutPolicy:
        """The model's policy with every unset key taken from the rollout-wide default."""
        own = self.models.get(model, RolloutPolicy())
        return RolloutPolicy(strategy=own.strategy or self.strategy, steps=own.steps or self.steps,
                             rules=self.rules if own.rules is None else own.rules, ab=own.ab)


class MonitoringSettings(_Section):
    drift: dict[str, Any] = Field(default_factory=dict, description=(
        "drift tests and thresholds (loopwise.monitoring.DriftConfig: drift_share, per-column `columns: {name: {test, "
        "threshold}}`, per-kind defaults); empty: Evidently's defaults"))
    models: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per model, its own drift settings")
    significance: float | None = Field(0.05, gt=0, lt=1, description=(
        "a column drifts on an effect size (Wasserstein, Jensen-Shannon) only where a two-sample test also finds the "
        "difference at this p-value: a check reads a few hundred answers, and on so few a distance's sampling noise "
        "alone reaches Evidently's thresholds. null: Evidently's verdicts (drift.significance overrides it)"))
    reference: str = Field("served", pattern="^(served|training)$", description=(
        "what drift is measured against: served (the champion's first `baseline_rows` answered predictions: the "
        "production baseline, free of training/serving skew) or training (its training set's holdout rows)"))
    baseline_rows: int = Field(500, gt=0, description="answered predictions a served baseline is profiled from")
    check_interval_seconds: int = Field(30, gt=0, description="how often new predictions are checked for drift")
    min_rows: int = Field(100, gt=0, description="answered predictions a day needs before its drift is checked")
    degradation_tolerance: float = Field(0.05, ge=0, description="AUC below the version's own evaluation that counts "
                                                                 "as degraded")
    min_labelled: int = Field(50, gt=0, description="labelled predictions a day needs before degradation is judged")
    retrain_cooldown_seconds: float = Field(900.0, ge=0, description="after a retrain, nothing triggers another this long")
    stale_after_days: int = Field(7, gt=0, description="newly labelled days since the training set was built that "
                                                       "make it stale")
    max_age_days: float = Field(30.0, gt=0, description="a training set older than this is stale")

    def drift_config(self, model: str) -> dict[str, Any]:
        return {"significance": self.significance, **self.drift, **self.models.get(model, {})}


class OrchestrationSettings(_Section):
    executor: str = Field("in_process", pattern="^(in_process|k8s)$",
                          description="in_process (a run in one process) or k8s (a pod per step, dagster-k8s)")


class AutomationSettings(_Section):
    on_by_default: bool = Field(True, description="the landing sensor and data-path automation start running with "
                                                  "the daemon (embedded default); prod turns them on by hand")
    landing_interval_seconds: int = Field(15, gt=0, description="how often the landing sensor looks for complete days")
    closed_loop: bool = Field(True, description="the prediction monitor, retraining and canary-analysis sensors start "
                                                "running with the daemon (with on_by_default)")


class DemoSettings(_Section):
    dates: list[date] = Field(default_factory=lambda: [date(2026, 3, 2) + timedelta(days=i) for i in range(4)])
    rows_per_day: int = Field(2000, gt=0, description="rows per day of the use case's synthetic feed")
    seed: int = 7
    bad_row_fraction: float = Field(0.01, ge=0.0, le=0.5)


class Settings(_Section):
    """The validated configuration of one profile."""

    profile: str
    data_dir: Path = Path(".loopwise")
    use_case: str = Field("supportdesk", description="the package that declares the sources, features and models")
    spark: SparkSettings = SparkSettings()
    lake: LakeSettings = LakeSettings()
    validation: ValidationSettings = ValidationSettings()
    partitions: PartitionSettings = PartitionSettings()
    events: EventsSettings = EventsSettings()
    features: FeatureSettings = FeatureSettings()
    registry: RegistrySettings = RegistrySettings()
    training: TrainingSettings = TrainingSettings()
    automation: AutomationSettings = AutomationSettings()
    orchestration: OrchestrationSettings = OrchestrationSettings()
    serving: ServingSettings = ServingSettings()
    rollout: RolloutSettings = RolloutSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    demo: DemoSettings = DemoSettings()

    @cached_property
    def paths(self) -> DataPaths:
        return DataPaths(self.data_dir.resolve())

    @property
    def lake_uri(self) -> str:
        return self.lake.uri or str(self.paths.lake)

    @property
    def events_url(self) -> str:
        return self.events.url or f"sqlite:///{self.paths.events / 'events.db'}"

    @property
    def tracking_uri(self) -> str:
        return self.registry.tracking_uri or f"sqlite:///{self.paths.mlflow / 'mlflow.db'}"

    @property
    def artifact_uri(self) -> str:
        return self.registry.artifact_uri or (self.paths.mlflow / "artifacts").as_uri()

    def secret_names(self) -> list[str]:
        """Every secret this profile refers to by name."""
        return [name for name in (self.events.password_secret, self.features.redis_password_secret) if name]


class DataPaths:
    """Every place under the data root the platform writes to."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.landing = root / "landing"
        self.lake = root / "lake"
        self.dagster_home = root / "dagster"
        self.feast = root / "feast"
        self.mlflow = root / "mlflow"
        self.events = root / "events"
        self.predlog = root / "predlog"
        self.monitoring = root / "monitoring"
        self.embeddings = root / "embeddings"  # a frozen encoder's cached text embeddings (training only)


def _set_path(tree: dict[str, Any], dotted: list[str], value: Any) -> None:
    node = tree
    for part in dotted[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot override {'.'.join(dotted)}: {part} is not a section")
    node[dotted[-1]] = value


def load_settings(profile: str | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Load and validate a profile with its environment overrides."""
    env = dict(os.environ if environ is None else environ)
    profile = profile or env.get("LOOPWISE_PROFILE") or "dev"
    config_file = Path(env["LOOPWISE_CONFIG"]) if env.get("LOOPWISE_CONFIG") else PROFILES_DIR / f"{profile}.yaml"
    if not config_file.exists():
        known = ", ".join(PROFILES)
        raise ConfigError(f"profile {profile!r} has no file {config_file} (known profiles: {known}; or set LOOPWISE_CONFIG)")
    try:
        raw = yaml.safe_load(config_file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{config_file}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{config_file}: expected a mapping at the top level")
    raw["profile"] = profile

    origin: dict[str, str] = {}
    if env.get("LOOPWISE_DATA_DIR"):
        raw["data_dir"] = env["LOOPWISE_DATA_DIR"]
        origin["data_dir"] = "environment variable LOOPWISE_DATA_DIR"
    if env.get("SPARK_REMOTE"):
        _set_path(raw, ["spark", "remote"], env["SPARK_REMOTE"])
        origin["spark.remote"] = "environment variable SPARK_REMOTE"
    for name, value in sorted(env.items()):
        if name.startswith(ENV_PREFIX):
            dotted = name[len(ENV_PREFIX):].lower().split("__")
            _set_path(raw, dotted, yaml.safe_load(value) if value else None)
            origin[".".join(dotted)] = f"environment variable {name}"
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            parts = [str(p) for p in err["loc"]]
            key = ".".join(parts)
            # A nested value (registry.models.x.tolerance) came from the variable that set its section.
            where = next((origin[".".join(parts[:i])] for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in origin),
                         str(config_file))
            problems.append(f"  {key}: {err['msg']} (got {err.get('input')!r}; from {where})")
        raise ConfigError(f"invalid configuration for profile {profile!r}:\n" + "\n".join(problems)) from None
