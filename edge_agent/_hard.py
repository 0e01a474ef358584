"""From model results to hard samples in the outbox (selectors, limits, budget, JPEG)."""

from __future__ import annotations

import base64
import logging
import uuid

import cv2
import numpy as np

from edge_agent._config import HardSampleConfig
from edge_agent._outbox import Outbox
from edge_agent._runtime import Result
from edge_agent._selectors import Budget, Observation, RateLimiter, Selector, build_selector
from edge_agent._stats import Stats
from edge_agent.protocol import HardSample, Manifest, Topics, encode

log = logging.getLogger("edge_agent.hard")


class HardSampler:
    def __init__(self, cfg: HardSampleConfig, device: str, outbox: Outbox, stats: Stats) -> None:
        self.cfg = cfg
        self.device = device
        self.outbox = outbox
        self.stats = stats
        self.selectors: list[tuple[str, Selector, RateLimiter]] = [
            (s.kind, build_selector(s), RateLimiter(s.limits)) for s in cfg.selectors
        ]
        self.budget = Budget(cfg.budget_bytes_per_hour)

    def jpeg(self, frame: np.ndarray) -> bytes:
        h, w = frame.shape[:2]
        side = max(h, w)
        if side > self.cfg.max_image_side:
            f = self.cfg.max_image_side / side
            frame = cv2.resize(frame, (max(1, int(w * f)), max(1, int(h * f))))
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self.cfg.jpeg_quality])
        if not ok:
            raise ValueError("JPEG encoding failed")
        return buf.tobytes()

    def consider(
        self,
        *,
        stream: str,
        frame: np.ndarray,
        manifest: Manifest,
        result: Result,
        shadow: Result | None,
        centroids: np.ndarray | None,
    ) -> str | None:
        """Offer one frame to the selectors; returns the selector that took it, if any."""
        if not self.cfg.enabled:
            return None
        obs = Observation(
            result=result,
            threshold=manifest.postprocess.score_threshold,
            task=manifest.task.value,
            centroids=centroids,
            shadow=shadow,
        )
        for name, select, limiter in self.selectors:
            pick = select(obs)
            if pick is None:
                continue
            if not limiter.allow():
                self.stats.inc(f"hard_rate_limited.{name}")
                continue
            data = self.jpeg(frame)
            b64 = base64.b64encode(data).decode()
            if not self.budget.spend(len(b64)):
                self.stats.inc("hard_over_budget")
                return None
            score, reason = pick
            top = float(result.scores.max()) if result.scores.size else 0.0
            sample = HardSample(
                id=uuid.uuid4().hex,
                device=self.device,
                stream=stream,
                algorithm=manifest.id,
                model_version=manifest.version,
                selector=name,
                reason=reason,
                scores={"selector": float(score), "top": top},
                image_jpeg_b64=b64,
            )
            self.outbox.add(sample.id, Topics.hard(self.device), encode(sample))
            self.stats.inc(f"hard_selected.{name}")
            return name
        return None
