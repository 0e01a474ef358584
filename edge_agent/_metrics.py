"""Prometheus ``GET /metrics`` of the agent, standard library only.

:func:`format_family` and :func:`format_histogram` write the text exposition
format (0.0.4) by hand (the agent cannot use ``prometheus_client`` nor the
cloud's ``cloud.api.routes.metrics.format_family``, which this mirrors).
:func:`agent_metrics` reads an :class:`~edge_agent._agent.Agent` at scrape time;
:class:`MetricsServer` serves it from a ``ThreadingHTTPServer``.

Families (all prefixed ``citybrain_edge_``)::

    info{device,version}                        gauge 1
    mqtt_connected                              gauge 0/1
    applied_revision                            gauge
    model_info{algorithm,version,runtime,sha256} gauge 1 per loaded model
    stream_model_info{stream,algorithm,version} gauge 1 per stream
    frames_per_second{stream}                   gauge
    frames_total{stream}                        counter
    dropped_frames_total{stream}                counter
    inference_seconds{stream}                   histogram
    outbox_depth{state}                         gauge (queued, sending, sent)
    outbox_oldest_age_seconds                   gauge (0 when empty)
    outbox_dropped_total                        counter (size cap, oldest first)
    hard_samples_total{outcome}                 counter
    resend_bytes_total                          counter (charged to the resend cap)
    resend_delayed_total                        counter (rows held back by the cap)
    fetch_bytes_total                           counter (updates and prefetches)
    updates_total{result}                       counter (ok, failed, superseded)
    update_failures_total{reason}               counter
    announcements_total{result}                 counter (accepted, or the refusal reason)
    prefetches_total{result}                    counter
    rejected_messages_total                     counter
    counter_total{name}                         counter (every internal counter)

A stream's counters start over when its worker is replaced (new source or
fps); Prometheus treats that as a counter reset.
"""

from __future__ import annotations

import bisect
import http.server
import logging
import math
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_agent._agent import Agent

log = logging.getLogger("edge_agent.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: inference latency buckets (seconds): 1 ms .. 10 s
INFERENCE_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    10.0,
)
_NAME_RE = re.compile(r"^[A-Za-z_:][A-Za-z0-9_:]*$")
_LABEL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
Samples = Iterable[tuple[Mapping[str, str], float]]


def _escape_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else f"{float(v):.1f}"


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    for k in labels:
        if not _LABEL_RE.match(k):
            raise ValueError(f"invalid label name {k!r}")
    inner = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items())
    return "{" + inner + "}"


def _header(name: str, kind: str, help_text: str) -> list[str]:
    if not _NAME_RE.match(name):
        raise ValueError(f"invalid metric name {name!r}")
    help_escaped = help_text.replace("\\", "\\\\").replace("\n", "\\n")
    return [f"# HELP {name} {help_escaped}", f"# TYPE {name} {kind}"]


def format_family(name: str, kind: str, help_text: str, samples: Samples) -> str:
    """One metric family in the text format. ``kind``: counter | gauge | untyped;
    a counter's name gets ``_total`` if it lacks it. Label values are escaped."""
    if kind not in ("counter", "gauge", "untyped"):
        raise ValueError(f"kind must be counter, gauge or untyped, got {kind!r}")
    if kind == "counter" and not name.endswith("_total"):
        name = f"{name}_total"
    lines = _header(name, kind, help_text)
    for labels, value in samples:
        lines.append(f"{name}{_labels(dict(sorted(labels.items())))} {_fmt_value(value)}")
    return "\n".join(lines) + "\n"


class Histogram:
    """A thread-safe cumulative histogram (one label set)."""

    def __init__(self, buckets: Sequence[float] = INFERENCE_BUCKETS_S) -> None:
        if list(buckets) != sorted(set(buckets)) or not buckets:
            raise ValueError(f"buckets must be strictly increasing, got {buckets}")
        self.buckets = tuple(float(b) for b in buckets)
        self._counts = [0] * (len(self.buckets) + 1)  # last = above every bucket
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self.buckets, value)
        with self._lock:
            self._counts[i] += 1
            self._sum += value

    def snapshot(self) -> tuple[list[tuple[float, int]], float, int]:
        """(cumulative (upper bound, count) incl. +Inf, sum, count)."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        out, acc = [], 0
        for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
            acc += n
            out.append((bound, acc))
        return out, total, acc


def format_histogram(
    name: str, help_text: str, series: Iterable[tuple[Mapping[str, str], Histogram]]
) -> str:
    """A histogram family: ``_bucket{le}``, ``_sum`` and ``_count`` per label set."""
    lines = _header(name, "histogram", help_text)
    for labels, h in series:
        base = dict(sorted(labels.items()))
        buckets, total, count = h.snapshot()
        for bound, n in buckets:
            le = "+Inf" if math.isinf(bound) else repr(bound)
            lines.append(f"{name}_bucket{_labels({**base, 'le': le})} {_fmt_value(n)}")
        lines.append(f"{name}_sum{_labels(base)} {_fmt_value(total)}")
        lines.append(f"{name}_count{_labels(base)} {_fmt_value(count)}")
    return "\n".join(lines) + "\n"


def _prefixed(counters: Mapping[str, int], prefix: str) -> list[tuple[dict[str, str], float]]:
    """``{prefix}.{x}`` counters as ([label value x], n) samples."""
    p = prefix + "."
    return [(k[len(p) :], float(v)) for k, v in sorted(counters.items()) if k.startswith(p)]


def agent_metrics(agent: Agent) -> str:
    """Every family of the agent, read now."""
    c = agent.stats.snapshot()
    with agent._lock:
        models = list(agent.models.items())
        streams = list(agent.streams.values())
        stream_model = dict(agent.stream_model)
    out: list[str] = []
    P = "citybrain_edge_"

    def fam(name: str, kind: str, help_text: str, samples: Samples) -> None:
        out.append(format_family(P + name, kind, help_text, samples))

    from edge_agent import __version__

    fam("info", "gauge", "agent identity", [({"device": agent.device, "version": __version__}, 1)])
    fam(
        "mqtt_connected",
        "gauge",
        "1 while the MQTT session is connected",
        [({}, float(agent.session.connected.is_set()))],
    )
    fam("applied_revision", "gauge", "desired revision applied", [({}, agent.applied_revision)])
    fam(
        "model_info",
        "gauge",
        "loaded model versions (1 per model)",
        [
            (
                {"algorithm": k[0], "version": k[1], "runtime": r.model.runtime, "sha256": k[2]},
                1.0,
            )
            for k, r in models
        ],
    )
    fam(
        "stream_model_info",
        "gauge",
        "model version each stream runs (1 per stream)",
        [
            ({"stream": s, "algorithm": k[0], "version": k[1]}, 1.0)
            for s, k in sorted(stream_model.items())
        ],
    )
    fam(
        "frames_per_second",
        "gauge",
        "frames inferred per second, recent",
        [({"stream": w.stream}, w.measured_fps()) for w in streams],
    )
    fam("frames", "counter", "frames inferred", [({"stream": w.stream}, w.frames) for w in streams])
    fam(
        "dropped_frames",
        "counter",
        "frames dropped because inference was slower than the source",
        [({"stream": w.stream}, w.dropped) for w in streams],
    )
    out.append(
        format_histogram(
            P + "inference_seconds",
            "model inference time per frame",
            [({"stream": w.stream}, w.latency) for w in streams],
        )
    )
    ob = agent.outbox_snapshot()
    fam(
        "outbox_depth",
        "gauge",
        "hard samples in the outbox by state",
        [({"state": s.value}, n) for s, n in ob["states"].items()],
    )
    fam(
        "outbox_oldest_age_seconds",
        "gauge",
        "age of the oldest hard sample in the outbox (0 when empty)",
        [({}, ob["oldest_age_s"] or 0.0)],
    )
    fam(
        "outbox_dropped",
        "counter",
        "hard samples dropped by the outbox size cap (oldest first)",
        [({}, c.get("outbox_dropped", 0))],
    )
    fam(
        "hard_samples",
        "counter",
        "hard samples by outcome",
        [
            ({"outcome": o}, c.get(k, 0))
            for o, k in (
                ("selected", "outbox_added"),
                ("published", "hard_published"),
                ("republished", "hard_republished"),
                ("stored", "hard_stored"),
                ("rejected", "hard_rejected"),
                ("over_budget", "hard_over_budget"),
            )
        ],
    )
    fam(
        "resend_bytes",
        "counter",
        "bytes of re-sends and backlog charged to the resend cap",
        [({}, c.get("hard_resend_bytes", 0))],
    )
    fam(
        "resend_delayed",
        "counter",
        "outbox rows held back by the resend cap (delayed, never dropped)",
        [({}, c.get("hard_resend_delayed", 0))],
    )
    fam(
        "fetch_bytes",
        "counter",
        "artifact bytes downloaded (updates and prefetches)",
        [({}, c.get("bytes_fetched", 0))],
    )
    fam(
        "updates",
        "counter",
        "desired-state applies by result",
        [
            ({"result": r}, c.get(k, 0))
            for r, k in (
                ("ok", "applies_ok"),
                ("failed", "applies_failed"),
                ("superseded", "applies_superseded"),
            )
        ],
    )
    fam(
        "update_failures",
        "counter",
        "failed applies by reason",
        [({"reason": r}, n) for r, n in _prefixed(c, "update_failures")],
    )
    fam(
        "announcements",
        "counter",
        "store announcements accepted, or refused by reason",
        [({"result": "accepted"}, c.get("announcements_accepted", 0))]
        + [({"result": r}, n) for r, n in _prefixed(c, "announcements_rejected")],
    )
    fam(
        "prefetches",
        "counter",
        "background downloads of announced versions by result",
        [({"result": r}, n) for r, n in _prefixed(c, "prefetch")],
    )
    fam(
        "rejected_messages",
        "counter",
        "inbound messages rejected",
        [({}, c.get("rejected", 0))],
    )
    fam(
        "counter",
        "counter",
        "every internal counter of the agent, by name",
        [({"name": k}, v) for k, v in sorted(c.items())],
    )
    return "".join(out)


class MetricsServer:
    """Serves ``render()`` on ``GET /metrics`` from a daemon thread."""

    def __init__(self, host: str, port: int, render: Any) -> None:
        self.render = render

        class Handler(http.server.BaseHTTPRequestHandler):
            server_version = "citybrain-edge"

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("metrics %s: " + fmt, self.client_address[0], *args)

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics here")
                    return
                t0 = time.perf_counter()
                try:
                    body = render().encode()
                except Exception:  # noqa: BLE001 - a scrape must not kill the server
                    log.exception("metrics: rendering failed")
                    self.send_error(500, "metrics rendering failed")
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                log.debug("metrics scraped in %.1f ms", (time.perf_counter() - t0) * 1e3)

        self.httpd = http.server.ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.host, self.port = self.httpd.server_address[:2]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="metrics", daemon=True
        )

    def start(self) -> MetricsServer:
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()
