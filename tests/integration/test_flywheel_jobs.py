"""Pretraining and training run as jobs by a real `citybrain worker` process
(the console's Pretrain / Train buttons submit exactly these tasks)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest
from sqlalchemy import select

from cloud.catalog import Catalog
from cloud.catalog.models import Model, TaskKind, TaskStatus
from cloud.flywheel._synthetic import CLASSES, street_scenes
from tests.integration.test_jobs_worker import Env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def env(tmp_path: Path, redis_url: str) -> Iterator[Env]:
    e = Env(tmp_path, redis_url)
    yield e
    e.close()


def test_pretrain_then_train_jobs(env: Env) -> None:
    x, y = street_scenes(40, seed=9)
    with Catalog.open(env.settings) as cat:
        ds = cat.create_dataset("street", labels=CLASSES)
        for img, c in zip(x, y, strict=True):
            ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            sid = cat.add_image_bytes("street", buf.tobytes(), source="synthetic").id
            cat.annotate("street", sid, label=CLASSES[c], annotator="oracle")
    pre = env.queue.submit(
        TaskKind.PRETRAINING, {"dataset": "street", "epochs": 1}, dataset_id=ds.id
    ).id
    env.worker("w1")
    t = env.finished(pre, timeout=240)
    assert t.status == TaskStatus.SUCCEEDED, t.error
    assert t.result["samples"] == 40 and t.result["epochs"] == 1

    train = env.queue.submit(
        TaskKind.TRAINING, {"dataset": "street", "algorithm": "street_objects"}, dataset_id=ds.id
    ).id
    t = env.finished(train, timeout=240)
    assert t.status == TaskStatus.SUCCEEDED, t.error
    assert t.result["version"] == "1.0.0" and 0 <= t.result["accuracy"] <= 1

    bad = env.queue.submit(TaskKind.TRAINING, {"dataset": "nope"}).id
    t = env.finished(bad, timeout=60)
    assert t.status == TaskStatus.FAILED and "nope" in t.error  # NotFound: no retries

    with Catalog.open(env.settings) as cat, cat.transaction() as s:
        m = s.scalar(select(Model).where(Model.algorithm == "street_objects"))
        assert m is not None and m.task_id == train and m.artifacts["onnx"]
