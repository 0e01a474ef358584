"""A mutable placement over a compiled problem, and turning it into a plan."""

from __future__ import annotations

from ._models import PLAN_SCHEMA, Plan
from ._problem import EPS, REASON_CAPACITY, Problem


class State:
    """Assigned triples with incremental resource accounting.

    ``churn_keep`` holds the triples of a previous plan; ``churn_weight`` is the
    penalty for each of them that is not kept (used by :meth:`key`).
    """

    def __init__(
        self, prob: Problem, churn_keep: set[int] | None = None, churn_weight: float = 0.0
    ) -> None:
        nd = len(prob.dev_ids)
        self.p = prob
        self.used_ms = [0.0] * nd
        self.used_mem = [0.0] * nd
        self.used_streams = [0] * nd
        #: per device: algorithm -> number of cameras using it there
        self.model_users: list[dict[int, int]] = [{} for _ in range(nd)]
        self.cam_dev = [-1] * len(prob.cam_ids)
        #: per camera: algorithm -> triple
        self.cam_algs: list[dict[int, int]] = [{} for _ in prob.cam_ids]
        self.cover = [0] * len(prob.dem_cam)
        self.value = 0.0
        self.n_models = 0
        self.compute = 0.0
        self.churn_keep = churn_keep or set()
        self.churn_weight = churn_weight
        self.kept = 0
        for t in sorted(prob.fixed):  # pins: in every placement, never removed
            self.add(t)

    # ---- queries -------------------------------------------------------
    def fits(self, t: int) -> bool:
        p = self.p
        d = p.t_dev[t]
        c = p.t_cam[t]
        cd = self.cam_dev[c]
        if cd != -1 and cd != d:
            return False
        a = p.t_alg[t]
        if a in self.cam_algs[c]:
            return False
        if self.used_ms[d] + p.t_comp[t] > p.cap_ms[d] + EPS:
            return False
        if a not in self.model_users[d] and self.used_mem[d] + p.t_mem[t] > p.cap_mem[d] + EPS:
            return False
        if cd == -1 and self.used_streams[d] + 1 > p.cap_streams[d]:
            return False
        return True

    def gain(self, t: int) -> float:
        """Priority newly served by adding triple ``t`` (plus churn bonus)."""
        cover = self.cover
        prio = self.p.dem_prio
        g = 0.0
        for k in self.p.pair_dems[self.p.t_pair[t]]:
            if cover[k] == 0:
                g += prio[k]
        if t in self.churn_keep:
            g += self.churn_weight
        return g

    def loss(self, t: int) -> float:
        """Priority no longer served when removing assigned triple ``t`` (plus churn)."""
        cover = self.cover
        prio = self.p.dem_prio
        g = 0.0
        for k in self.p.pair_dems[self.p.t_pair[t]]:
            if cover[k] == 1:
                g += prio[k]
        if t in self.churn_keep:
            g += self.churn_weight
        return g

    def key(self) -> tuple[float, int, float]:
        """Lexicographic quality: value minus churn penalty, fewer models, less compute."""
        pen = self.churn_weight * (len(self.churn_keep) - self.kept)
        return (round(self.value - pen, 9), -self.n_models, -round(self.compute, 6))

    def triples(self) -> list[int]:
        return [t for algs in self.cam_algs for t in algs.values()]

    # ---- updates -------------------------------------------------------
    def add(self, t: int) -> None:
        p = self.p
        d = p.t_dev[t]
        c = p.t_cam[t]
        a = p.t_alg[t]
        if self.cam_dev[c] == -1:
            self.cam_dev[c] = d
            self.used_streams[d] += 1
        self.cam_algs[c][a] = t
        self.used_ms[d] += p.t_comp[t]
        self.compute += p.t_comp[t]
        mu = self.model_users[d]
        n = mu.get(a, 0)
        if n == 0:
            self.used_mem[d] += p.t_mem[t]
            self.n_models += 1
        mu[a] = n + 1
        cover = self.cover
        prio = p.dem_prio
        for k in p.pair_dems[p.t_pair[t]]:
            if cover[k] == 0:
                self.value += prio[k]
            cover[k] += 1
        if t in self.churn_keep:
            self.kept += 1

    def remove(self, t: int) -> None:
        p = self.p
        d = p.t_dev[t]
        c = p.t_cam[t]
        a = p.t_alg[t]
        del self.cam_algs[c][a]
        if not self.cam_algs[c]:
            self.cam_dev[c] = -1
            self.used_streams[d] -= 1
        self.used_ms[d] -= p.t_comp[t]
        self.compute -= p.t_comp[t]
        mu = self.model_users[d]
        n = mu[a] - 1
        if n == 0:
            del mu[a]
            self.used_mem[d] -= p.t_mem[t]
            self.n_models -= 1
        else:
            mu[a] = n
        cover = self.cover
        prio = p.dem_prio
        for k in p.pair_dems[p.t_pair[t]]:
            cover[k] -= 1
            if cover[k] == 0:
                self.value -= prio[k]
        if t in self.churn_keep:
            self.kept -= 1

    def copy_assignment(self) -> list[int]:
        return sorted(self.triples())

    @classmethod
    def from_triples(
        cls,
        prob: Problem,
        triples: list[int],
        churn_keep: set[int] | None = None,
        churn_weight: float = 0.0,
    ) -> State:
        s = cls(prob, churn_keep, churn_weight)
        for t in triples:
            if t not in prob.fixed:
                s.add(t)
        return s


def to_plan(state: State, name: str, seconds: float, optimal: bool, bound: float | None) -> Plan:
    p = state.p
    algs = p.inst.algorithms
    assignments = [
        {
            "camera": p.cam_ids[p.t_cam[t]],
            "algorithm": p.alg_ids[p.t_alg[t]],
            "version": algs[p.t_alg[t]].version,
            "device": p.dev_ids[p.t_dev[t]],
        }
        for t in sorted(state.triples(), key=lambda t: (p.t_dev[t], p.t_cam[t], p.t_alg[t]))
    ]
    served: list[dict] = []
    unserved: list[dict] = []
    objective = 0.0
    cam_ids, events, reasons = p.cam_ids, p.dem_event, p.dem_reason
    for k, c in enumerate(p.dem_cam):
        if state.cover[k] > 0:
            served.append({"camera": cam_ids[c], "event": events[k]})
            objective += p.dem_prio[k]
        else:
            unserved.append(
                {"camera": cam_ids[c], "event": events[k], "reason": reasons[k] or REASON_CAPACITY}
            )
    for cam, ev, why in p.pin_unserved:
        unserved.append({"camera": cam, "event": ev, "reason": why})
    if bound is not None:
        bound = max(bound, objective)
    return Plan.model_validate(
        {
            "schema": PLAN_SCHEMA,
            "assignments": assignments,
            "served": served,
            "unserved": unserved,
            "objective": objective,
            "solver": {
                "name": name,
                "seconds": round(seconds, 4),
                "optimal": optimal,
                "bound": bound,
            },
        }
    )
