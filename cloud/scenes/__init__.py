"""Camera scene context from pixels: a scene classifier published in the algorithm
store (a classify package whose labels are scene names) runs on keyframes of a
camera's source, and its mean probabilities become *inferred* ``sees`` edges of the
knowledge graph with their confidence. Operators confirm or override them
(``citybrain graph confirm-scene`` / ``reject-scene``, the console's graph view);
confirmed, rejected and operator scenes are never changed by inference.

``citybrain graph infer-scenes`` and ``POST /api/v1/graph/cameras/{c}/scenes/infer``
use :func:`infer_camera_scenes`; the classifier runs in-process (a verified
:class:`cloud.serving.Predictor`) or, with ``--serve``, on its Ray Serve deployment
(:class:`ServedClassifier`), sharing batches with the other cloud inference. Errors are the cloud tree's ``InvalidInput`` (source
cannot be opened, no frame, labels that name no scene) and ``NotFound`` (camera,
classifier or channel).
"""

from __future__ import annotations

from cloud.scenes._infer import (
    ServedClassifier,
    infer_camera_scenes,
    load_classifier,
    read_keyframes,
    scene_classifier,
)

__all__ = [
    "ServedClassifier",
    "infer_camera_scenes",
    "load_classifier",
    "read_keyframes",
    "scene_classifier",
]
