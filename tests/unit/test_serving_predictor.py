"""cloud.serving without Ray: the Predictor (manifest preprocessing, ORT,
softmax, labels), package verification against the store key, the batching
core, the config models and prelabel over an in-memory handle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel, ValidationError

import algorithm_store as st
from algorithm_store.testing import repack, tiny_classifier_onnx, tiny_package_kwargs
from cloud.errors import InvalidInput, NotFound
from cloud.serving import (
    AppArgs,
    BadImage,
    BatchCore,
    InvalidRequest,
    PackageSource,
    PackageUnusable,
    Prediction,
    Predictor,
    ServingConfig,
    VersionNotFound,
    deployment_name,
    predict,
    prelabel,
    preprocess_batch,
    resolve_channel,
    softmax,
    source_for,
)
from cloud.serving._deployment import is_single, requests_for

SIZE = 8
PRE = {
    "resize": [SIZE, SIZE],
    "color": "RGB",
    "scale": 1 / 255,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "layout": "NCHW",
}


def make_store(
    tmp: Path, versions: tuple[str, ...] = ("1.0.0",), *, channel: str | None = "stable", **kw: Any
) -> tuple[Any, Any]:
    """A store with a key and ``versions`` of a tiny classifier ``cls`` published
    (the last one on ``channel``). Returns (store, private key)."""
    key = st.load_private_key(st.keygen(tmp / "keys"))
    store = st.AlgorithmStore(tmp / "store", private_key=key)
    for i, v in enumerate(versions):
        model = tiny_classifier_onnx(
            tmp / f"m{i}.onnx", size=SIZE, seed=i, batch=kw.get("batch", "N")
        )
        built = st.build_package(
            model,
            id="cls",
            version=v,
            private_key=key,
            out_dir=tmp / "out",
            input={
                "name": "input",
                "dtype": "float32",
                "shape": [kw.get("batch", "N"), 3, SIZE, SIZE],
                "preprocess": kw.get("preprocess", PRE),
            },
            profile=False,
            **tiny_package_kwargs(**kw.get("package", {})),
        )
        store.publish(built.archive, channel=channel if i == len(versions) - 1 else None)
    return store, key


def frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (20 + 3 * i, 30 + i, 3), dtype=np.uint8) for i in range(n)]


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    return make_store(tmp_path_factory.mktemp("serving"), ("1.0.0", "1.1.0"))


@pytest.fixture(scope="module")
def predictor(store_dir: tuple[Any, Any]) -> Predictor:
    return Predictor.from_store(store_dir[0], "cls", "1.1.0")


def test_predictions_match_the_edge_runtime_preprocessing(predictor: Predictor) -> None:
    """Cloud and edge must see the same tensor: compare with the agent's
    per-frame preprocess + a direct ORT run + softmax."""
    from edge_agent._runtime import preprocess as edge_preprocess

    imgs = frames(5)
    sess = predictor.session
    want = np.concatenate(
        [
            softmax(sess.run(None, {"input": edge_preprocess(f, predictor.manifest.input)})[0])
            for f in imgs
        ]
    )
    got = predictor.probabilities(imgs)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    preds = predictor.predict(imgs)
    assert [p.label for p in preds] == [predictor.labels[i] for i in want.argmax(1)]
    for p, row in zip(preds, want, strict=True):
        assert p.score == pytest.approx(float(row.max()), rel=1e-5)
        assert set(p.probs) == {"car", "person", "bike"}
        assert sum(p.probs.values()) == pytest.approx(1.0, abs=1e-5)


def test_batch_equals_one_by_one_and_rgb_input_equals_bgr(predictor: Predictor) -> None:
    imgs = frames(6, seed=3)
    batch = predictor.probabilities(imgs)
    single = np.concatenate([predictor.probabilities([f]) for f in imgs])
    np.testing.assert_allclose(batch, single, rtol=1e-5, atol=1e-6)
    rgb = [np.ascontiguousarray(f[:, :, ::-1]) for f in imgs]
    np.testing.assert_allclose(predictor.probabilities(rgb, color_order="RGB"), batch, atol=1e-6)
    # grey frames are accepted and broadcast to 3 channels
    grey = [f[:, :, 0] for f in imgs[:2]]
    assert len(predictor.predict(grey)) == 2
    assert predictor.predict([]) == []


def test_preprocess_follows_the_manifest(predictor: Predictor) -> None:
    m = predictor.manifest
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    img[..., 0] = 255  # blue in BGR
    x = preprocess_batch([img], m)
    assert x.shape == (1, 3, SIZE, SIZE) and x.dtype == np.float32
    # channel 2 of the RGB tensor is blue = 1.0 normalised with the blue mean/std
    assert x[0, 2, 0, 0] == pytest.approx((1.0 - 0.406) / 0.225, rel=1e-5)
    assert x[0, 0, 0, 0] == pytest.approx((0.0 - 0.485) / 0.229, rel=1e-5)
    nhwc = m.model_copy(
        update={
            "input": m.input.model_copy(
                update={
                    "preprocess": m.input.preprocess.model_copy(
                        update={"layout": "NHWC", "color": "BGR"}
                    )
                }
            )
        }
    )
    y = preprocess_batch([img], nhwc)
    assert y.shape == (1, SIZE, SIZE, 3)
    assert y[0, 0, 0, 0] == pytest.approx((1.0 - 0.485) / 0.229, rel=1e-5)


@pytest.mark.parametrize(
    ("image", "needle"),
    [
        (np.zeros((8, 8, 3), np.float32), "dtype must be uint8"),
        (np.zeros((8, 8, 4), np.uint8), "shape must be"),
        (np.zeros((0, 8, 3), np.uint8), "shape must be"),
        (np.zeros((2, 8, 8, 3), np.uint8), "shape must be"),
        ([[1, 2], [3, 4]], "expected a numpy array"),
    ],
)
def test_bad_images_are_refused_naming_the_image(
    predictor: Predictor, image: Any, needle: str
) -> None:
    ok = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(BadImage, match=f"image 1: .*{needle}") as e:
        predictor.predict([ok, image])
    assert isinstance(e.value, InvalidInput) and e.value.field == "images"


def test_tampered_or_foreign_packages_are_refused(
    tmp_path: Path, store_dir: tuple[Any, Any]
) -> None:
    store, key = store_dir
    info = store.version("cls", "1.0.0")
    archive, _ = store.published_artifact(info.sha256)
    public = store.public_key

    # model bytes changed, manifest not re-signed -> hash mismatch
    def flip(d: Path) -> None:
        p = d / "model.onnx"
        b = bytearray(p.read_bytes())
        b[-1] ^= 0xFF
        p.write_bytes(bytes(b))

    bad = repack(archive, tmp_path / "bad.tar", flip)
    with pytest.raises(PackageUnusable, match="sha256|hash|model.onnx"):
        Predictor.from_archive(bad, public)
    # re-signed by another key -> signature refused under the store key
    other = st.load_private_key(st.keygen(tmp_path / "other"))
    foreign = repack(archive, tmp_path / "foreign.tar", resign_key=other, rehash=True)
    with pytest.raises(PackageUnusable, match="pinned key"):
        Predictor.from_archive(foreign, public)
    # the archive is not the one the index names
    with pytest.raises(PackageUnusable, match="sha256"):
        Predictor.from_archive(archive, public, expected_sha256="0" * 64)
    # not a tar at all
    with pytest.raises(PackageUnusable, match="archive"):
        Predictor.from_archive(b"not a tar" * 100, public)


def test_unsupported_and_static_batch_packages(tmp_path: Path) -> None:
    # a graph with a fixed batch of 1 is run in chunks
    store, _ = make_store(tmp_path / "static", batch=1)
    p = Predictor.from_store(store, "cls", "1.0.0")
    assert p.max_graph_batch == 1
    imgs = frames(3)
    np.testing.assert_allclose(
        p.probabilities(imgs), np.concatenate([p.probabilities([f]) for f in imgs]), atol=1e-6
    )
    # detection packages are not served (yet): said clearly
    store2, _ = make_store(tmp_path / "det", package={"task": "detect", "event_rules": []})
    with pytest.raises(PackageUnusable, match="task 'detect'"):
        Predictor.from_store(store2, "cls", "1.0.0")


def test_a_manifest_that_does_not_fit_its_model_is_refused(
    tmp_path: Path, store_dir: tuple[Any, Any]
) -> None:
    from edge_agent.protocol import verify_package_dir

    store, _ = store_dir
    info = store.version("cls", "1.0.0")
    archive, _ = store.published_artifact(info.sha256)
    Predictor.from_archive(archive, store.public_key, tmp_path / "pkg")
    manifest = verify_package_dir(tmp_path / "pkg", store.public_key)
    pre = manifest.input.preprocess.model_copy(update={"resize": (16, 16)})
    bad = manifest.model_copy(
        update={"input": manifest.input.model_copy(update={"preprocess": pre})}
    )
    # the tiny model pools globally, so its graph input has fixed 8x8 spatial dims
    with pytest.raises(PackageUnusable, match=r"resize \[16, 16\].*does not fit") as e:
        Predictor(tmp_path / "pkg", bad)
    assert e.value.field == "input.preprocess.resize"
    renamed = manifest.model_copy(
        update={"input": manifest.input.model_copy(update={"name": "pixels"})}
    )
    with pytest.raises(PackageUnusable, match="input 'pixels' not in model inputs"):
        Predictor(tmp_path / "pkg", renamed)


def test_unknown_versions_and_channels(store_dir: tuple[Any, Any]) -> None:
    store, _ = store_dir
    with pytest.raises(VersionNotFound, match="9.9.9") as e:
        Predictor.from_store(store, "cls", "9.9.9")
    assert isinstance(e.value, NotFound)
    with pytest.raises(VersionNotFound, match="nope"):
        source_for(store, "nope", "1.0.0")
    assert resolve_channel(store, "cls", "stable") == "1.1.0"
    with pytest.raises(VersionNotFound, match="no channel 'beta'") as e2:
        resolve_channel(store, "cls", "beta")
    assert e2.value.field == "channel"
    with pytest.raises(VersionNotFound):
        resolve_channel(store, "nope", "stable")
    keyless = st.AlgorithmStore(store.root)
    with pytest.raises(PackageUnusable, match="public key"):
        Predictor.from_store(keyless, "cls", "1.0.0")


def test_package_source_reads_the_store_and_checks_the_hash(
    tmp_path: Path, store_dir: tuple[Any, Any]
) -> None:
    store, _ = store_dir
    src = source_for(store, "cls", "1.0.0")
    assert src.store_dir == str(Path(store.root).resolve()) and src.artifact_url is None
    p = src.load(ServingConfig())
    assert (p.algorithm, p.version) == ("cls", "1.0.0")
    wrong = src.model_copy(update={"sha256": store.version("cls", "1.1.0").sha256})
    assert wrong.load(ServingConfig()).version == "1.1.0"  # another published archive: fine...
    with pytest.raises(PackageUnusable, match="not published"):
        src.model_copy(update={"sha256": "a" * 64}).fetch()
    with pytest.raises(PackageUnusable, match="store_dir or artifact_url"):
        src.model_copy(update={"store_dir": None}).fetch()
    with pytest.raises(ValidationError, match="sha256"):
        PackageSource(algorithm="a", version="1", sha256="xyz", public_key_hex="0" * 64)
    assert deployment_name("cls", "1.0.0+b/1") == "cls_1.0.0_b_1"


def test_serving_config_validates_and_maps_to_ray_options() -> None:
    cfg = ServingConfig(
        max_batch_size=8, min_replicas=1, max_replicas=4, target_ongoing_requests=16
    )
    opts = cfg.deployment_options()
    assert opts["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 16,
    }
    assert opts["max_ongoing_requests"] == 32
    assert opts["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.0}
    with pytest.raises(ValidationError, match="min_replicas"):
        ServingConfig(min_replicas=3, max_replicas=2)
    with pytest.raises(ValidationError, match="batches could never fill"):
        ServingConfig(max_batch_size=16, max_ongoing_requests=8)
    with pytest.raises(ValidationError, match="initial_replicas"):
        ServingConfig(min_replicas=1, max_replicas=2, initial_replicas=5)
    with pytest.raises(ValidationError):
        ServingConfig(max_batch_size=0)
    with pytest.raises(ValidationError):
        ServingConfig(color_order="BRG")
    with pytest.raises(ValidationError, match="extra"):
        ServingConfig(max_batch=3)  # type: ignore[call-arg]
    for model in (ServingConfig, AppArgs, PackageSource, Prediction):
        assert issubclass(model, BaseModel)
        missing = [n for n, f in model.model_fields.items() if not f.description]
        assert not missing, f"{model.__name__} fields without description: {missing}"


def test_app_args_need_exactly_one_selector() -> None:
    AppArgs(algorithm="cls", version="1.0.0")
    AppArgs(algorithm="cls", channel="stable", serving={"max_batch_size": 4})
    for bad in ({"algorithm": "cls"}, {"algorithm": "cls", "version": "1", "channel": "s"}):
        with pytest.raises(ValidationError, match="exactly one"):
            AppArgs.model_validate(bad)


def test_app_builder_resolves_the_channel_from_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("ray.serve")
    from cloud.serving import app_builder

    data = tmp_path / "data"
    store, _ = make_store(data / "store_src", ("2.0.0",))
    # the layout Settings expects: <data_dir>/store with key pair at <data_dir>/store/key(.pub)
    monkeypatch.setenv("CITYBRAIN_DATA_DIR", str(data))
    monkeypatch.setenv("CITYBRAIN_STORE_KEY_FILE", str(data / "store_src" / "keys" / "key"))
    app = app_builder({"algorithm": "cls", "channel": "stable", "store_dir": str(store.root)})
    assert type(app).__name__ == "Application"
    with pytest.raises(VersionNotFound):
        app_builder({"algorithm": "cls", "channel": "beta", "store_dir": str(store.root)})


class _FakeResponse:
    def __init__(self, fn: Any, *a: Any) -> None:
        self._fn, self._a = fn, a

    def result(self) -> Any:
        return self._fn(*self._a)


class _FakeMethod:
    def __init__(self, fn: Any) -> None:
        self._fn = fn

    def remote(self, *a: Any) -> _FakeResponse:
        return _FakeResponse(self._fn, *a)


class _FakeHandle:
    """In-memory stand-in for a DeploymentHandle: each request is validated and
    run as its own batch by BatchCore (Ray Serve would group several)."""

    def __init__(self, core: BatchCore) -> None:
        self.core = core
        self.info = _FakeMethod(core.info)

    def remote(self, request: Any) -> _FakeResponse:
        images = self.core.check(request)
        single = is_single(request)
        return _FakeResponse(
            lambda: (lambda out: out[0] if single else out)(self.core.run_batch([images])[0])
        )


def test_batch_core_flattens_requests_and_splits_predictions(predictor: Predictor) -> None:
    core = BatchCore(predictor, ServingConfig(max_batch_size=4))
    imgs = frames(7, seed=9)
    want = predictor.predict(imgs)
    requests = [imgs[0:1], imgs[1:4], imgs[4:6], imgs[6:7]]
    out = core.run_batch(requests)
    assert [len(r) for r in out] == [1, 3, 2, 1]
    assert [p for r in out for p in r] == want
    assert core.info()["batch_sizes"] == {7: 1}
    assert core.check(imgs[0])[0] is imgs[0]
    assert len(core.check(imgs[:4])) == 4
    with pytest.raises(InvalidRequest, match="5 images in one request; at most max_batch_size=4"):
        core.check(imgs[:5])
    with pytest.raises(InvalidRequest, match="non-empty list"):
        core.check([])
    with pytest.raises(InvalidRequest, match="non-empty list"):
        core.check("frame.jpg")
    with pytest.raises(BadImage, match="image 1: dtype"):
        core.check([imgs[0], np.zeros((4, 4), np.int16)])
    # HTTP bodies (RayService through the Serve proxy) are decoded to BGR
    import cv2

    ok, png = cv2.imencode(".png", imgs[2])
    assert ok
    np.testing.assert_array_equal(core.decode(png.tobytes()), imgs[2])
    for body in (b"", b"GIF89a not really"):
        with pytest.raises(BadImage, match="not a decodable image"):
            core.decode(body)


def test_predict_and_prelabel_through_a_handle(predictor: Predictor) -> None:
    core = BatchCore(predictor, ServingConfig(max_batch_size=4))
    imgs = frames(5, seed=9)
    want = predictor.predict(imgs)
    handle = _FakeHandle(core)
    assert predict(handle, imgs) == want
    assert predict(handle, imgs, chunk=3) == want
    with pytest.raises(InvalidRequest, match="chunk"):
        predict(handle, imgs, chunk=0)
    items = prelabel(handle, imgs, sample_ids=[10, 11, 12, 13, 14])
    assert [i["sample_id"] for i in items] == [10, 11, 12, 13, 14]
    assert {i["model_version"] for i in items} == {"cls@1.1.0"}
    assert [i["label"] for i in items] == [p.label for p in want]
    assert all(0 <= i["score"] <= 1 for i in items)
    with pytest.raises(InvalidRequest, match="2 sample ids for 5 images"):
        prelabel(handle, imgs, sample_ids=[1, 2])
    assert core.info()["algorithm"] == "cls" and core.info()["max_batch_size"] == 4


def test_requests_carry_frames_resized_and_stacked(predictor: Predictor) -> None:
    """What predict() sends: frames shrunk to the model input exactly as the
    replica would shrink them, a chunk as one stacked uint8 array."""
    core = BatchCore(predictor, ServingConfig(max_batch_size=4))
    imgs = frames(5, seed=4)
    reqs = requests_for(imgs, 3, [SIZE, SIZE])
    assert [r.shape for r in reqs] == [(3, SIZE, SIZE, 3), (2, SIZE, SIZE, 3)]
    assert all(r.dtype == np.uint8 for r in reqs)
    got = [p for r in reqs for p in core.run_batch([core.check(r)])[0]]
    assert got == predictor.predict(imgs)  # identical: the same resize, done earlier
    assert [r.shape for r in requests_for(imgs[:2], 1, [SIZE, SIZE])] == [(SIZE, SIZE, 3)] * 2
    # without the input size, frames of different shapes go as a list, untouched
    raw = requests_for(imgs, 3)
    assert isinstance(raw[0], list) and raw[0][0] is imgs[0]
    # grey frames keep a channel axis; anything invalid is left for the replica to refuse
    grey = np.zeros((30, 40), np.uint8)
    assert requests_for([grey], 1, [SIZE, SIZE])[0].shape == (SIZE, SIZE, 1)
    bad = np.zeros((30, 40, 3), np.float64)
    mixed = requests_for([imgs[0], bad], 2, [SIZE, SIZE])[0]
    assert isinstance(mixed, list) and mixed[1] is bad
    with pytest.raises(BadImage, match="image 1: dtype"):
        core.check(mixed)
    with pytest.raises(InvalidRequest, match="chunk"):
        requests_for(imgs, 0)


def test_a_stacked_request_is_checked_as_a_whole(predictor: Predictor) -> None:
    core = BatchCore(predictor, ServingConfig(max_batch_size=4))
    stack = np.stack([f[:20, :30] for f in frames(4, seed=2)])
    assert len(core.check(stack)) == 4 and not is_single(stack) and is_single(stack[0])
    with pytest.raises(BadImage, match="dtype must be uint8"):
        core.check(stack.astype(np.float32))
    with pytest.raises(InvalidRequest, match="5 images in one request"):
        core.check(np.concatenate([stack, stack[:1]]))
    with pytest.raises(BadImage, match="shape must be"):
        core.check(np.zeros((2, 5, 5, 4), np.uint8))
