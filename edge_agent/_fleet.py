"""Fleet simulator: N agents against a real broker, for scale and chaos tests
(``citybrain fleet simulate``).

:class:`Fleet` runs agents as threads of this process. paho's network loop uses
``select()``, which cannot watch file descriptors above 1024, and an agent holds
about six (socket, wake-up pair, SQLite outbox), so one process carries at most
about 150 agents; :class:`ProcessFleet` spreads larger fleets over child
processes (``python -m edge_agent._fleet SPEC``) and aggregates their summaries.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
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
        first: int = 0,
        **overrides: Any,
    ) -> None:
        if n <= 0:
            raise ValueError(f"--devices must be positive, got {n}")
        self.n = n
        self.prefix = prefix
        self.first = first
        self.data_dir = Path(data_dir)
        self._base: dict[str, Any] = {
            "broker_url": broker_url,
            "store_public_key": store_public_key,
            "source_override": source,
            "ort_threads": 1,
            "warmup_runs": 1,
            "metrics_port": None,  # N agents in one process: no /metrics each
            **overrides,
        }
        self.agents: dict[str, Agent] = {}
        self._lock = threading.Lock()

    def device_id(self, i: int) -> str:
        return f"{self.prefix}-{self.first + i:04d}"

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


def _merge(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    revisions: Counter[str] = Counter()
    counters: Counter[str] = Counter()
    out: dict[str, Any] = {"devices": 0, "connected": 0, "errors": 0, "frames": 0}
    for s in summaries:
        for k in out:
            out[k] += s.get(k, 0)
        revisions.update({str(k): v for k, v in s.get("applied_revisions", {}).items()})
        counters.update(s.get("counters", {}))
    out["applied_revisions"] = dict(sorted(revisions.items()))
    out["counters"] = dict(counters)
    return out


class ProcessFleet:
    """``n`` agents spread over child processes of at most ``per_process`` agents."""

    def __init__(
        self,
        n: int,
        *,
        per_process: int = 100,
        interval: float = 1.0,
        prefix: str = "sim",
        **fleet_kwargs: Any,
    ) -> None:
        if n <= 0:
            raise ValueError(f"--devices must be positive, got {n}")
        self.n = n
        self.per_process = max(1, per_process)
        self.interval = interval
        self.prefix = prefix
        self.kwargs = {k: str(v) if isinstance(v, Path) else v for k, v in fleet_kwargs.items()}
        self.children: list[subprocess.Popen[str]] = []
        self.latest: dict[int, dict[str, Any]] = {}
        self._readers: list[threading.Thread] = []

    def start(self) -> ProcessFleet:
        for first in range(0, self.n, self.per_process):
            spec = {
                "n": min(self.per_process, self.n - first),
                "first": first,
                "prefix": self.prefix,
                "interval": self.interval,
                **self.kwargs,
            }
            p = subprocess.Popen(
                [sys.executable, "-m", "edge_agent._fleet", json.dumps(spec)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            idx = len(self.children)
            self.children.append(p)
            t = threading.Thread(target=self._read, args=(idx, p), daemon=True)
            t.start()
            self._readers.append(t)
        return self

    def _read(self, idx: int, p: subprocess.Popen[str]) -> None:
        assert p.stdout is not None
        for line in p.stdout:
            try:
                self.latest[idx] = json.loads(line)
            except ValueError:
                log.warning("fleet child %d: %s", idx, line.strip())

    def summary(self) -> dict[str, Any]:
        return _merge(list(self.latest.values()))

    def stop(self) -> dict[str, Any]:
        for p in self.children:
            if p.poll() is None and p.stdin is not None:
                p.stdin.close()  # the child stops its agents and prints a final summary
        for p in self.children:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        for t in self._readers:
            t.join(5)
        return self.summary()


def _child(spec: dict[str, Any]) -> None:
    """Run a slice of a ProcessFleet; JSON summaries on stdout; stop when stdin closes."""
    logging.basicConfig(level=logging.WARNING)
    interval = float(spec.pop("interval", 1.0))
    n = int(spec.pop("n"))
    fleet = Fleet(n, **spec).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: done.set())
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    while not done.wait(interval):
        print(json.dumps(fleet.summary()), flush=True)
    final = fleet.summary()
    fleet.stop()
    print(json.dumps(final), flush=True)


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
