"""Fleet simulator: N agents (threads in this process) against a real broker,
for scale and chaos tests (``citybrain fleet simulate``)."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from edge_agent._agent import Agent
from edge_agent._config import load_config
from edge_agent.protocol import HardwareProfile

log = logging.getLogger("edge_agent.fleet")

SIM_HARDWARE = HardwareProfile(target="cpu-sim", cpu="simulated", cores=1, memory_mb=512)


class Fleet:
    """``n`` agents named ``{prefix}-0000`` … sharing one process."""

    def __init__(
        self,
        n: int,
        *,
        broker_url: str,
        data_dir: Path,
        store_public_key: Path,
        source: str | None = None,
        prefix: str = "sim",
        **overrides: Any,
    ) -> None:
        if n <= 0:
            raise ValueError(f"--devices must be positive, got {n}")
        self.n = n
        self.prefix = prefix
        self.data_dir = Path(data_dir)
        self._base: dict[str, Any] = {
            "broker_url": broker_url,
            "store_public_key": store_public_key,
            "source_override": source,
            "ort_threads": 1,
            "warmup_runs": 1,
            **overrides,
        }
        self.agents: dict[str, Agent] = {}
        self._lock = threading.Lock()

    def device_id(self, i: int) -> str:
        return f"{self.prefix}-{i:04d}"

    def make(self, device: str) -> Agent:
        cfg = load_config(None, device_id=device, data_dir=self.data_dir / device, **self._base)
        return Agent(cfg, hardware=SIM_HARDWARE)

    def start(self) -> Fleet:
        for i in range(self.n):
            d = self.device_id(i)
            self.agents[d] = self.make(d).start()
        return self

    def kill(self, device: str) -> None:
        """Crash-stop one agent (no goodbye: the broker publishes its last will)."""
        with self._lock:
            agent = self.agents.pop(device)
        agent.stop(graceful=False)

    def restart(self, device: str) -> Agent:
        with self._lock:
            old = self.agents.pop(device, None)
        if old is not None:
            old.stop(graceful=False)
        agent = self.make(device).start()
        with self._lock:
            self.agents[device] = agent
        return agent

    def stop(self) -> None:
        with self._lock:
            agents = list(self.agents.values())
            self.agents.clear()
        for a in agents:
            a.stop()

    def summary(self) -> dict[str, Any]:
        with self._lock:
            agents = list(self.agents.values())
        revisions = Counter(a.applied_revision for a in agents)
        totals: Counter[str] = Counter()
        for a in agents:
            totals.update(a.stats.snapshot())
        return {
            "devices": len(agents),
            "connected": sum(a.session.connected.is_set() for a in agents),
            "applied_revisions": dict(sorted(revisions.items())),
            "errors": sum(1 for a in agents if a.last_error),
            "frames": sum(w.frames for a in agents for w in list(a.streams.values())),
            "counters": dict(totals),
        }
