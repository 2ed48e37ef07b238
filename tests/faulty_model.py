"""A deliberately broken challenger, logged with MLflow's models-from-code (`python_model=<this file>`): it wraps
a real registered version and fails as `model_config["fault"]` says. Only the rollout tests log it."""

import time

import mlflow
import numpy as np
import pandas as pd


class Faulty(mlflow.pyfunc.PythonModel):
    """`raises`: fails on the costlier half of the inputs; `slow`: 600 ms a scoring; `worse`: inverted scores;
    `same`: the wrapped model unchanged (a good challenger)."""

    def load_context(self, context) -> None:  # type: ignore[no-untyped-def]
        self.fault = context.model_config["fault"]
        self.inner = mlflow.pyfunc.load_model(context.artifacts["inner"])
        self.layout = self.inner.unwrap_python_model().layout  # what the service reads the inputs from

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:  # type: ignore[no-untyped-def]
        scores = np.asarray(self.inner.predict(model_input), dtype=float)
        if self.fault == "raises" and (model_input["amount_eur"].fillna(0) > 60).any():
            raise ValueError("challenger bug: cannot score an order over 60 EUR")
        if self.fault == "slow":
            time.sleep(0.6)
        if self.fault == "worse":
            return 1.0 - scores
        return scores


mlflow.models.set_model(Faulty())
