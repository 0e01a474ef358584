"""Cloud inference: published algorithm versions served by ONNX Runtime, on
Ray Serve for batching and autoscaling.

:class:`Predictor` (numpy + ONNX Runtime, no Ray) loads a package verified
against the store's public key and applies the manifest's preprocessing and
postprocessing to whole batches. :func:`deploy_version` / :func:`deploy_channel`
put one Ray Serve deployment per ``algorithm@version`` on the connected Ray
(``@serve.batch`` dynamic batching, autoscaling from :class:`ServingConfig`)
and return its handle (requests travel by value over Serve's gRPC transport);
:func:`predict` and :func:`prelabel` call it for camera scene inference,
cameras without an edge device and annotation pre-labels, sending frames
resized to the model input and stacked per request (:func:`requests_for`), so
serialising full frames does not dominate; a full request skips the batch
queue.
:func:`app_builder` is the ``import_path`` of KubeRay ``RayService`` configs.
Cameras without an edge device run on a *cloud device*: an
:class:`edge_agent.Agent` whose ``model_loader`` is :func:`cloud_model_loader`
(each model a :class:`ServeModel` on a deployment; :func:`start_serving`
connects Ray; ``citybrain cameras run``); see ``cloud/serving/_camera.py``.
Ray is imported only inside functions.

Exception tree (all under :class:`cloud.errors.CitybrainError`)::

    ServingError
    ├── PackageUnusable     (InvalidInput) bad signature/hash, unsupported task, ORT load failure
    ├── InvalidRequest      (InvalidInput) malformed request
    │   └── BadImage        not a uint8 HxW[x1|x3] array
    ├── VersionNotFound     (NotFound) unknown algorithm, version or channel
    └── RayUnavailable      (Unavailable) Ray Serve missing
"""

from __future__ import annotations

from cloud.serving._app import AppArgs, app_builder
from cloud.serving._camera import (
    ServeModel,
    cloud_hardware,
    cloud_model_loader,
    deploy_serve_model,
    start_serving,
)
from cloud.serving._config import ServingConfig
from cloud.serving._deployment import (
    BatchCore,
    PackageSource,
    build_application,
    deploy_channel,
    deploy_version,
    deployment_name,
    predict,
    prelabel,
    requests_for,
    source_for,
    undeploy,
)
from cloud.serving._errors import (
    BadImage,
    InvalidRequest,
    PackageUnusable,
    RayUnavailable,
    ServingError,
    VersionNotFound,
)
from cloud.serving._predictor import (
    Prediction,
    Predictor,
    preprocess_batch,
    resolve_channel,
    softmax,
)

__all__ = [
    "AppArgs",
    "BadImage",
    "BatchCore",
    "InvalidRequest",
    "PackageSource",
    "PackageUnusable",
    "Prediction",
    "Predictor",
    "RayUnavailable",
    "ServeModel",
    "ServingConfig",
    "ServingError",
    "VersionNotFound",
    "app_builder",
    "build_application",
    "cloud_hardware",
    "cloud_model_loader",
    "deploy_channel",
    "deploy_serve_model",
    "deploy_version",
    "deployment_name",
    "predict",
    "prelabel",
    "preprocess_batch",
    "requests_for",
    "resolve_channel",
    "softmax",
    "source_for",
    "start_serving",
    "undeploy",
]
