"""``citybrain demo``: the whole loop on one machine, narrated stage by stage.

Stages (each timed; finished ones recorded in ``<data_dir>/demo/state.json`` and
skipped on a restart, so nothing is duplicated):

a city · b import · c pretrain · d label (oracle) · e train v1 + publish ·
f schedule · g agents on v1 · h hard samples ingested · i mine + label (oracle) ·
j train v2 + gate + publish · k agents hot-swap to v2.

The ORACLE stands in for human annotators: it knows the generator's ground
truth of the synthetic street scenes and labels through the catalog with
``AnnotationSource.ORACLE`` (never HUMAN). Frames of the real footage have no
ground truth: the oracle skips them and says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cloud.demo._errors import DemoError
from cloud.demo._infra import (
    Services,
    check_data_dir,
    check_port_free,
    ensure_mosquitto,
    ensure_redis,
    port_answers,
)

REPO = Path(__file__).resolve().parents[2]
ALGORITHM = "cone-watch"
DATASET = "demo-street"
EVENT = "cone_on_road"
ORACLE = "oracle"
STAGES = ("city", "import", "pretrain", "label", "train_v1", "schedule", "agents_v1",
          "hard_samples", "mine", "train_v2", "hot_swap")  # fmt: skip


@dataclass(frozen=True)
class DemoSize:
    pool: int  # synthetic images in the unlabeled pool
    field_per_camera: int  # ground-truth images each synthetic camera plays
    pretrain_epochs: int
    seed_labels: int  # first batch the oracle labels
    test_labels: int  # random samples the oracle labels for the frozen test split
    budget: int  # mining budget of round 2
    hard_target: int  # hard samples to wait for
    holdout: int  # ground-truth images for round 1 vs round 2 accuracy
    video_every_s: float


SIZES: dict[str, DemoSize] = {
    "small": DemoSize(240, 30, 3, 16, 48, 64, 24, 400, 1.0),
    "default": DemoSize(800, 60, 5, 32, 64, 128, 60, 1000, 0.5),
}


def footage() -> list[Path]:
    """The real footage: the committed excerpt, and the full clip when present."""
    out = [REPO / "tests" / "data" / "vtest_excerpt.avi"]
    full = REPO.parent / "shared" / "data" / "vtest.avi"
    out.append(full if full.is_file() else out[0])
    missing = [p for p in out if not p.is_file()]
    if missing:
        raise DemoError(
            f"{missing[0]}: footage missing (tests/data/vtest_excerpt.avi ships with the repo)"
        )
    return out


# ---------------------------------------------------------------------------
# narration
# ---------------------------------------------------------------------------


class Narrator:
    def __init__(self, headless: bool) -> None:
        self.headless = headless
        self.t0 = time.monotonic()
        self.console: Any = None
        if not headless:
            from rich.console import Console

            self.console = Console(soft_wrap=True)  # piped output: one line per message
        self.timings: dict[str, float] = {}

    def say(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.t0:7.1f}s] {msg}"
        if self.console is not None:
            self.console.print(line, highlight=False, markup=False)
        else:
            print(line, flush=True)

    @contextmanager
    def stage(self, key: str, title: str) -> Iterator[Callable[[str], None]]:
        self.say(f"stage {key}: {title} ...")
        t = time.monotonic()
        status = None
        if self.console is not None:
            status = self.console.status(f"{key}: {title}")
            status.start()

        def update(msg: str) -> None:
            if status is not None:
                status.update(f"{key}: {title} — {msg}")

        try:
            yield update
        except BaseException:
            self.say(f"stage {key}: FAILED after {time.monotonic() - t:.1f}s")
            raise
        finally:
            if status is not None:
                status.stop()
        self.timings[key] = time.monotonic() - t
        self.say(f"stage {key}: done in {self.timings[key]:.1f}s")


# ---------------------------------------------------------------------------
# state file
# ---------------------------------------------------------------------------


class State:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        self.data.setdefault("stages", {})

    def done(self, stage: str) -> dict[str, Any] | None:
        return self.data["stages"].get(stage)

    def finish(self, stage: str, result: dict[str, Any]) -> None:
        self.data["stages"][stage] = result
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


# ---------------------------------------------------------------------------
# the oracle
# ---------------------------------------------------------------------------


class Oracle:
    """Ground truth of every generated image, looked up by pixels (a hard sample is
    a re-encoded JPEG of a camera frame, so its bytes differ; its pixels barely do)."""

    MAX_MEAN_ABS = 8.0

    def __init__(self, images: np.ndarray, labels: list[str]) -> None:
        self.x = images.reshape(len(images), -1).astype(np.float32)
        self.labels = labels

    def label(self, image: np.ndarray) -> str | None:
        d = np.abs(self.x - image.reshape(1, -1).astype(np.float32)).mean(1)
        i = int(np.argmin(d))
        return self.labels[i] if d[i] <= self.MAX_MEAN_ABS else None


# ---------------------------------------------------------------------------
# the demo
# ---------------------------------------------------------------------------


class Demo:
    def __init__(
        self,
        data_dir: Path,
        *,
        size: Literal["small", "default"] = "default",
        port: int | None = None,
        headless: bool = False,
        hard_timeout_s: float = 300.0,
    ) -> None:
        self.headless = headless
        self.size_name = size
        self.size = SIZES[size]
        self.requested_dir = Path(data_dir)
        self.port = port
        self.hard_timeout_s = hard_timeout_s
        self.n = Narrator(headless)
        self.services = Services()
        self.stoppers: list[tuple[str, Callable[[], None]]] = []
        self.accuracy: dict[str, float] = {}

    # ------------------------------------------------------------------ preflight
    def preflight(self) -> None:
        from cloud.core.config import Settings

        self.data_dir = check_data_dir(self.requested_dir)
        base = Settings()
        self.port = self.port or base.api_port
        check_port_free(self.port)
        (self.data_dir / "demo").mkdir(exist_ok=True)
        self.logs = self.data_dir / "demo" / "logs"
        self.logs.mkdir(exist_ok=True)
        self.state = State(self.data_dir / "demo" / "state.json")
        self.tag = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:6]
        redis_url, r_started = ensure_redis(base.redis_url, self.services, self.logs)
        mqtt_url, m_started = ensure_mosquitto(base.mqtt_url, self.services, self.logs)
        self.n.say(f"redis: {redis_url} ({'started here' if r_started else 'already running'})")
        self.n.say(f"mosquitto: {mqtt_url} ({'started here' if m_started else 'already running'})")
        self.settings = Settings(
            data_dir=self.data_dir, redis_url=redis_url, mqtt_url=mqtt_url, api_port=self.port
        )
        self.token = self.state.data.setdefault("token", "cb_demo_" + secrets.token_hex(16))
        self.state.save()

    # ------------------------------------------------------------------ life cycle
    def run(self) -> int:
        def _terminate(signum: int, _frame: Any) -> None:
            raise SystemExit(128 + signum)

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _terminate)
        try:
            self.preflight()
            self.n.say(
                f"citybrain demo: size {self.size_name}, data dir {self.data_dir}, "
                f"devices demo{self.tag}-0000..0002"
            )
            self._open()
            self._start_serve()
            self.stage_city()
            self.stage_import()
            self.stage_pretrain()
            self.stage_label()
            self.stage_train_v1()
            self.stage_schedule()
            self.stage_agents_v1()
            self.stage_hard_samples()
            self.stage_mine()
            ok = self.stage_train_v2()
            if ok:
                self.stage_hot_swap()
            self._summary(ok)
            if not self.headless:
                self.n.say("everything stays up for browsing: Ctrl-C stops the demo")
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    pass
            return 0 if ok else 1
        finally:
            self.close()

    def close(self) -> None:
        for name, stop in reversed(self.stoppers):
            try:
                stop()
            except Exception as e:  # noqa: BLE001 - keep stopping the rest
                self.n.say(f"stopping {name}: {e}")
        self.stoppers.clear()
        if self.headless and hasattr(self, "devices") and hasattr(self, "settings"):
            self._clear_retained()
        stopped = self.services.close()
        if stopped:
            self.n.say(f"stopped {', '.join(stopped)}")

    def _clear_retained(self) -> None:
        """Leave no retained device state of a headless run on a shared broker
        (on a restart the re-planning service republishes its saved desired states)."""
        from edge_agent.protocol import Topics

        try:
            self._publish_retained(
                {
                    t: b""
                    for d in self.devices
                    for t in (Topics.desired(d), Topics.reported(d), Topics.status(d))
                }
            )
        except Exception as e:  # noqa: BLE001 - best effort at shutdown
            self.n.say(f"could not clear retained device topics: {e}")

    def _open(self) -> None:
        import algorithm_store as st
        from cloud.catalog import Catalog

        self.catalog = Catalog.open(self.settings)
        self.stoppers.append(("catalog", self.catalog.close))
        key = self.settings.store_key_file or self.settings.store_dir / "key"
        if not key.is_file():
            st.keygen(key.parent, name=key.name)
        self.store_key = key
        self.store_pub = st.public_key_path(key)
        announcer = st.MqttAnnouncer(self.settings.mqtt_url)
        self.stoppers.append(("store announcer", announcer.close))
        self.store = st.AlgorithmStore(
            self.settings.store_dir, private_key=st.load_private_key(key), announcer=announcer
        )
        from cloud.fleet import FleetMirror, MirrorConfig  # devices on /overview, /devices

        fleet = MirrorConfig(broker_url=self.settings.mqtt_url, client_id=f"demo-fleet-{self.tag}")
        self.stoppers.append(("fleet mirror", FleetMirror(self.settings, fleet).start().stop))

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            CITYBRAIN_DATA_DIR=str(self.data_dir),
            CITYBRAIN_REDIS_URL=self.settings.redis_url,
            CITYBRAIN_MQTT_URL=self.settings.mqtt_url,
            CITYBRAIN_API_PORT=str(self.port),
            CITYBRAIN_BOOTSTRAP_TOKEN=self.token,
        )
        return env

    def _start_serve(self) -> None:
        exe = Path(sys.executable).parent / "citybrain"
        argv = (
            [str(exe)]
            if exe.exists()
            else [sys.executable, "-c", "from cloud.cli import main; main()"]
        )
        self.serve = self.services.spawn(
            "citybrain serve",
            [
                *argv,
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            env=self._env(),
            log=self.logs / "serve.log",
        )
        self.n.say(
            f"starting the API + console on port {self.port} (log {self.logs / 'serve.log'})"
        )

    def _wait_serve(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if port_answers(self.port):
                return
            if self.serve.poll() is not None:
                tail = (self.logs / "serve.log").read_text(errors="replace")[-400:]
                raise DemoError(f"citybrain serve exited ({self.serve.returncode}): {tail}")
            time.sleep(0.5)
        raise DemoError(f"citybrain serve did not answer on port {self.port} within {timeout}s")

    # ------------------------------------------------------------------ a: city
    def _generate(self) -> dict[str, Any]:
        """Synthetic images on disk (pool folder, one folder per synthetic camera)
        and the held-out ground truth; deterministic, so regenerated on restart."""
        import cv2

        from cloud.flywheel._synthetic import CLASSES, street_scenes

        root = self.data_dir / "demo" / "scenes"
        sz = self.size
        sets = {"pool": (sz.pool, 1)}
        for i in range(3):
            sets[f"road-{i + 1}"] = (sz.field_per_camera, 100 + i)
        gt_images, gt_labels = [], []
        for name, (n, seed) in sets.items():
            x, y = street_scenes(n, seed=seed)
            d = root / name
            d.mkdir(parents=True, exist_ok=True)
            for k, img in enumerate(x):
                f = d / f"{k:05d}.png"
                if not f.exists():
                    cv2.imwrite(str(f), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            gt_images.append(x)
            gt_labels += [CLASSES[c] for c in y]
        self.oracle = Oracle(np.concatenate(gt_images), gt_labels)
        hx, hy = street_scenes(sz.holdout, seed=999)
        self.holdout = (hx, hy)
        return {"root": str(root)}

    def stage_city(self) -> None:
        import knowledge_graph as kg

        with self.n.stage("a", "create a city (zones, cameras, devices, policy)"):
            gen = self._generate()
            real = footage()
            self.sources = {
                "cam-hall-1": str(real[0]),
                "cam-hall-2": str(real[1]),
                "cam-road-1": f"{gen['root']}/road-1",
                "cam-road-2": f"{gen['root']}/road-2",
                "cam-road-3": f"{gen['root']}/road-3",
            }
            self.devices = [f"demo{self.tag}-{i:04d}" for i in range(3)]
            self.device_cams = {
                self.devices[0]: ["cam-hall-1", "cam-road-1"],
                self.devices[1]: ["cam-hall-2", "cam-road-2"],
                self.devices[2]: ["cam-road-3"],
            }
            if self.state.done("city"):
                self.n.say("city exists (resumed)")
                return
            graph = kg.load(self.catalog.engine)
            if graph.count(kg.NodeType.OBJECT) == 0:
                graph.seed()
            if not graph.has(kg.NodeType.OBJECT, "traffic_cone"):
                graph.add_object("traffic_cone", "a traffic cone")
            if not graph.has(kg.NodeType.EVENT, EVENT):
                graph.add_event(EVENT, involves=["traffic_cone"], scenes=["street", "sidewalk"],
                                description="a traffic cone on the roadway")  # fmt: skip
            zones = {"cam-hall-1": "demo-city/center/hall", "cam-hall-2": "demo-city/center/hall",
                     "cam-road-1": "demo-city/center/main-road", "cam-road-2": "demo-city/east/ring-road",
                     "cam-road-3": "demo-city/east/ring-road"}  # fmt: skip
            for cam, zone in zones.items():
                if not graph.has(kg.NodeType.CAMERA, cam):
                    scenes = ["sidewalk"] if "hall" in cam else ["street"]
                    graph.add_camera(cam, zone=zone, scenes=scenes, source=self.sources[cam])
            for dev, cams in self.device_cams.items():
                if not graph.has(kg.NodeType.DEVICE, dev):
                    graph.add_device(dev, target="cpu-x86", ms_per_s=1000.0, mem_mb=2048.0,
                                     streams=2, reaches=cams)  # fmt: skip
            if not any(EVENT in p.events for p in graph.policies.values()):
                graph.add_policy(kg.Policy(zone="demo-city", events=[EVENT], priority=10.0,
                                           description="watch every demo camera for cones on the road"))  # fmt: skip
            kg.save(graph, self.catalog.engine)
            self.n.say(f"5 cameras (2 on real footage, 3 on synthetic street scenes) in 3 zones, "
                       f"3 edge devices, policy: watch '{EVENT}' in demo-city")  # fmt: skip
            self.state.finish("city", {"cameras": list(zones)})

    # ------------------------------------------------------------------ b: import
    def stage_import(self) -> None:
        from cloud.errors import NotFound
        from cloud.flywheel._synthetic import CLASSES
        from cloud.importers import import_path

        with self.n.stage(
            "b", "import the unlabeled pool (synthetic scenes + real footage frames)"
        ):
            if (r := self.state.done("import")) is not None:
                self.n.say(f"dataset {DATASET} has {r['samples']} samples (resumed)")
                return
            root = Path(self.sources["cam-road-1"]).parent
            try:
                self.catalog.get_dataset(DATASET)
            except NotFound:
                self.catalog.create_dataset(DATASET, labels=CLASSES, created_by="demo",
                                            description="citybrain demo: synthetic street scenes + vtest frames")  # fmt: skip
            rep = import_path(self.catalog, root / "pool", DATASET, created_by="demo")
            total = rep.added
            for video in dict.fromkeys(footage()):
                rv = import_path(self.catalog, video, DATASET, every_s=self.size.video_every_s,
                                 created_by="demo")  # fmt: skip
                total += rv.added
            n = self.catalog.dataset_stats(DATASET).samples
            self.n.say(f"dataset {DATASET}: {n} samples ({total} new)")
            self.state.finish("import", {"samples": n})

    # ------------------------------------------------------------------ c: pretrain
    def stage_pretrain(self) -> None:
        from cloud.flywheel._pipeline import pretrain_dataset

        with self.n.stage(
            "c", f"self-supervised pretraining ({self.size.pretrain_epochs} epochs)"
        ) as up:
            if (r := self.state.done("pretrain")) is not None:
                self.n.say(f"backbone {r['backbone']} (resumed)")
                return
            out = pretrain_dataset(self.catalog, DATASET, epochs=self.size.pretrain_epochs,
                                   created_by="demo", progress=lambda f, m: up(f"{f:.0%} {m}"))  # fmt: skip
            self.n.say(f"backbone {out.backbone}: loss {out.losses[0]:.3f} -> {out.losses[-1]:.3f}"
                       if out.losses else f"backbone {out.backbone}")  # fmt: skip
            self.state.finish("pretrain", {"backbone": out.backbone, "task": out.task_id})

    # ------------------------------------------------------------------ helpers
    def _pool(self) -> tuple[list[str], set[str], np.ndarray]:
        """(sample ids, labeled ids, embeddings) of the dataset's current members."""
        from cloud.flywheel._pipeline import dataset_backbone, embed_samples

        items = list(self.catalog.iter_items(DATASET))
        ids = [it.sample_id for it in items]
        labeled = {it.sample_id for it in items if it.label}
        backbone = dataset_backbone(self.catalog, DATASET)
        emb = embed_samples(self.catalog, backbone, ids).get(ids)
        return ids, labeled, np.ascontiguousarray(emb, np.float32)

    def _oracle_task(self, title: str, picks: list[str], reasons: dict[str, str]) -> dict[str, Any]:
        """An annotation task over ``picks``, labeled by the ORACLE."""
        from cloud.catalog import annotation as an
        from cloud.catalog.models import AnnotationSource
        from cloud.flywheel._pipeline import load_images

        with self.catalog.transaction() as s:
            spec = an.AnnotationTaskSpec(dataset=DATASET, title=title, sample_ids=picks,
                                         reasons=reasons, use_model_prelabels=False)  # fmt: skip
            task_id = an.create_annotation_task(self.catalog, s, spec, created_by="demo").id
        images = load_images(self.catalog, picks)
        labeled, skipped = 0, 0
        items = []
        for sid, img in zip(picks, images, strict=True):
            lab = self.oracle.label(img)
            if lab is None:
                skipped += 1
                continue
            items.append({"sample_id": sid, "label": lab})
        if items:
            self.catalog.annotate_many(DATASET, items, annotator=ORACLE,
                                       source=AnnotationSource.ORACLE, task_id=task_id)  # fmt: skip
            labeled = len(items)
        try:
            with self.catalog.transaction() as s:
                an.close_task(s, task_id, force=True)
        except Exception as e:  # noqa: BLE001 - the labels are stored either way
            self.n.say(f"annotation task {task_id} left open: {e}")
        self.n.say(f"ORACLE (simulated annotator, source=oracle) labeled {labeled} of {len(picks)} "
                   f"in task {task_id}" + (f"; skipped {skipped} without ground truth "
                                           "(real footage)" if skipped else ""))  # fmt: skip
        return {"task": task_id, "labeled": labeled, "skipped": skipped}

    # ------------------------------------------------------------------ d: label
    def stage_label(self) -> None:
        from cloud.flywheel.mining import PoolState, select

        with self.n.stage(
            "d", f"label a first batch of {self.size.seed_labels} (typicality) + a test split"
        ):
            if (r := self.state.done("label")) is not None:
                self.n.say(f"{r['labeled']} oracle labels (resumed)")
                return
            ids, labeled, emb = self._pool()
            # typical samples of the whole pool; the oracle skips real-footage frames
            excluded = [i for i, s in enumerate(ids) if s in labeled]
            sel = select("typiclust", PoolState(embeddings=emb, excluded=np.array(excluded, np.int64)),
                         self.size.seed_labels, seed=0)  # fmt: skip
            picks = [ids[i] for i in sel.indices]
            reasons = {ids[i]: r for i, r in zip(sel.indices, sel.reasons, strict=True)}
            out = self._oracle_task("round 1: typical samples", picks, reasons)
            # an evaluation set, drawn at random, so that the gate compares models on
            # more than a handful of test samples
            chosen = set(picks) | labeled
            rest = [s for s in ids if s not in chosen]
            rng = np.random.default_rng(1)
            k = min(len(rest), self.size.test_labels)
            test = [rest[i] for i in sorted(rng.choice(len(rest), k, replace=False))]
            ev = self._oracle_task(
                "frozen test split: random samples", test, dict.fromkeys(test, "random sample")
            )
            total = out["labeled"] + ev["labeled"]
            ver = self.catalog.create_version(
                DATASET, note="demo: freeze the test split", created_by="demo",
                test_fraction=min(0.9, ev["labeled"] / max(1, total)),
            )  # fmt: skip
            n_test = sum(
                1 for it in self.catalog.iter_items(DATASET, ver.number) if it.split == "test"
            )
            self.n.say(
                f"froze a test split of {n_test} labeled samples (dataset version {ver.number})"
            )
            out["test_split"] = n_test
            out["labeled"] = total
            self.state.finish("label", out)

    # ------------------------------------------------------------------ e: train v1
    def _train(self) -> Any:
        from cloud.flywheel import TrainConfig
        from cloud.flywheel._pipeline import train_dataset

        return train_dataset(self.catalog, DATASET, algorithm=ALGORITHM,
                             config=TrainConfig(seed=0), created_by="demo")  # fmt: skip

    def _publish(self, version: str) -> dict[str, Any]:
        from cloud.flywheel._publish import publish_model

        info = publish_model(
            self.catalog, self.store, ALGORITHM, version, channel="canary",
            scenes=["street", "sidewalk"], detects=[EVENT],
            event_rules=[{"event": EVENT, "labels": ["cone"], "min_score": 0.6}], fps=4.0,
        )  # fmt: skip
        self.store.promote(ALGORITHM, version, "stable", reason="demo: gate passed")
        self.n.say(f"published {ALGORITHM} {version} (package {info['package_sha256'][:12]}, "
                   "channels canary + stable)")  # fmt: skip
        return info

    def _holdout_accuracy(self, version: str) -> float:
        from sqlalchemy import select as sql

        from cloud.catalog.models import Model
        from cloud.flywheel._pipeline import _onnx_probs

        with self.catalog.transaction() as s:
            row = s.scalar(sql(Model).where(Model.algorithm == ALGORITHM, Model.version == version))
            sha = row.artifacts["onnx"]
        x, y = self.holdout
        return float((_onnx_probs(self.catalog, sha, x).argmax(1) == y).mean())

    def _model_row(self, version: str | None = None) -> Any:
        from sqlalchemy import select as sql

        from cloud.catalog.models import Model

        with self.catalog.transaction() as s:
            q = sql(Model).where(Model.algorithm == ALGORITHM)
            if version:
                q = q.where(Model.version == version)
            return list(s.scalars(q))

    def stage_train_v1(self) -> None:
        from cloud.catalog.models import ModelStatus

        with self.n.stage("e", "train v1 (gate vs nothing) and publish it to the store"):
            if (r := self.state.done("train_v1")) is not None:
                self.v1 = r["version"]
                self.n.say(f"{ALGORITHM} {self.v1} published (resumed)")
                return
            rows = self._model_row()
            if rows:  # a run stopped between training and publishing: reuse the model
                row = min(rows, key=lambda m: m.id)
                self.v1 = row.version
                self.n.say(f"reusing registered {ALGORITHM} {self.v1}")
                if row.status != ModelStatus.PUBLISHED:
                    self._publish(self.v1)
            else:
                out = self._train()
                self.v1 = out.version
                self.n.say(f"{ALGORITHM} {out.version} ({out.mode}): test accuracy "
                           f"{out.metrics.accuracy:.3f} on {out.metrics.n}; gate: {out.gate.reason}")  # fmt: skip
                self._publish(self.v1)
            acc = self._holdout_accuracy(self.v1)
            self.n.say(
                f"round 1 accuracy on {len(self.holdout[1])} held-out ground-truth scenes: {acc:.3f}"
            )
            self.state.finish("train_v1", {"version": self.v1, "holdout_accuracy": acc})

    # ------------------------------------------------------------------ f: schedule
    def _start_planner(self) -> None:
        """The real re-planning service (``citybrain schedule run``), in-process: it
        places the algorithm as devices come online and rebuilds the desired states
        when a version moves on ``stable`` (that is what hot-swaps the agents to v2)."""
        import scheduler

        self.planner = scheduler.ReplanService(
            engine=self.catalog.engine, store=self.store, mqtt_url=self.settings.mqtt_url,
            state_path=self.data_dir / "replan-state.json", channel="stable", time_limit=5.0,
            window_s=0.5, max_delay_s=2.0, offline_grace_s=30.0, device_min_interval_s=1.0,
            poll_s=1.0, client_id=f"demo-replan-{self.tag}",
        )  # fmt: skip
        try:
            self.planner.start()
        except scheduler.SchedulerError as e:
            raise DemoError(f"re-planning service: {e}") from None
        self.stoppers.append(("re-planning service", self.planner.stop))

    def _planned(self) -> list[Any]:
        plan = self.planner.state.plan
        return [a for a in plan.assignments if a.device in self.device_cams] if plan else []

    def _say_plan(self) -> None:
        plan = self.planner.state.plan
        mine = self._planned()
        if plan is None or not mine:
            return
        self.n.say(f"plan: {len(mine)} assignments on {len({a.device for a in mine})} devices "
                   f"({plan.solver.name}, objective {plan.objective:g}); desired states published "
                   "(retained) by the re-planning service")  # fmt: skip
        for a in mine:
            self.n.say(f"  {a.camera} -> {a.algorithm} {a.version} on {a.device}")

    def _publish_retained(self, messages: dict[str, bytes]) -> None:
        import paho.mqtt.client as mqtt

        from cloud.ingest import parse_broker_url

        host, port, _tls, _u, _p = parse_broker_url(self.settings.mqtt_url)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        c.connect(host, port, keepalive=30)
        c.loop_start()
        try:
            for topic, payload in messages.items():
                c.publish(topic, payload, qos=1, retain=True).wait_for_publish(20)
        finally:
            c.disconnect()
            c.loop_stop()

    def stage_schedule(self) -> None:
        import knowledge_graph as kg

        with self.n.stage("f", "schedule: the re-planning service places the algorithm"):
            if self.state.done("schedule") is None:
                graph = kg.load(self.catalog.engine)
                vi = self.store.version(ALGORITHM, self.store.channels(ALGORITHM)["stable"])
                graph.add_algorithm_from_manifest(vi.manifest)
                kg.save(graph, self.catalog.engine)
                self.n.say(f"{ALGORITHM} entered the knowledge graph from its store manifest")
            self._start_planner()
            self.n.say("re-planning service running: it places algorithms on devices as they "
                       "come online and follows the 'stable' channel")  # fmt: skip
            self.state.finish("schedule", {"state": str(self.planner.state_path)})

    # ------------------------------------------------------------------ g: agents
    def _start_agents(self) -> None:
        from edge_agent import Fleet

        # a wide low-confidence band so that hard cases come back within seconds
        hard = {
            "selectors": [
                {
                    "kind": "low_confidence",
                    "params": {"low": 0.0, "high": 0.999},
                    "limits": {"per_minute": 120, "per_hour": 5000},
                }
            ],
            "receipt_timeout_s": 10.0,
        }
        self.fleet = Fleet(
            3, broker_url=self.settings.mqtt_url, data_dir=self.data_dir / "demo" / "agents",
            store_public_key=self.store_pub, prefix=f"demo{self.tag}", hard=hard,
            report_interval_s=2.0, retry_failed_s=5.0,
            fetch_mode="http", http_base_url=f"http://127.0.0.1:{self.port}",
        ).start()  # fmt: skip
        self.stoppers.append(("edge agents", self.fleet.stop))

    def _wait_agents(self, version: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            want = self.planner.state.revisions()
            ready = [
                d for d, a in self.fleet.agents.items()
                if d in want and a.applied_revision >= want[d]
                and any(k[1] == version for k in a.models)
            ]  # fmt: skip
            if len(ready) == len(self.devices):
                return
            time.sleep(0.5)
        errs = {d: a.last_error for d, a in self.fleet.agents.items() if a.last_error}
        raise DemoError(f"agents did not all report {ALGORITHM} {version} loaded within {timeout:.0f}s; "
                        f"errors: {errs or 'none reported'}")  # fmt: skip

    def stage_agents_v1(self) -> None:
        from cloud.ingest import HardSampleIngest, IngestConfig

        v2 = self.state.done("train_v2") or {}
        want = v2["version"] if v2.get("published") else self.v1
        with self.n.stage("g", f"start 3 edge agents; wait until they report {want} loaded"):
            ing = HardSampleIngest(self.settings, IngestConfig(
                broker_url=self.settings.mqtt_url, client_id=f"demo-ingest-{self.tag}",
                group=f"demo{self.tag}", batch_ms=200, device_prefix=f"demo{self.tag}-",
                # devices re-send until a receipt names a sample, so the broker need not
                # queue for this consumer long after the demo stopped
                session_expiry_s=600))  # fmt: skip
            self._wait_serve()  # the agents download packages from its store API
            ing.start()
            self.ingest = ing
            self.stoppers.append(("ingest", ing.stop))
            if not ing.wait_connected(20):
                raise DemoError("hard-sample ingest could not connect to the broker")
            self._start_agents()
            self._wait_agents(want)
            self._say_plan()
            self.n.say(
                f"all 3 agents run {ALGORITHM} {want} (ONNX Runtime, verified signature + golden)"
            )
            self.state.finish("agents_v1", {"version": want})

    # ------------------------------------------------------------------ h: hard samples
    def _field_count(self) -> int:
        from sqlalchemy import func
        from sqlalchemy import select as sql

        from cloud.catalog.models import Dataset, DatasetSample
        from cloud.ingest import FIELD_POOL, field_dataset_name

        with self.catalog.transaction() as s:
            ds = s.scalar(sql(Dataset.id).where(Dataset.name == field_dataset_name(ALGORITHM)))
            if ds is None:
                return 0
            return int(s.scalar(sql(func.count()).select_from(DatasetSample).where(
                DatasetSample.dataset_id == ds, DatasetSample.pool == FIELD_POOL)) or 0)  # fmt: skip

    def stage_hard_samples(self) -> None:
        with self.n.stage(
            "h", f"hard samples from the field -> ingest ({self.size.hard_target} wanted)"
        ) as up:
            if (r := self.state.done("hard_samples")) is not None:
                self.n.say(f"{r['field']} field hard samples stored (resumed)")
                return
            deadline = time.monotonic() + self.hard_timeout_s
            n = self._field_count()
            while n < self.size.hard_target and time.monotonic() < deadline:
                time.sleep(1.0)
                n = self._field_count()
                up(f"{n} stored")
            if n == 0:
                raise DemoError(f"no hard sample reached the catalog within {self.hard_timeout_s:.0f}s "
                                f"(fleet: {self.fleet.summary()['counters']})")  # fmt: skip
            if n < self.size.hard_target:
                self.n.say(
                    f"only {n} hard samples within {self.hard_timeout_s:.0f}s; continuing with them"
                )
            self.n.say(f"{n} hard samples stored in the field_hard pool of field-{ALGORITHM}")
            self.state.finish("hard_samples", {"field": n})

    # ------------------------------------------------------------------ i: mine
    def stage_mine(self) -> None:
        from cloud.flywheel._pipeline import _onnx_probs, load_images
        from cloud.flywheel.mining import PoolState, make_strategy
        from cloud.ingest import field_dataset_name

        with self.n.stage(
            "i", f"mine the pool + field hard cases (budget {self.size.budget}); oracle labels"
        ):
            if (r := self.state.done("mine")) is not None:
                self.n.say(f"{r['labeled']} oracle labels from mining (resumed)")
                return
            field_ids = [
                it.sample_id for it in self.catalog.iter_items(field_dataset_name(ALGORITHM))
            ]
            for sid in field_ids:  # field hard cases join the training dataset's pool
                self.catalog.add_image_bytes(DATASET, self.catalog.blobs.get(sid),
                                             source=f"field:{sid[:12]}", pool="field_hard")  # fmt: skip
            ids, labeled, emb = self._pool()
            field = set(field_ids)
            probs = _onnx_probs(self.catalog, self._model_row(self.v1)[0].artifacts["onnx"],
                                load_images(self.catalog, ids))  # fmt: skip
            lab_idx = np.array([i for i, s in enumerate(ids) if s in labeled], np.int64)
            rng = np.random.default_rng(0)
            # half the budget for the field's hard cases (most uncertain first), the rest
            # from the whole pool with the auto hybrid strategy
            not_field = np.array([i for i, s in enumerate(ids) if s not in field], np.int64)
            n_field = min(self.size.budget // 2, len(field - labeled))
            picks: list[int] = []
            reasons: dict[str, str] = {}
            if n_field:
                st = PoolState(embeddings=emb, labeled=lab_idx, probs=probs, excluded=not_field)
                sel = make_strategy("entropy")(st, n_field, rng)
                picks += list(sel.indices)
                reasons.update(
                    {
                        ids[i]: f"field hard case; {r}"
                        for i, r in zip(sel.indices, sel.reasons, strict=True)
                    }
                )
            st = PoolState(embeddings=emb, labeled=lab_idx, probs=probs,
                           excluded=np.union1d(np.array(picks, np.int64), np.array([i for i, s in enumerate(ids) if s in field], np.int64)))  # fmt: skip
            sel = make_strategy("auto")(st, self.size.budget - len(picks), rng)
            picks += list(sel.indices)
            reasons.update({ids[i]: r for i, r in zip(sel.indices, sel.reasons, strict=True)})
            self.n.say(
                f"mined {len(picks)}: {n_field} field hard cases + {len(sel.indices)} from the pool ({sel.strategy})"
            )
            out = self._oracle_task("round 2: mined", [ids[i] for i in picks], reasons)
            out["field"] = n_field
            self.state.finish("mine", out)

    # ------------------------------------------------------------------ j: train v2
    def stage_train_v2(self) -> bool:
        with self.n.stage("j", "train v2, evaluate against v1 on the same frozen test split, gate"):
            r = self.state.done("train_v2")
            if r is None:
                rows = [m for m in self._model_row() if m.version != self.v1]
                if rows:
                    row = min(rows, key=lambda m: m.id)
                    gate = row.metrics.get("gate", {})
                    r = {"version": row.version, "publish": bool(gate.get("publish")),
                         "reason": gate.get("reason", ""), "published": row.status.value == "published"}  # fmt: skip
                    self.n.say(f"reusing registered {ALGORITHM} {row.version}")
                else:
                    out = self._train()
                    r = {"version": out.version, "publish": out.gate.publish, "reason": out.gate.reason,
                         "published": False, "test_n": out.metrics.n}  # fmt: skip
                    self.n.say(f"{ALGORITHM} {out.version} ({out.mode}): test accuracy {out.metrics.accuracy:.3f} "
                               f"vs v1 {out.gate.baseline or 0:.3f} on the same {out.metrics.n} test samples")  # fmt: skip
                if r["publish"] and not r["published"]:
                    self._publish(r["version"])
                    r["published"] = True
                r["holdout_accuracy"] = self._holdout_accuracy(r["version"])
                self.state.finish("train_v2", r)
            else:
                self.n.say(f"{ALGORITHM} {r['version']} (resumed)")
            self.v2 = r["version"]
            self.accuracy = {"round1": self.state.done("train_v1")["holdout_accuracy"],
                             "round2": r["holdout_accuracy"]}  # fmt: skip
            if not r["publish"]:
                self.n.say(f"gate REFUSED {ALGORITHM} {self.v2}: {r['reason']} — v2 is not published; "
                           "the devices stay on v1")  # fmt: skip
                return False
            self.n.say(f"gate passed: {r['reason']}")
            return True

    # ------------------------------------------------------------------ k: hot swap
    def stage_hot_swap(self) -> None:
        with self.n.stage("k", "agents hot-swap to v2"):
            # promoting v2 to stable announced it; the re-planning service rebuilt the
            # desired states from its plan, and the agents verify, warm and swap
            self._wait_agents(self.v2)
            frames = self.fleet.summary()["frames"]
            self.n.say(
                f"all 3 agents now run {ALGORITHM} {self.v2} ({frames} frames analysed so far)"
            )
            self.state.finish("hot_swap", {"version": self.v2})

    def _summary(self, ok: bool) -> None:
        self._wait_serve()
        r1, r2 = self.accuracy.get("round1"), self.accuracy.get("round2")
        n = len(self.holdout[1])
        self.n.say(f"accuracy on {n} held-out synthetic ground-truth scenes: round 1 ({self.v1}) "
                   f"{r1:.3f} -> round 2 ({self.v2}) {r2:.3f}")  # fmt: skip
        if r2 is not None and r1 is not None and r2 <= r1:
            self.n.say("round 2 is not better on the held-out scenes: too few labels at this size "
                       "to beat round 1 reliably")  # fmt: skip
        self.n.say(f"console: http://127.0.0.1:{self.port}/  (API token: {self.token})")
        self.n.say(
            "stage timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.n.timings.items())
        )
        result = {"ok": ok, "round1_accuracy": r1, "round2_accuracy": r2, "v1": self.v1, "v2": self.v2,
                  "timings": self.n.timings}  # fmt: skip
        (self.data_dir / "demo" / "result.json").write_text(json.dumps(result, indent=1))
        self.n.say("DEMO OK" if ok else "DEMO INCOMPLETE: round 2 was not published (see above)")


def run_demo(data_dir: Path, **kw: Any) -> int:
    return Demo(data_dir, **kw).run()
