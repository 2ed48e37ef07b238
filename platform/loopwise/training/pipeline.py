"""Train, log and score any declared model.

A model is logged as an MLflow pyfunc that takes what serving has (the feature service's columns
and the request-time inputs) and returns a probability; its holdout scores are logged beside it,
keyed by the split key, so evaluation and later steps read them from MLflow, not from a run's disk.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from loopwise.training.data import InputLayout, feature_matrix, prepare, tokenize
from loopwise.training.embeddings import EmbeddingStats, embed_cached
from loopwise.training.loop import TrainConfig, TrainResult, pick_device, train
from loopwise.training.model import ScoringModel, embed_texts, load_encoder
from loopwise.usecase import ModelSpec

HOLDOUT_ARTIFACT = "holdout_scores.parquet"
log = logging.getLogger(__name__)


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)
    return out.stdout.strip() or "unknown"


def _pyfunc_class() -> type:
    import mlflow

    class ScoringPyfunc(mlflow.pyfunc.PythonModel):
        """Inputs: the layout's columns (features and request-time inputs); output: the probability."""

        def load_context(self, context: Any) -> None:
            import json

            spec = json.loads(Path(context.artifacts["spec"]).read_text())
            self.layout = InputLayout.from_json(spec["layout"])
            self.max_length = spec["max_length"]
            self.model = torch.load(context.artifacts["model"], weights_only=False)
            if self.layout.text:
                encoder, self.tokenizer = load_encoder()
                if self.model.encoder is None:  # a frozen encoder is the packaged one, not stored with the model
                    self.model.encoder = encoder.eval()
            self.model.eval()

        def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
            texts = model_input[self.layout.text].fillna("").astype(str).tolist() if self.layout.text else None
            return score_matrix(self, feature_matrix(model_input, self.layout), texts)

    return ScoringPyfunc


def score_matrix(scoring: Any, matrix: np.ndarray, texts: list[str] | None) -> np.ndarray:
    """The probabilities of a loaded scoring model (`scoring`: the pyfunc's python model, with its `model`,
    `layout` and, for a text input, `tokenizer` and `max_length`) for a feature matrix and the texts."""
    features = torch.from_numpy(matrix)
    with torch.no_grad():
        if scoring.layout.text:
            embeddings = embed_texts(scoring.model.encoder, scoring.tokenizer, texts or [], scoring.max_length)
            return torch.sigmoid(scoring.model(features, embeddings)).numpy()
        return torch.sigmoid(scoring.model(features)).numpy()


@dataclass
class TrainedRun:
    run_id: str
    model_uri: str
    result: TrainResult
    git_commit: str
    embeddings: EmbeddingStats | None = None  # a frozen text encoder's: texts embedded anew and reused from the cache

    def summary(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "model_uri": self.model_uri, "device": self.result.device, "git_commit": self.git_commit,
                "best_epoch": self.result.best_epoch, "history": [asdict(h) for h in self.result.history],
                "embeddings": self.embeddings.summary() if self.embeddings else None}


def _experiment(spec: ModelSpec, artifact_uri: str) -> str:
    import mlflow

    experiment = mlflow.get_experiment_by_name(spec.name)
    return experiment.experiment_id if experiment else mlflow.create_experiment(spec.name, artifact_location=artifact_uri)


def train_and_log(spec: ModelSpec, frame: pd.DataFrame, layout: InputLayout, config: TrainConfig, checkpoint_dir: Path,
                  tracking_uri: str, artifact_uri: str, tags: dict[str, str], freeze_encoder: bool = True,
                  max_length: int = 64, embedding_cache: Path | None = None,
                  runtime_dir: Path | None = None) -> TrainedRun:
    """Train a declared model on its training set and log the model, its metrics and its holdout scores.

    A frozen encoder's text embeddings are reused from `embedding_cache` (the profile's `paths.embeddings`), so a
    retrain embeds only texts it has not seen; without one, every text is embedded. With `runtime_dir` (where the
    service keeps exported encoders), new texts are embedded on CPU by ONNX Runtime fp32 (training/embeddings.py).
    """
    import json

    import mlflow
    from mlflow.models import infer_signature

    device = pick_device(config.device)
    encoder = tokenizer = None
    text: Any = None
    embedded: EmbeddingStats | None = None
    if layout.text:
        encoder, tokenizer = load_encoder()
        texts = frame[layout.text].fillna("").astype(str).tolist()
        # Frozen: embed once (only texts no earlier run embedded), each epoch trains only the head.
        # Fine-tuned: token ids through the encoder, whose embeddings change each step (nothing to cache).
        if freeze_encoder:
            text, embedded = embed_cached(encoder, tokenizer, texts, embedding_cache, max_length, device=device,
                                           runtime_dir=runtime_dir)
            log.info("%s: %s", spec.name, embedded.summary())
        else:
            text = tokenize(tokenizer, texts, max_length)
    prepared = prepare(frame, layout, spec.label, spec.split_key, text)
    torch.manual_seed(config.seed)
    n_features = len(layout.names)
    model = ScoringModel(spec.module(ScoringModel.n_inputs(n_features, bool(layout.text))), n_features, encoder,
                         freeze_encoder)
    model.feature_mean.copy_(prepared.mean)
    model.feature_std.copy_(prepared.std)
    result = train(model, prepared.splits["train"], prepared.splits["validation"], config, checkpoint_dir)

    holdout = prepared.frames["holdout"]
    model.cpu().eval()
    with torch.no_grad():
        tensors = prepared.splits["holdout"].tensors
        if len(tensors) == 2:
            logits = model(tensors[0])
        elif len(tensors) == 3:
            logits = model(tensors[0], tensors[1])
        else:
            logits = model(tensors[0], input_ids=tensors[1], attention_mask=tensors[2])
        probabilities = torch.sigmoid(logits).numpy()

    mlflow.set_tracking_uri(tracking_uri)
    commit = git_commit()
    with mlflow.start_run(experiment_id=_experiment(spec, artifact_uri), tags={**tags, "git_commit": commit}) as run:
        mlflow.log_params({**asdict(config), "freeze_encoder": freeze_encoder, "max_length": max_length,
                           "encoder": "all-MiniLM-L6-v2" if layout.text else "none", "rows": len(frame),
                           "inputs": len(layout.names), "feature_service": spec.feature_service})
        if embedded is not None:
            mlflow.log_metrics(embedded.metadata())
        for h in result.history:
            mlflow.log_metrics({"train_loss": h.train_loss, "val_loss": h.val_loss,
                                "samples_per_second": h.samples_per_second}, step=h.epoch)
        saved = checkpoint_dir / "model.pt"
        kept_encoder = model.encoder
        if freeze_encoder:  # a frozen encoder is the packaged one: store only what was trained
            model.encoder = None
        torch.save(model, saved)
        model.encoder = kept_encoder
        spec_file = checkpoint_dir / "spec.json"
        spec_file.write_text(json.dumps({"model": spec.name, "layout": layout.to_json(), "max_length": max_length,
                                         "freeze_encoder": freeze_encoder}))
        scores = checkpoint_dir / HOLDOUT_ARTIFACT
        pd.DataFrame({spec.split_key: holdout[spec.split_key].astype(str), "probability": probabilities}).to_parquet(scores)
        mlflow.log_artifact(str(scores))
        # Numbers as doubles: a feature an unknown entity lacks arrives as null, which an integer column refuses.
        example = holdout.head(3)[layout.columns].astype({c: "float64" for c in (*layout.features, *layout.numeric)})
        info = mlflow.pyfunc.log_model(name="model", python_model=_pyfunc_class()(),
                                       artifacts={"model": str(saved), "spec": str(spec_file)},
                                       input_example=example, signature=infer_signature(example, probabilities[:3]))
    return TrainedRun(run.info.run_id, info.model_uri, result, commit, embedded)


def holdout_scores(tracking_uri: str, run_id: str, split_key: str) -> pd.DataFrame:
    """The holdout scores a training run logged: one row per split key with its probability."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=HOLDOUT_ARTIFACT, tracking_uri=tracking_uri)
    frame = pd.read_parquet(path)
    frame[split_key] = frame[split_key].astype(str)
    return frame


def predict(model_uri: str, frame: pd.DataFrame) -> np.ndarray:
    """Probabilities from a logged model (a version, an alias, or a run's model)."""
    import mlflow

    return np.asarray(mlflow.pyfunc.load_model(model_uri).predict(frame))


EVALUATION_ARTIFACT = "evaluation.json"


@dataclass
class EvaluatedRun:
    """A training run's holdout evaluation, and the champion's on the same rows: what the gate decides on."""

    run_id: str
    model_uri: str
    metrics: dict[str, float]
    segments: dict[str, dict[str, float]]
    champion_metrics: dict[str, float] | None
    champion_version: str | None
    reliability_markdown: str = ""

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "reliability_markdown"}


def evaluate_run(spec: ModelSpec, tracking_uri: str, run_id: str, model_uri: str, training_set: pd.DataFrame,
                 champion: tuple[str, str] | None) -> EvaluatedRun:
    """Score the holdout rows (joined to the run's logged scores by key) and the champion on the same rows.

    `champion` is (version, model URI) when the model has one. The result is logged to the run.
    """
    import json
    import tempfile

    import mlflow

    from loopwise.training.data import split_of
    from loopwise.training.evaluation import evaluate

    rows = training_set.assign(**{spec.split_key: training_set[spec.split_key].astype(str)})
    holdout = rows[rows[spec.split_key].map(split_of) == "holdout"]
    scored = holdout.merge(holdout_scores(tracking_uri, run_id, spec.split_key), on=spec.split_key, how="inner",
                           validate="one_to_one").reset_index(drop=True)
    if len(scored) != len(holdout):
        raise ValueError(f"{spec.name}: run {run_id} scored {len(scored)} of {len(holdout)} holdout rows; "
                         "was it trained on another version of the training set?")
    candidate = evaluate(spec.task, scored, scored["probability"].to_numpy(), spec.label, spec.segments, spec.segment_by)
    champion_metrics = None
    if champion is not None:
        champion_metrics = evaluate(spec.task, scored, predict(champion[1], scored), spec.label, spec.segments,
                                    spec.segment_by).metrics
    result = EvaluatedRun(run_id, model_uri, candidate.metrics, candidate.segments, champion_metrics,
                          champion[0] if champion else None, candidate.reliability_markdown())
    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / EVALUATION_ARTIFACT
        path.write_text(json.dumps(result.record()))
        client = mlflow.MlflowClient(tracking_uri)
        client.log_artifact(run_id, str(path))
        for name, value in candidate.metrics.items():
            client.log_metric(run_id, f"holdout_{name}", value)
    return result


def read_evaluation(tracking_uri: str, run_id: str) -> EvaluatedRun:
    """The evaluation logged with a training run."""
    import json

    import mlflow

    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=EVALUATION_ARTIFACT, tracking_uri=tracking_uri)
    return EvaluatedRun(**json.loads(Path(path).read_text()))
