"""The prod registry path: an MLflow tracking server and an S3 artifact store (moto's server), on loopback."""

import boto3
import mlflow
import pytest
from loopwise.events import open_store
from loopwise.registry import CHALLENGER, GatePolicy, Registry

from tests.services import mlflow_server, s3_server


class ConstantModel(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: list[str], params=None) -> list[float]:  # type: ignore[no-untyped-def]
        return [0.5] * len(model_input)


def test_versions_and_artifacts_go_to_the_tracking_server_and_s3(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = {"AWS_ACCESS_KEY_ID": "loopwise-test", "AWS_SECRET_ACCESS_KEY": "loopwise-test", "AWS_DEFAULT_REGION": "us-east-1"}
    with s3_server() as endpoint:
        env = {**creds, "MLFLOW_S3_ENDPOINT_URL": endpoint}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="loopwise-mlflow")
        with mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", "s3://loopwise-mlflow/artifacts", env) as uri:
            registry = Registry(uri, open_store(f"sqlite:///{tmp_path / 'events.db'}"), "ticket-escalation")
            mlflow.set_experiment("ticket-escalation")
            with mlflow.start_run() as run:
                mlflow.log_metric("auc", 0.8)
                info = mlflow.pyfunc.log_model(name="model", python_model=ConstantModel())
            version = registry.register(info.model_uri, run.info.run_id, {"feature_service": "escalation_v1"})
            assert registry.gate(version, {"auc": 0.8}, GatePolicy(floors={"auc": 0.7})).passed
            assert registry.alias(CHALLENGER) == version
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket="loopwise-mlflow").get("Contents", [])]
            assert any(k.endswith("MLmodel") for k in keys), keys
            loaded = mlflow.pyfunc.load_model(f"models:/ticket-escalation@{CHALLENGER}")
            assert list(loaded.predict(["a ticket"])) == [0.5]
