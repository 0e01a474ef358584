"""Console paging benchmark: a dataset of 100,000 samples (rows inserted
directly), server time per page of the dataset browser API and HTML page:
first / middle / last page, filtered, keyset. Target < 200 ms per page.

    .venv/bin/python benchmarks/console_bench.py [--samples 100000] [--repeat 7]

Server time is the app's own ``Server-Timing: app;dur=`` header (request in,
response out, in-process ASGI; no network).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

TARGET_MS = 200.0
LABELS = ["car", "bus", "bike", "person"]


def populate(catalog, n: int, labeled_every: int = 3) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import insert

    from cloud.catalog.models import (
        Annotation,
        AnnotationKind,
        AnnotationSource,
        DatasetSample,
        Sample,
        utcnow,
    )

    ds = catalog.create_dataset("big", labels=LABELS)
    t0 = utcnow()
    batch = 5000
    ann_id = 0
    with catalog.engine.begin() as conn:
        for start in range(0, n, batch):
            samples, members, anns = [], [], []
            for i in range(start, min(n, start + batch)):
                sid = hashlib.sha256(f"bench-{i}".encode()).hexdigest()
                samples.append(
                    {
                        "id": sid,
                        "media_type": "image/jpeg",
                        "width": 640,
                        "height": 480,
                        "size": 30_000,
                        "source": f"cam{i % 20:02d}/frame{i:06d}.jpg",
                        "camera": f"cam{i % 20:02d}",
                        "device": f"dev{i % 5}",
                        "scores": {},
                        "created_at": t0,
                    }
                )
                label = None
                if i % labeled_every == 0:
                    ann_id += 1
                    label = LABELS[(i // labeled_every) % len(LABELS)]
                    anns.append(
                        {
                            "id": ann_id,
                            "dataset_id": ds.id,
                            "sample_id": sid,
                            "kind": AnnotationKind.CLASSIFICATION,
                            "label": label,
                            "source": AnnotationSource.HUMAN,
                            "annotator": "bench",
                            "created_at": t0,
                        }
                    )
                members.append(
                    {
                        "dataset_id": ds.id,
                        "sample_id": sid,
                        "pool": "main" if i % 10 else "field_hard",
                        "added_at": t0 + timedelta(microseconds=i),
                        "current_annotation_id": ann_id if label else None,
                        "label": label,
                        # provenance copied onto the membership, as add_samples does
                        "source": samples[-1]["source"],
                        "camera": samples[-1]["camera"],
                        "device": samples[-1]["device"],
                    }
                )
            conn.execute(insert(Sample), samples)
            conn.execute(insert(Annotation), anns)
            conn.execute(insert(DatasetSample), members)
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("ANALYZE")


def measure(client, url: str, repeat: int) -> tuple[list[float], int]:  # type: ignore[no-untyped-def]
    times = []
    status = 0
    for _ in range(repeat):
        r = client.get(url)
        status = r.status_code
        if status != 200:
            raise SystemExit(f"{url}: HTTP {status} {r.text[:200]}")
        times.append(float(r.headers["server-timing"].split("dur=")[1]))
    return times, status


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--per-page", type=int, default=48)
    args = ap.parse_args()

    from fastapi.testclient import TestClient

    from cloud.api.main import create_app
    from cloud.core.config import Settings

    token = "cb_bench_admin_token_0123456789"
    with tempfile.TemporaryDirectory(prefix="cb-console-bench-") as tmp:
        settings = Settings(data_dir=Path(tmp), bootstrap_token=token)
        app = create_app(settings)
        catalog = app.state.catalog
        t = time.perf_counter()
        populate(catalog, args.samples)
        fill_s = time.perf_counter() - t
        n, per = args.samples, args.per_page
        last_off = (n - 1) // per * per
        n_car = len(range(0, n, 3)) // len(LABELS) + 1
        car_last = (n_car - 1) // per * per
        pages = n // per + (1 if n % per else 0)
        with TestClient(app) as client:
            client.cookies.set("citybrain_token", token)
            client.headers["Authorization"] = f"Bearer {token}"
            api = "/api/v1/datasets/big/samples"
            first = client.get(f"{api}?limit={per}").json()
            from urllib.parse import quote

            cursor = quote(first["next_cursor"], safe="")
            cases = [
                ("API first page", f"{api}?offset=0&limit={per}"),
                ("API middle page", f"{api}?offset={n // 2}&limit={per}"),
                ("API last page", f"{api}?offset={last_off}&limit={per}"),
                ("API keyset next page", f"{api}?after={cursor}&limit={per}"),
                ("API label=car first", f"{api}?label=car&limit={per}"),
                ("API label=car last", f"{api}?label=car&offset={car_last}&limit={per}"),
                ("API labeled=false middle", f"{api}?labeled=false&offset={n // 3}&limit={per}"),
                (
                    "API pool=field_hard middle",
                    f"{api}?pool=field_hard&offset={n // 20}&limit={per}",
                ),
                ("API camera=cam07 middle", f"{api}?camera=cam07&offset={n // 40}&limit={per}"),
                (
                    "API source prefix last",
                    f"{api}?source=cam03/&offset={n // 20 - per}&limit={per}",
                ),
                ("API dataset stats (page script)", "/api/v1/datasets/big"),
                ("HTML first page", f"/datasets/big?page=1&per_page={per}"),
                ("HTML middle page", f"/datasets/big?page={pages // 2}&per_page={per}"),
                ("HTML last page", f"/datasets/big?page={pages}&per_page={per}"),
                (
                    "HTML label=car middle",
                    f"/datasets/big?label=car&page={(n_car // per) // 2}&per_page={per}",
                ),
                (
                    "HTML labeled=no last",
                    f"/datasets/big?labeled=no&page={(n - n // 3) // per}&per_page={per}",
                ),
            ]
            for _, url in cases:  # warm-up (SQLite page cache, template compile)
                client.get(url)
            print(
                f"console paging benchmark: {n:,} samples, {per} per page, {args.repeat} runs each"
            )
            print(
                f"machine: {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}, "
                f"catalog {settings.database_url.split(':')[0]}; rows inserted in {fill_s:.1f} s"
            )
            print(f"{'case':<32} {'median ms':>10} {'max ms':>8}  within {TARGET_MS:.0f} ms")
            worst = 0.0
            for name, url in cases:
                times, _ = measure(client, url, args.repeat)
                med, mx = statistics.median(times), max(times)
                worst = max(worst, med)
                print(f"{name:<32} {med:>10.1f} {mx:>8.1f}  {'yes' if med < TARGET_MS else 'NO'}")
            print(f"worst median: {worst:.1f} ms (target < {TARGET_MS:.0f} ms)")
        catalog.close()


if __name__ == "__main__":
    main()
