"""The shared predictor: a verified classifier package + ONNX Runtime, with the
manifest's preprocessing and postprocessing done in numpy on whole batches.

It needs no Ray: Ray Serve replicas, the benchmark's bare loop and any worker
use the same object, so what is served is exactly what is measured.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cloud.serving._errors import BadImage, PackageUnusable, VersionNotFound
from edge_agent.protocol import (
    Manifest,
    PackageInvalid,
    extract_package_archive,
    verify_package_dir,
)

ColorOrder = Literal["BGR", "RGB"]


class Prediction(BaseModel):
    """One image's classification."""

    model_config = ConfigDict(frozen=True)

    label: str = Field(description="most probable label")
    score: float = Field(ge=0, le=1, description="its probability")
    probs: dict[str, float] = Field(description="label -> probability, every label")


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax of a [N, C] array (numerically stable)."""
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _check_image(i: int, img: Any) -> np.ndarray:
    if not isinstance(img, np.ndarray):
        raise BadImage(
            f"image {i}: expected a numpy array, got {type(img).__name__}", field="images"
        )
    if img.dtype != np.uint8:
        raise BadImage(f"image {i}: dtype must be uint8, got {img.dtype}", field="images")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3) or img.shape[0] < 1 or img.shape[1] < 1:
        raise BadImage(
            f"image {i}: shape must be HxW, HxWx1 or HxWx3, got {tuple(img.shape)}", field="images"
        )
    return img


def resize_to(img: np.ndarray, hw: Sequence[int]) -> np.ndarray:
    """``img`` (HxWxC, C in 1 or 3) resized to ``hw`` the way the preprocessing
    does it (bilinear), keeping the channel axis; unchanged when already there.
    Callers may apply it before sending frames to a deployment: the result is
    the same and what crosses the process boundary is the model's input size."""
    import cv2

    h, w = int(hw[0]), int(hw[1])
    if img.shape[:2] == (h, w):
        return img
    out = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    return out[:, :, None] if out.ndim == 2 else out


def preprocess_batch(
    images: Sequence[np.ndarray], manifest: Manifest, *, color_order: ColorOrder = "BGR"
) -> np.ndarray:
    """uint8 images (HxWx3 in ``color_order``, or grey HxW) -> one input tensor
    following ``manifest.input`` (resize, colour, scale, mean/std, layout, dtype)."""
    import cv2

    spec = manifest.input
    pp = spec.preprocess
    h, w = pp.resize
    channels = 1 if pp.color == "GRAY" else 3
    out = np.empty((len(images), h, w, channels), dtype=np.uint8)
    for i, raw in enumerate(images):
        img = resize_to(_check_image(i, raw), (h, w))
        if img.shape[2] == 1:
            out[i] = img if channels == 1 else np.repeat(img, 3, axis=2)
            continue
        if pp.color == "GRAY":
            code = cv2.COLOR_BGR2GRAY if color_order == "BGR" else cv2.COLOR_RGB2GRAY
            out[i] = cv2.cvtColor(img, code)[:, :, None]
        elif pp.color == color_order:
            out[i] = img
        else:
            out[i] = img[:, :, ::-1]
    if spec.dtype == "uint8":
        x: np.ndarray = out
    else:
        x = out.astype(np.float32)
        x *= np.float32(pp.scale)
        mean = np.asarray(pp.mean[:channels], dtype=np.float32)
        std = np.asarray(pp.std[:channels], dtype=np.float32)
        x -= mean
        x /= std
    if pp.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=spec.dtype)


class Predictor:
    """A verified classifier package loaded into ONNX Runtime.

    Build it with :meth:`from_package_dir` (an unpacked, verified package),
    :meth:`from_archive` (archive bytes or path, verified against the store's
    public key) or :meth:`from_store`.
    """

    def __init__(
        self,
        root: Path,
        manifest: Manifest,
        *,
        intra_op_threads: int = 1,
        providers: Sequence[str] | None = None,
    ) -> None:
        import onnxruntime as ort

        task = str(getattr(manifest.task, "value", manifest.task))
        if task != "classify":
            raise PackageUnusable(
                f"{manifest.id} {manifest.version}: task {task!r} is not served yet (only classify)",
                field="task",
            )
        if manifest.postprocess.output not in ("logits", "probabilities"):
            raise PackageUnusable(
                f"{manifest.id} {manifest.version}: postprocess.output "
                f"{manifest.postprocess.output!r} is not a classifier output",
                field="postprocess.output",
            )
        self.root = Path(root)
        self.manifest = manifest
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, intra_op_threads)
        opts.inter_op_num_threads = 1
        avail = ort.get_available_providers()
        chosen = [p for p in (providers or ["CPUExecutionProvider"]) if p in avail]
        try:
            self.session = ort.InferenceSession(
                str(self.root / manifest.model), opts, providers=chosen or ["CPUExecutionProvider"]
            )
        except Exception as e:  # ORT raises its own untyped errors
            raise PackageUnusable(
                f"{manifest.id} {manifest.version}: ONNX Runtime cannot load {manifest.model}: {e}",
                field="model",
            ) from None
        names = [i.name for i in self.session.get_inputs()]
        if manifest.input.name not in names:
            raise PackageUnusable(
                f"{manifest.id} {manifest.version}: input {manifest.input.name!r} not in model "
                f"inputs {names}",
                field="input.name",
            )
        graph_shape = next(
            i.shape for i in self.session.get_inputs() if i.name == manifest.input.name
        )
        pp = manifest.input.preprocess
        hw = graph_shape[2:4] if pp.layout == "NCHW" else graph_shape[1:3]
        if len(graph_shape) != 4 or any(
            isinstance(g, int) and g != want for g, want in zip(hw, pp.resize, strict=False)
        ):
            raise PackageUnusable(
                f"{manifest.id} {manifest.version}: preprocess resize {list(pp.resize)} "
                f"({pp.layout}) does not fit the model input {graph_shape}",
                field="input.preprocess.resize",
            )
        first = manifest.input.shape[0] if manifest.input.shape else "N"
        #: largest batch the graph accepts (a fixed leading dim, e.g. 1, caps it)
        self.max_graph_batch: int | None = first if isinstance(first, int) and first > 0 else None
        self.labels = list(manifest.labels)

    # -- construction ------------------------------------------------------

    @classmethod
    def from_package_dir(cls, root: Path | str, public_key: bytes, **kw: Any) -> Predictor:
        """Verify an unpacked package (signature, hashes, no extra file) and load it."""
        try:
            manifest = verify_package_dir(Path(root), public_key)
        except PackageInvalid as e:
            raise PackageUnusable(f"package refused: {e}", field="package") from None
        return cls(Path(root), manifest, **kw)

    @classmethod
    def from_archive(
        cls,
        archive: bytes | Path | str,
        public_key: bytes,
        dest: Path | str | None = None,
        *,
        expected_sha256: str | None = None,
        **kw: Any,
    ) -> Predictor:
        """Check the archive's sha256 when given, unpack it into ``dest`` (a
        temporary folder, removed once the model is loaded, by default), verify
        it against ``public_key`` and load it."""
        data = archive if isinstance(archive, bytes) else Path(archive).read_bytes()
        if expected_sha256 is not None:
            got = hashlib.sha256(data).hexdigest()
            if got != expected_sha256:
                raise PackageUnusable(
                    f"archive sha256 {got} != expected {expected_sha256}", field="sha256"
                )
        if dest is not None:
            return cls._load_into(data, Path(dest), public_key, **kw)
        # ONNX Runtime holds the model in memory once loaded: the unpacked copy can go
        with tempfile.TemporaryDirectory(prefix="cb-serve-") as tmp:
            return cls._load_into(data, Path(tmp) / "pkg", public_key, **kw)

    @classmethod
    def _load_into(cls, data: bytes, root: Path, public_key: bytes, **kw: Any) -> Predictor:
        try:
            extract_package_archive(data, root)
        except PackageInvalid as e:
            raise PackageUnusable(f"package archive: {e}", field="package") from None
        return cls.from_package_dir(root, public_key, **kw)

    @classmethod
    def from_store(
        cls, store: Any, algorithm: str, version: str, dest: Path | str | None = None, **kw: Any
    ) -> Predictor:
        """Load ``algorithm@version`` from an :class:`algorithm_store.AlgorithmStore`,
        verified against the store's public key."""
        data, sha, public_key = read_published(store, algorithm, version)
        return cls.from_archive(data, public_key, dest, expected_sha256=sha, **kw)

    # -- inference ---------------------------------------------------------

    @property
    def algorithm(self) -> str:
        return self.manifest.id

    @property
    def version(self) -> str:
        return self.manifest.version

    def run(self, x: np.ndarray) -> np.ndarray:
        """Raw model output [N, C] for an already preprocessed batch."""
        cap = self.max_graph_batch or len(x)
        try:
            parts = [
                self.session.run(None, {self.manifest.input.name: x[i : i + cap]})[0]
                for i in range(0, len(x), cap)
            ]
        except Exception as e:  # ORT's own error types
            raise PackageUnusable(
                f"{self.algorithm} {self.version}: ONNX Runtime failed on input "
                f"{list(x.shape)}: {e}",
                field="model",
            ) from None
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def probabilities(
        self, images: Sequence[np.ndarray], *, color_order: ColorOrder = "BGR"
    ) -> np.ndarray:
        """[N, C] class probabilities for ``images``."""
        if len(images) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        out = self.run(preprocess_batch(images, self.manifest, color_order=color_order))
        out = out.reshape(len(images), -1).astype(np.float32)
        if out.shape[1] != len(self.labels):
            raise PackageUnusable(
                f"{self.algorithm} {self.version}: model returns {out.shape[1]} classes but the "
                f"manifest lists {len(self.labels)} labels",
                field="labels",
            )
        if self.manifest.postprocess.output == "logits":
            return softmax(out)
        return np.clip(out, 0.0, 1.0)

    def predict(
        self, images: Sequence[np.ndarray], *, color_order: ColorOrder = "BGR"
    ) -> list[Prediction]:
        """Classify ``images`` (uint8 frames, BGR as read by OpenCV unless
        ``color_order="RGB"``) in one batch."""
        probs = self.probabilities(images, color_order=color_order)
        out: list[Prediction] = []
        for row in probs:
            k = int(row.argmax())
            out.append(
                Prediction(
                    label=self.labels[k],
                    score=float(row[k]),
                    probs={lab: float(p) for lab, p in zip(self.labels, row, strict=True)},
                )
            )
        return out


def read_published(store: Any, algorithm: str, version: str) -> tuple[bytes, str, bytes]:
    """(archive bytes, sha256, store public key) of a published version."""
    sha, public_key = read_published_info(store, algorithm, version)
    path, _size = store.published_artifact(sha)
    return path.read_bytes(), sha, public_key


def read_published_info(store: Any, algorithm: str, version: str) -> tuple[str, bytes]:
    """(archive sha256, store public key) of a published version; checks the
    artifact is present in the store."""
    import algorithm_store as st

    if store.public_key is None:
        raise PackageUnusable(
            "the store has no public key to verify packages with", field="public_key"
        )
    try:
        info = store.version(algorithm, version)
        store.published_artifact(info.sha256)
    except st.NotFound as e:
        raise VersionNotFound(str(e), field=getattr(e, "field", None) or "version") from None
    return info.sha256, store.public_key


def resolve_channel(store: Any, algorithm: str, channel: str) -> str:
    """The version ``channel`` of ``algorithm`` points at."""
    import algorithm_store as st

    try:
        channels = store.channels(algorithm)
        store.versions(algorithm)  # NotFound for an unknown algorithm
    except st.NotFound as e:
        raise VersionNotFound(str(e), field="algorithm") from None
    if channel not in channels:
        raise VersionNotFound(
            f"{algorithm} has no channel {channel!r} (channels: {sorted(channels) or 'none'})",
            field="channel",
        )
    return channels[channel]
