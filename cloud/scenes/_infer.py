"""Camera scene inference: keyframes of a camera's source, a scene classifier from
the algorithm store, and the knowledge graph's inferred ``sees`` edges."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cloud.errors import InvalidInput, NotFound

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
MAX_FRAMES = 64


def read_keyframes(source: str, frames: int = 8, *, max_reads: int = 2000) -> list[np.ndarray]:
    """``frames`` BGR keyframes spread over ``source``: a video file (evenly over its
    length), a folder of images (evenly over the sorted names) or a stream URL (every
    10th frame from now). A source that cannot be opened or yields no frame is an
    :class:`InvalidInput` naming it."""
    import cv2

    if not 1 <= frames <= MAX_FRAMES:
        raise InvalidInput(f"frames must be in 1..{MAX_FRAMES}, got {frames}", field="frames")
    if not source:
        raise InvalidInput("the camera has no source to read keyframes from", field="source")
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        picks = [files[int(i)] for i in np.linspace(0, len(files) - 1, min(frames, len(files)))]
        out = [img for p in picks if (img := cv2.imread(str(p), cv2.IMREAD_COLOR)) is not None]
    else:
        cap = cv2.VideoCapture(source)
        try:
            if not cap.isOpened():
                raise InvalidInput(f"camera source {source!r} cannot be opened", field="source")
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            out = []
            if count > 0:  # a file: seek to evenly spaced positions
                for pos in np.linspace(0, count - 1, min(frames, count)).astype(int):
                    cap.set(cv2.CAP_PROP_POS_FRAMES, int(pos))
                    ok, img = cap.read()
                    if ok and img is not None:
                        out.append(img)
            else:  # a live stream: every 10th frame
                for i in range(max_reads):
                    ok, img = cap.read()
                    if not ok:
                        break
                    if i % 10 == 0:
                        out.append(img)
                        if len(out) == frames:
                            break
        finally:
            cap.release()
    if not out:
        raise InvalidInput(f"camera source {source!r} gave no readable frame", field="source")
    return out


def scene_classifier(predictor: Any, graph: Any) -> Any:
    """A :data:`knowledge_graph.SceneClassifier` from a classifier package whose labels
    are scene names: the mean class probability over the keyframes. Labels naming no
    scene of the graph are refused before any inference."""
    import knowledge_graph as kg

    labels = list(predictor.labels)
    unknown = [x for x in labels if not graph.has(kg.NodeType.SCENE, x)]
    if unknown:
        raise InvalidInput(
            f"{predictor.algorithm} {predictor.version} is not a scene classifier of this graph: "
            f"labels {unknown} name no scene (add them with `citybrain graph add-scene`)",
            field="classifier",
        )

    def classify(keyframes: Sequence[np.ndarray]) -> Mapping[str, float]:
        probs = np.asarray(predictor.probabilities(list(keyframes)), np.float64).mean(axis=0)
        return {label: float(np.clip(p, 0.0, 1.0)) for label, p in zip(labels, probs, strict=True)}

    return classify


class ServedClassifier:
    """A scene classifier answered by the Ray Serve deployment of a store version: the
    keyframes share the deployment's batches and replicas with every other caller
    (pre-labels, cloud cameras). Same interface as :class:`cloud.serving.Predictor`."""

    def __init__(self, handle: Any, algorithm: str, version: str, labels: list[str]) -> None:
        self.handle, self.algorithm, self.version = handle, algorithm, version
        self.labels = list(labels)

    def probabilities(self, images: Sequence[np.ndarray]) -> np.ndarray:
        from cloud.serving import predict

        preds = predict(self.handle, list(images), chunk=1)
        return np.array([[p.probs[x] for x in self.labels] for p in preds], np.float64)


def load_classifier(
    store: Any, algorithm: str, version: str | None, channel: str, *, serve: bool = False
) -> Any:
    """The verified :class:`cloud.serving.Predictor` of ``algorithm`` at ``version``,
    or at what ``channel`` points to; with ``serve``, its Ray Serve deployment instead
    (deployed, or updated in place, on the connected Ray: call
    :func:`cloud.serving.start_serving` first)."""
    from cloud.serving import Predictor, deploy_version

    if version is None:
        channels = store.channels(algorithm)
        if channel not in channels:
            raise NotFound(
                f"scene classifier {algorithm!r} has no version on channel {channel!r} "
                f"(channels: {sorted(channels) or 'none'})",
                field="classifier",
            )
        version = channels[channel]
    if serve:
        labels = list(store.version(algorithm, version).manifest.labels)
        return ServedClassifier(
            deploy_version(store, algorithm, version), algorithm, version, labels
        )
    return Predictor.from_store(store, algorithm, version)


def infer_camera_scenes(
    graph: Any,
    camera: str,
    predictor: Any,
    *,
    frames: int = 8,
    keyframes: Sequence[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Run ``predictor`` on ``camera``'s keyframes (read from its source unless given)
    and record the scores as inferred scenes in ``graph`` (not saved here). Operator,
    confirmed and rejected scenes stay as they are. Returns ``{"camera", "classifier",
    "frames", "scores", "recorded"}``."""
    import knowledge_graph as kg

    if not graph.has(kg.NodeType.CAMERA, camera):
        raise NotFound(f"unknown camera {camera!r}", field="camera")
    classify = scene_classifier(predictor, graph)
    if keyframes is None:
        source = str(graph.node(kg.NodeType.CAMERA, camera).get("source") or "")
        keyframes = read_keyframes(source, frames)
    scores = dict(classify(keyframes))
    recorded = graph.record_inferred_scenes(camera, scores)
    return {
        "camera": camera,
        "classifier": f"{predictor.algorithm}@{predictor.version}",
        "frames": len(keyframes),
        "scores": scores,
        "recorded": recorded,
    }
