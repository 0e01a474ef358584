"""Detection training from box annotations: AP/mAP on hand-made cases, box
validation, a tiny detector trained, exported (parity) and run by the edge
agent's runtime, and `citybrain train --task detect` on a catalog dataset."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from sqlalchemy import select

from cloud.catalog import Catalog
from cloud.catalog.models import Annotation, Model, ModelStatus, Task, TaskStatus
from cloud.errors import InvalidInput
from cloud.flywheel import (
    DetectConfig,
    average_precision,
    check_boxes,
    decode_rows,
    detector_parity_check,
    evaluate_detections,
    export_detector_onnx,
    plot_pr_curves,
    scratch_backbone,
    train_detector,
)
from cloud.flywheel._synthetic import DETECT_CLASSES, street_boxes

SIZE = 64
PNG = b"\x89PNG\r\n\x1a\n"


def _norm(boxes: list[np.ndarray], size: int = SIZE) -> list[np.ndarray]:
    return [np.concatenate([b[:, :4] / size, b[:, 4:]], 1) for b in boxes]


# ---------------------------------------------------------------------------
# AP and mAP on known values
# ---------------------------------------------------------------------------


def test_average_precision_known_values() -> None:
    # TP, FP, TP of 2 boxes: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    ap, rec, prec = average_precision(np.array([1, 0, 1]), 2)
    assert ap == pytest.approx(0.5 * 1.0 + 0.5 * (2 / 3))
    assert rec.tolist() == [0.5, 0.5, 1.0]
    assert prec == pytest.approx([1.0, 0.5, 2 / 3])
    assert average_precision(np.array([1, 1]), 2)[0] == pytest.approx(1.0)
    assert average_precision(np.array([1, 1]), 3)[0] == pytest.approx(2 / 3)  # a box missed
    assert average_precision(np.array([0, 0, 1]), 1)[0] == pytest.approx(1 / 3)
    assert average_precision(np.array([]), 4)[0] == 0.0
    # the envelope: a later, better precision lifts earlier recall levels
    ap, *_ = average_precision(np.array([0, 1, 1]), 2)  # p = 0, 1/2, 2/3 at r = 0, 1/2, 1
    assert ap == pytest.approx(0.5 * (2 / 3) + 0.5 * (2 / 3))
    with pytest.raises(ValueError):
        average_precision(np.array([1]), 0)


def test_evaluate_detections_hand_case() -> None:
    classes = ["car", "person", "bus"]
    truth = [
        np.array([[0.1, 0.1, 0.3, 0.3, 0], [0.5, 0.5, 0.9, 0.9, 1]]),
        np.array([[0.2, 0.2, 0.4, 0.4, 0]]),
    ]
    preds = [
        np.array(
            [
                [0.1, 0.1, 0.3, 0.3, 0.9, 0],  # car TP
                [0.1, 0.1, 0.3, 0.31, 0.8, 0],  # duplicate of the same car: FP
                [0.5, 0.5, 0.9, 0.9, 0.7, 0],  # right place, wrong class: car FP
                [0.5, 0.5, 0.72, 0.9, 0.6, 1],  # person, IoU 0.55: TP
                [0.0, 0.0, 0.1, 0.1, 0.5, 2],  # bus: no bus in the test set
            ]
        ),
        np.array([[0.25, 0.25, 0.45, 0.45, 0.95, 0]]),  # IoU 0.39 with the car: FP
    ]
    m = evaluate_detections(preds, truth, classes)
    # car, by score: FP (.95), TP (.9), FP (.8), FP (.7) of 2 boxes -> p = 1/2 at r = 1/2
    assert m.per_class["car"].ap == pytest.approx(0.25)
    assert m.per_class["car"].gt == 2 and m.per_class["car"].detections == 4
    assert m.per_class["person"].ap == pytest.approx(1.0)
    assert m.per_class["bus"].ap is None and m.per_class["bus"].detections == 1
    assert m.map50 == pytest.approx((0.25 + 1.0) / 2)  # classes without test boxes left out
    assert (m.n, m.boxes) == (2, 3)
    perfect = [t[:, [0, 1, 2, 3, 4, 4]] * [1, 1, 1, 1, 0, 1] + [0, 0, 0, 0, 1, 0] for t in truth]
    assert evaluate_detections(perfect, truth, classes).map50 == pytest.approx(1.0)
    nothing = evaluate_detections([np.zeros((0, 6))] * 2, truth, classes)
    assert nothing.map50 == 0.0


def test_pr_plot_is_a_png(tmp_path: Path) -> None:
    truth = [np.array([[0.1, 0.1, 0.3, 0.3, 0]])]
    m = evaluate_detections([np.array([[0.1, 0.1, 0.3, 0.3, 0.9, 0]])], truth, ["car", "bus"])
    out = plot_pr_curves(m, tmp_path / "pr.png")
    assert out.read_bytes().startswith(PNG)


def test_decode_rows_thresholds_and_per_class_nms() -> None:
    rows = np.array(
        [
            [
                [0.1, 0.1, 0.5, 0.5, 0.9, 0],
                [0.1, 0.1, 0.5, 0.5, 0.8, 1],  # other class: kept
                [0.11, 0.1, 0.5, 0.5, 0.7, 0],  # suppressed by the first
                [0.6, 0.6, 0.9, 0.9, 0.6, 0],
                [0, 0, 1, 1, 0.01, 0],  # under the threshold
            ]
        ],
        np.float32,
    )
    [got] = decode_rows(rows, score_threshold=0.05, nms_iou=0.5)
    assert got[:, 4].tolist() == pytest.approx([0.9, 0.8, 0.6])
    assert got[:, 5].tolist() == [0, 1, 0]


# ---------------------------------------------------------------------------
# Hostile boxes: clear errors before any compute
# ---------------------------------------------------------------------------


def test_check_boxes_hostile_inputs() -> None:
    ok = {"x1": 1, "y1": 2, "x2": 30, "y2": 40, "label": "cone"}
    [arr] = check_boxes([("s1", [ok], 64, 64)], DETECT_CLASSES)
    assert arr[0].tolist() == pytest.approx([1 / 64, 2 / 64, 30 / 64, 40 / 64, 2])
    with pytest.raises(InvalidInput, match=r"unknown classes \['tram'\]"):
        check_boxes([("s1", [ok, ok | {"label": "tram"}], 64, 64)], DETECT_CLASSES)
    with pytest.raises(InvalidInput, match="0 box labels"):
        check_boxes([("s1", [], 64, 64), ("s2", [], 64, 64)], DETECT_CLASSES)
    assert [len(a) for a in check_boxes([("s", [], 8, 8)], DETECT_CLASSES, require=False)] == [0]
    for bad in ({"x2": 1}, {"y1": 40}):  # x2 == x1, y1 == y2: zero area
        with pytest.raises(InvalidInput, match="degenerate box"):
            check_boxes([("s1", [ok | bad], 64, 64)], DETECT_CLASSES)
    with pytest.raises(InvalidInput, match="degenerate box"):
        check_boxes([("s1", [ok | {"x2": float("nan")}], 64, 64)], DETECT_CLASSES)
    for bad in ({"x1": 70, "x2": 90}, {"y2": 80}, {"x1": -5}):
        with pytest.raises(InvalidInput, match="outside the 64x64 image"):
            check_boxes([("s1", [ok | bad], 64, 64)], DETECT_CLASSES)
    with pytest.raises(InvalidInput, match="lacks numeric"):
        check_boxes([("s1", [{"label": "cone", "x1": 1}], 64, 64)], DETECT_CLASSES)
    with pytest.raises(InvalidInput, match="0 box labels"):
        train_detector(
            np.zeros((1, SIZE, SIZE, 3), np.uint8),
            [np.zeros((0, 5), np.float32)],
            DETECT_CLASSES,
            scratch_backbone(),
            DetectConfig(input_size=SIZE),
        )


def test_backbone_without_feature_map_is_refused() -> None:
    import torch

    from cloud.flywheel._backbones import TorchBackbone

    flat = TorchBackbone(torch.nn.Sequential(torch.nn.Flatten()), "flat", SIZE, 3)
    x, b = street_boxes(2, seed=0, size=SIZE)
    with pytest.raises(InvalidInput, match="convolutional backbone"):
        train_detector(x, _norm(b), DETECT_CLASSES, flat, DetectConfig(input_size=SIZE))


def test_street_boxes_ground_truth() -> None:
    x, boxes = street_boxes(20, seed=4, size=SIZE)
    x2, boxes2 = street_boxes(20, seed=4, size=SIZE)
    assert x.shape == (20, SIZE, SIZE, 3) and x.dtype == np.uint8 and np.array_equal(x, x2)
    assert all(np.array_equal(a, b) for a, b in zip(boxes, boxes2, strict=True))
    allb = np.concatenate(boxes)
    assert len(allb) >= 15 and set(allb[:, 4].astype(int)) == {0, 1, 2}
    assert (allb[:, 2] > allb[:, 0]).all() and (allb[:, 3] > allb[:, 1]).all()
    assert allb[:, :4].min() >= 0 and allb[:, :4].max() <= SIZE


# ---------------------------------------------------------------------------
# A tiny detector: trained, exported, run by the agent runtime
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> dict:
    x, b = street_boxes(24, seed=1, size=SIZE)
    seen: list[tuple[float, str]] = []
    cfg = DetectConfig(input_size=SIZE, epochs=3, score_threshold=0.05)
    det = train_detector(
        x,
        _norm(b),
        DETECT_CLASSES,
        scratch_backbone(),
        cfg,
        pretrained=False,
        progress=lambda f, m: seen.append((f, m)),
    )
    return {"det": det, "x": x, "boxes": _norm(b), "seen": seen, "cfg": cfg}


def test_training_runs_records_and_reports(tiny: dict) -> None:
    det = tiny["det"]
    assert det.mode == "scratch" and det.stride == 8 and det.input_size == SIZE
    assert [h["epoch"] for h in det.history] == [1, 2, 3]
    assert all(np.isfinite(h["loss"]) for h in det.history)
    assert det.config["epochs"] == 3 and det.config["mode"] == "scratch"
    assert [round(f, 3) for f, _ in tiny["seen"]] == [0.333, 0.667, 1.0]
    assert tiny["seen"][-1][1].startswith("epoch 3/3 loss ")
    rows = det.rows(tiny["x"][:3])
    assert rows.shape == (3, (SIZE // 8) ** 2 * 3, 6)
    assert rows[..., :5].min() >= 0 and rows[..., :5].max() <= 1
    assert set(np.unique(rows[..., 5])) == {0.0, 1.0, 2.0}
    assert (rows[..., 2] >= rows[..., 0]).all() and (rows[..., 3] >= rows[..., 1]).all()
    m = evaluate_detections(det.predict(tiny["x"]), tiny["boxes"], DETECT_CLASSES)
    assert 0.0 <= m.map50 <= 1.0 and m.boxes == sum(len(t) for t in tiny["boxes"])


def test_same_seed_same_detector(tiny: dict) -> None:
    x, b = tiny["x"][:8], tiny["boxes"][:8]
    cfg = DetectConfig(input_size=SIZE, epochs=1)
    a = train_detector(x, b, DETECT_CLASSES, scratch_backbone(), cfg, pretrained=False)
    c = train_detector(x, b, DETECT_CLASSES, scratch_backbone(), cfg, pretrained=False)
    assert np.array_equal(a.rows(x[:2]), c.rows(x[:2]))


def test_pretrained_backbone_finetuned_or_frozen(tiny: dict, tmp_path: Path) -> None:
    import torch

    from cloud.flywheel import pretrain_simclr

    x, b = tiny["x"][:8], tiny["boxes"][:8]
    pre = pretrain_simclr(x, tmp_path / "ssl.ckpt", epochs=1, batch_size=8).backbone
    before = {k: v.clone() for k, v in pre.module.state_dict().items()}

    def same_features(det) -> bool:  # type: ignore[no-untyped-def]
        got = det.module.features.state_dict()
        return all(torch.equal(got[k], before[k]) for k in got if k in before)

    ft = train_detector(x, b, DETECT_CLASSES, pre, DetectConfig(input_size=SIZE, epochs=1))
    assert ft.mode == "finetune" and ft.backbone_name == pre.name  # auto on a pretrained one
    assert not same_features(ft)
    fr = train_detector(
        x, b, DETECT_CLASSES, pre, DetectConfig(input_size=SIZE, epochs=2, mode="frozen")
    )
    assert fr.mode == "frozen" and same_features(fr) and len(fr.history) == 2
    assert all(torch.equal(v, before[k]) for k, v in pre.module.state_dict().items())


def test_onnx_parity_and_agent_runtime_decodes_boxes(tiny: dict, tmp_path: Path) -> None:
    import algorithm_store as st
    from cloud.flywheel._detect import postprocess_contract
    from cloud.flywheel._export import preprocess_contract
    from edge_agent._runtime import load_model
    from edge_agent.protocol import (
        HardwareProfile,
        Task,
        extract_package_archive,
        verify_package_dir,
    )

    det = tiny["det"]
    onnx_path = export_detector_onnx(det, tmp_path / "model.onnx")
    parity = detector_parity_check(det, onnx_path, tiny["x"][:8])
    assert parity.ok and parity.max_abs_diff <= 1e-3 and parity.samples == 8

    key = st.load_private_key(st.keygen(tmp_path / "keys"))
    built = st.build_package(
        onnx_path,
        id="street_det",
        version="1.0.0",
        task="detect",
        labels=list(DETECT_CLASSES),
        private_key=key,
        out_dir=tmp_path / "out",
        input={
            "name": "input",
            "dtype": "float32",
            "shape": ["N", 3, SIZE, SIZE],
            "preprocess": preprocess_contract(SIZE),
        },
        postprocess=postprocess_contract(tiny["cfg"]) | {"score_threshold": 0.05},
    )
    pkg = tmp_path / "pkg"
    extract_package_archive(built.archive, pkg)
    manifest = verify_package_dir(pkg, st.public_key_raw(key))
    assert manifest.task is Task.DETECT and manifest.postprocess.output == "boxes"
    model = load_model(pkg, manifest, built.sha256, HardwareProfile(target="cpu"))
    assert model.golden_check() <= 1e-3  # the golden pair the builder packed
    frame = cv2.cvtColor(tiny["x"][0], cv2.COLOR_RGB2BGR)
    res = model.run(cv2.resize(frame, (160, 120)))  # any frame size: resized by the manifest
    assert res.detections, "no boxes at threshold 0.05"
    for d in res.detections:
        assert d.label in DETECT_CLASSES and 0.05 <= d.score <= 1
        x1, y1, x2, y2 = d.box
        assert 0 <= x1 <= x2 <= 1 and 0 <= y1 <= y2 <= 1
    # the cloud's evaluation decodes exactly what the agent reports
    [want] = decode_rows(res.raw[0], score_threshold=0.05, nms_iou=manifest.postprocess.nms_iou)
    got = sorted((DETECT_CLASSES.index(d.label), round(d.score, 4)) for d in res.detections)
    assert got == sorted((int(r[5]), round(float(r[4]), 4)) for r in want[:100])


# ---------------------------------------------------------------------------
# On a catalog dataset: train -> evaluate -> gate -> export -> register
# ---------------------------------------------------------------------------


@pytest.fixture
def catalog(data_dir: Path) -> Catalog:
    cat = Catalog.open()
    yield cat
    cat.close()


def _fill_boxes(cat: Catalog, n: int, name: str = "boxes", seed: int = 3) -> list[str]:
    x, boxes = street_boxes(n, seed=seed, size=SIZE)
    cat.create_dataset(name, labels=DETECT_CLASSES)
    ids = []
    for img, bs in zip(x, boxes, strict=True):
        ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        assert ok
        sid = cat.add_image_bytes(name, buf.tobytes(), source="synthetic").id
        ids.append(sid)
        cat.annotate(
            name,
            sid,
            boxes=[
                {
                    "x1": float(b[0]),
                    "y1": float(b[1]),
                    "x2": float(b[2]),
                    "y2": float(b[3]),
                    "label": DETECT_CLASSES[int(b[4])],
                }
                for b in bs
            ],
            annotator="oracle",
        )
    return ids


FAST = DetectConfig(input_size=SIZE, epochs=2)


def _no_tasks(cat: Catalog) -> bool:
    with cat.transaction() as s:
        return s.scalars(select(Task)).all() == [] and s.scalars(select(Model)).all() == []


def test_detect_hostile_datasets_fail_before_compute(catalog: Catalog) -> None:
    from cloud.flywheel._pipeline import train_dataset

    ids = _fill_boxes(catalog, 4)

    def set_boxes(i: int, boxes: list[dict]) -> None:  # as an older import could have left them
        with catalog.transaction() as s:
            ann = s.scalars(select(Annotation).where(Annotation.sample_id == ids[i])).one()
            ann.boxes = boxes

    good = {"x1": 2.0, "y1": 2.0, "x2": 20.0, "y2": 30.0, "label": "cone"}
    set_boxes(0, [good | {"label": "tram"}])
    with pytest.raises(InvalidInput, match=r"unknown classes \['tram'\]"):
        train_dataset(catalog, "boxes", task="detect", config=FAST)
    set_boxes(0, [good | {"x2": 2.0}])
    with pytest.raises(InvalidInput, match="degenerate box"):
        train_dataset(catalog, "boxes", task="detect", config=FAST)
    set_boxes(0, [good | {"x1": 70.0, "x2": 90.0}])
    with pytest.raises(InvalidInput, match="outside the 64x64 image"):
        train_dataset(catalog, "boxes", task="detect", config=FAST)
    for i in range(4):
        set_boxes(i, [])
    with pytest.raises(InvalidInput, match="0 box labels"):
        train_dataset(catalog, "boxes", task="detect", config=FAST)
    with pytest.raises(InvalidInput, match="takes a DetectConfig"):
        from cloud.flywheel import TrainConfig

        train_dataset(catalog, "boxes", task="detect", config=TrainConfig())
    catalog.create_dataset("plain", labels=["a", "b"])
    with pytest.raises(InvalidInput, match="no box annotations"):
        train_dataset(catalog, "plain", task="detect")
    assert _no_tasks(catalog)


def test_train_detect_registers_gates_and_publishes(catalog: Catalog, tmp_path: Path) -> None:
    import algorithm_store as st
    from cloud.flywheel._pipeline import train_dataset
    from cloud.flywheel._publish import publish_model

    _fill_boxes(catalog, 30)
    seen: list[str] = []
    first = train_dataset(
        catalog, "boxes", task="detect", config=FAST, progress=lambda f, m: seen.append(m)
    )
    assert first.task == "detect" and first.version == "1.0.0" and first.gate.publish
    assert first.metrics.n >= 4 and first.metrics.boxes > 0 and 0 <= first.metrics.map50 <= 1
    assert first.parity_max_abs_diff <= 1e-3
    assert any(m.startswith("epoch 2/2") for m in seen) and seen[-1].startswith("registered")
    with catalog.transaction() as s:
        row = s.get(Model, first.model_id)
        assert row.task == "detect" and row.status == ModelStatus.CANDIDATE
        assert row.metrics["map50"] == pytest.approx(first.metrics.map50)
        assert row.params["config"]["epochs"] == 2 and row.params["mode"] == "scratch"
        assert row.params["postprocess"]["output"] == "boxes"
        assert catalog.blobs.get(row.artifacts["pr_png"]).startswith(PNG)
        task = s.get(Task, first.task_id)
        assert task.status == TaskStatus.SUCCEEDED and task.result["config"]["epochs"] == 2

    key = st.load_private_key(st.keygen(tmp_path / "keys"))
    store = st.AlgorithmStore(tmp_path / "store", private_key=key)
    publish_model(catalog, store, "boxes", "1.0.0", scenes=["street"], detects=["cone"])
    info = store.version("boxes", "1.0.0")
    assert info.manifest.task.value == "detect" and info.manifest.postprocess.output == "boxes"
    assert info.manifest.metrics["map50"] == pytest.approx(first.metrics.map50)

    # the same data and seed again: compared with the published detector by mAP, not better
    second = train_dataset(catalog, "boxes", task="detect", config=FAST)
    assert second.version == "1.1.0" and second.gate.baseline == pytest.approx(first.metrics.map50)
    assert not second.gate.publish and "map50" in second.gate.reason
    # a classifier may not take over the detector's algorithm id
    catalog.create_dataset("cls", labels=["a", "b"])
    x, _ = street_boxes(2, seed=0, size=SIZE)
    for img, label in zip(x, "ab", strict=True):
        sid = catalog.add_image_bytes("cls", cv2.imencode(".png", img)[1].tobytes()).id
        catalog.annotate("cls", sid, label=label, annotator="oracle")
    with pytest.raises(InvalidInput, match="published as a detect model"):
        train_dataset(catalog, "cls", algorithm="boxes")


def test_killed_training_registers_nothing_and_reruns(catalog: Catalog) -> None:
    from cloud.flywheel._pipeline import train_dataset

    _fill_boxes(catalog, 20)

    def kill(fraction: float, message: str) -> None:
        if message.startswith("epoch 1/"):
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        train_dataset(catalog, "boxes", task="detect", config=FAST, progress=kill)
    with catalog.transaction() as s:
        assert s.scalars(select(Model)).all() == []
        [task] = s.scalars(select(Task)).all()
        assert task.status == TaskStatus.FAILED
    again = train_dataset(catalog, "boxes", task="detect", config=FAST)
    assert again.version == "1.0.0"


def test_cli_train_task_detect(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from cloud.cli import main

    _fill_boxes(catalog, 20)

    def cli(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["citybrain", "train", *args])
        with pytest.raises(SystemExit) as ei:
            main()
        out = capsys.readouterr()
        return ei.value.code or 0, out.out, out.err

    code, out, err = cli("boxes", "--task", "detect", "--epochs", "1", "--input-size", "64")
    assert code == 0, err
    assert "boxes 1.0.0 (scratch detector): mAP@0.5 " in out and "gate: publishable" in out
    code, _, err = cli("boxes", "--task", "detect", "--mode", "head")
    assert code == 2 and "config.mode" in err
    code, _, err = cli("boxes", "--epochs", "3")
    assert code == 2 and "apply to --task detect" in err


@pytest.mark.integration
def test_train_button_path_runs_a_detect_job(tmp_path: Path, redis_url: str) -> None:
    """POST /datasets/{name}/train with task=detect (what the Train button
    sends) through a real Redis queue and the registered job handler."""
    import uuid

    from fastapi.testclient import TestClient

    from cloud.api.main import create_app
    from cloud.core.config import Settings
    from cloud.jobs import JobQueue, Worker
    from tests._api_helpers import ADMIN_TOKEN, auth

    prefix = f"cbtest:detect:{uuid.uuid4().hex[:10]}"
    settings = Settings(
        data_dir=tmp_path / "data",
        redis_url=redis_url,
        bootstrap_token=ADMIN_TOKEN,
        job_prefix=prefix,
        events_channel=f"{prefix}:events",
        job_max_attempts=1,
    )
    app = create_app(settings)
    client = TestClient(app)
    r = client.post(
        "/api/v1/tokens", json={"name": "op", "role": "operator"}, headers=auth(ADMIN_TOKEN)
    )
    op = auth(r.json()["token"])
    _fill_boxes(app.state.catalog, 16)
    worker = Worker(settings, name="detect-test", block_ms=200)
    try:
        bad = client.post(
            "/api/v1/datasets/boxes/train",
            json={"task": "detect", "config": {"mode": "head"}},  # a classify-only mode
            headers=op,
        )
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "config.mode"
        r = client.post(
            "/api/v1/datasets/boxes/train",
            json={"task": "detect", "config": {"input_size": 64, "epochs": 1}},
            headers=op,
        )
        assert r.status_code == 202, r.text
        for _ in range(50):
            if worker.process_one():
                break
        done = client.get(f"/api/v1/tasks/{r.json()['id']}", headers=op).json()
        assert done["status"] == "succeeded", done.get("error")
        assert done["result"]["task"] == "detect" and 0 <= done["result"]["map50"] <= 1
        assert done["progress"] == 1.0
        models = client.get("/api/v1/models", headers=op).json()
        assert models["total"] == 1 and models["items"][0]["task"] == "detect"
        mid = models["items"][0]["id"]
        r = client.get(f"/api/v1/models/{mid}/plots/pr.png", headers=op)
        assert r.status_code == 200 and r.content.startswith(PNG)
        r = client.get(f"/api/v1/models/{mid}/plots/confusion.png", headers=op)
        assert r.status_code == 404  # a detector has PR curves, no confusion matrix
        client.cookies.set("citybrain_token", op["Authorization"].split()[-1])
        page = client.get(f"/models/{mid}")
        assert page.status_code == 200
        assert 'id="map50"' in page.text and 'id="pr-curve"' in page.text
        assert 'id="per-class-ap"' in page.text and 'id="confusion"' not in page.text
        assert 'id="train-task"' in client.get("/datasets/boxes").text
    finally:
        JobQueue(settings).clear()
