"""One training job per declared model: train, evaluate, register. Its runs carry the training pod's
dagster-k8s tags, because the K8s run launcher reads run tags (op tags only reach step pods under
`k8s_job_executor`, which the prod profile uses as well)."""

import dagster as dg
from loopwise.usecase import ModelSpec

from assets.models import TRAINING_POD, keys
from assets.usecase import USE_CASE


def training_job(spec: ModelSpec):  # type: ignore[no-untyped-def]  # an unresolved asset job
    k = keys(spec)
    return dg.define_asset_job(
        f"train_{spec.slug}", selection=[k["trained_model"], k["model_evaluation"], k["registered_model"]],
        tags=TRAINING_POD, description=f"Train, evaluate and register {spec.name} through its gate, in a pod "
                                           "with the profile's GPU, memory and PriorityClass.")


TRAINING_JOBS = [training_job(spec) for spec in USE_CASE.models]
