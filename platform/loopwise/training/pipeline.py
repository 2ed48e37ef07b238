"""Train, log and evaluate the escalation model; the model is logged as an MLflow pyfunc that
takes what serving has (ticket text, channel, the customer's features) and returns a probability."""

from __future__ import annotations

import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from loopwise.training.data import FEATURE_NAMES, feature_matrix, prepare, tokenize
from loopwise.training.loop import TrainConfig, TrainResult, pick_device, train
from loopwise.training.model import EscalationModel, embed_texts, load_encoder

EXPERIMENT = "ticket-escalation"


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)
    return out.stdout.strip() or "unknown"


def _pyfunc_class() -> type:
    import mlflow

    class EscalationPyfunc(mlflow.pyfunc.PythonModel):
        """Inputs: text, channel and the feature columns; output: escalation probability."""

        def load_context(self, context: Any) -> None:
            import json

            encoder, self.tokenizer = load_encoder()
            spec = json.loads(Path(context.artifacts["spec"]).read_text())
            self.model = EscalationModel(encoder, len(FEATURE_NAMES), hidden=spec["hidden"],
                                         freeze_encoder=spec["freeze_encoder"])
            self.model.load_state_dict(torch.load(context.artifacts["weights"], weights_only=True), strict=False)
            self.model.eval()
            self.max_length = spec["max_length"]

        def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
            embeddings = embed_texts(self.model.encoder, self.tokenizer, model_input["text"].tolist(), self.max_length)
            features = torch.from_numpy(feature_matrix(model_input))
            with torch.no_grad():
                return torch.sigmoid(self.model(features, embeddings)).numpy()

    return EscalationPyfunc


@dataclass
class TrainedRun:
    run_id: str
    model_uri: str
    result: TrainResult
    holdout_probabilities: list[float]
    git_commit: str

    def summary(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "model_uri": self.model_uri, "device": self.result.device, "git_commit": self.git_commit,
                "best_epoch": self.result.best_epoch, "history": [asdict(h) for h in self.result.history]}


def train_and_log(frame: pd.DataFrame, config: TrainConfig, checkpoint_dir: Path, tracking_uri: str,
                  artifact_uri: str, tags: dict[str, str], freeze_encoder: bool = True, hidden: int = 64,
                  max_length: int = 64) -> tuple[TrainedRun, pd.DataFrame]:
    """Train on a training set, log everything to MLflow; returns the run and the holdout rows."""
    import json

    import mlflow
    from mlflow.models import infer_signature

    device = pick_device(config.device)
    encoder, tokenizer = load_encoder()
    if freeze_encoder:  # embed once; each epoch trains only the feature MLP and the head
        text: Any = embed_texts(encoder, tokenizer, frame["text"].tolist(), max_length, device=device)
    else:
        text = tokenize(tokenizer, frame["text"].tolist(), max_length)
    prepared = prepare(frame, text)
    torch.manual_seed(config.seed)
    model = EscalationModel(encoder, len(FEATURE_NAMES), hidden=hidden, freeze_encoder=freeze_encoder)
    model.feature_mean.copy_(prepared.mean)
    model.feature_std.copy_(prepared.std)
    result = train(model, prepared.splits["train"], prepared.splits["validation"], config, checkpoint_dir)

    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else mlflow.create_experiment(EXPERIMENT, artifact_location=artifact_uri)
    holdout = prepared.frames["holdout"]
    model.cpu().eval()
    with torch.no_grad():
        tensors = prepared.splits["holdout"].tensors
        if freeze_encoder:
            logits = model(tensors[0], tensors[1])
        else:
            logits = model(tensors[0], input_ids=tensors[1], attention_mask=tensors[2])
        probabilities = torch.sigmoid(logits).numpy()
    commit = git_commit()
    with mlflow.start_run(experiment_id=experiment_id, tags={**tags, "git_commit": commit}) as run:
        mlflow.log_params({**asdict(config), "freeze_encoder": freeze_encoder, "hidden": hidden, "max_length": max_length,
                           "encoder": "all-MiniLM-L6-v2", "rows": len(frame)})
        for h in result.history:
            mlflow.log_metrics({"train_loss": h.train_loss, "val_loss": h.val_loss,
                                "samples_per_second": h.samples_per_second}, step=h.epoch)
        weights = checkpoint_dir / "weights.pt"
        # A frozen encoder is the packaged one: store only what was trained.
        torch.save({k: v for k, v in model.state_dict().items() if not (freeze_encoder and k.startswith("encoder."))}, weights)
        spec = checkpoint_dir / "spec.json"
        spec.write_text(json.dumps({"hidden": hidden, "freeze_encoder": freeze_encoder, "max_length": max_length}))
        example = holdout.head(3)[["text", "channel", *[c for c in holdout.columns if c in FEATURE_NAMES]]]
        info = mlflow.pyfunc.log_model(name="model", python_model=_pyfunc_class()(),
                                       artifacts={"weights": str(weights), "spec": str(spec)},
                                       input_example=example, signature=infer_signature(example, probabilities[:3]))
    return TrainedRun(run.info.run_id, info.model_uri, result, probabilities.tolist(), commit), holdout


def predict(model_uri: str, frame: pd.DataFrame) -> np.ndarray:
    """Probabilities from a logged model (a version, an alias, or a run's model)."""
    import mlflow

    return np.asarray(mlflow.pyfunc.load_model(model_uri).predict(frame))
