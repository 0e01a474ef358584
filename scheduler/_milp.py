"""The exact model, solved by HiGHS through :func:`scipy.optimize.milp`.

Variables (all binary): ``x[t]`` for every triple t = (camera c, algorithm a,
device d); ``y[c,d]`` camera c decoded on d; ``z[a,d]`` model a loaded on d;
``s[k]`` demand k served.

    x[t] <= y[c,d]            x[t] <= z[a,d]           sum_d y[c,d] <= 1
    s[k] <= sum_{t serves k} x[t]
    sum_t fps*ms x[t] <= ms_per_s(d)    sum_a mem z[a,d] <= mem_mb(d)
    sum_c y[c,d] <= streams(d)

Objective: maximise sum_k priority*s[k] + churn_weight * (kept previous triples)
- eps_z * (loaded models) - eps_c * (compute), with the epsilons summing to less
than a tenth of the smallest priority so they only break ties (fewer models first,
then less compute). scipy is imported here only, so the heuristic path stays light.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._problem import Problem


@dataclass
class MilpResult:
    triples: list[int] | None
    optimal: bool
    #: upper bound on the sum of served priorities (None if the solver gave none)
    bound: float | None
    status: int
    message: str


def _all_integral(values: list[float]) -> bool:
    return all(abs(v - round(v)) < 1e-9 for v in values)


def solve_milp(
    prob: Problem,
    time_limit: float,
    keep: set[int] | None = None,
    churn_weight: float = 0.0,
    mip_rel_gap: float | None = None,
) -> MilpResult:
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_array

    T = prob.n_triples
    if T == 0:
        return MilpResult([], True, 0.0, 0, "no placement is possible")
    nd = len(prob.dev_ids)
    t_cam = np.asarray(prob.t_cam, dtype=np.int64)
    t_alg = np.asarray(prob.t_alg, dtype=np.int64)
    t_dev = np.asarray(prob.t_dev, dtype=np.int64)
    t_comp = np.asarray(prob.t_comp, dtype=np.float64)
    t_mem = np.asarray(prob.t_mem, dtype=np.float64)

    cd_keys, t_y = np.unique(t_cam * nd + t_dev, return_inverse=True)
    ad_keys, t_z = np.unique(t_alg * nd + t_dev, return_inverse=True)
    Y, Z = len(cd_keys), len(ad_keys)
    servable = [k for k, r in enumerate(prob.dem_reason) if r is None]
    S = len(servable)
    s_of = {k: i for i, k in enumerate(servable)}
    ox, oy, oz, os_ = 0, T, T + Y, T + Y + Z
    n = T + Y + Z + S

    prio = [prob.dem_prio[k] for k in servable]
    pmin = min(prio) if prio else 1.0
    delta = 0.1 * pmin
    eps_z = delta / (Z + 1)
    total_comp = float(t_comp.sum()) or 1.0
    c = np.zeros(n)
    comp_cost = 0.5 * eps_z * t_comp / total_comp  # all of it < one model: lexicographic
    if comp_cost.min() < 1e-9:
        # too small for the solver's tolerances at this size: half of delta for models,
        # half for compute (models still dominate compute per unit, not strictly overall)
        eps_z = 0.5 * delta / (Z + 1)
        comp_cost = 0.5 * delta * t_comp / total_comp
    c[ox : ox + T] = comp_cost
    c[oz : oz + Z] = eps_z
    c[os_ : os_ + S] = -np.asarray(prio)
    if keep and churn_weight:
        kk = np.fromiter(keep, dtype=np.int64)
        c[ox + kk] -= churn_weight

    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    ub: list[np.ndarray] = []
    r0 = 0

    def block(r: np.ndarray, cc: np.ndarray, v: np.ndarray, nrows: int, upper: np.ndarray) -> None:
        nonlocal r0
        rows.append(r + r0)
        cols.append(cc)
        vals.append(v)
        ub.append(upper)
        r0 += nrows

    ar = np.arange(T)
    ones = np.ones(T)
    # x - y <= 0 ; x - z <= 0
    block(np.concatenate([ar, ar]), np.concatenate([ox + ar, oy + t_y]),
          np.concatenate([ones, -ones]), T, np.zeros(T))  # fmt: skip
    block(np.concatenate([ar, ar]), np.concatenate([ox + ar, oz + t_z]),
          np.concatenate([ones, -ones]), T, np.zeros(T))  # fmt: skip
    # one decoding device per camera
    y_cam = cd_keys // nd
    ucam, y_row = np.unique(y_cam, return_inverse=True)
    block(y_row, oy + np.arange(Y), np.ones(Y), len(ucam), np.ones(len(ucam)))
    # s[k] - sum x <= 0
    if S:
        sr: list[int] = list(range(S))
        sc: list[int] = [os_ + i for i in range(S)]
        sv: list[float] = [1.0] * S
        for t, pr in enumerate(prob.t_pair):
            for k in prob.pair_dems[pr]:
                i = s_of.get(k)
                if i is not None:
                    sr.append(i)
                    sc.append(ox + t)
                    sv.append(-1.0)
        block(np.asarray(sr), np.asarray(sc), np.asarray(sv), S, np.zeros(S))
    # per device compute, memory, streams
    block(t_dev, ox + ar, t_comp, nd, np.asarray(prob.cap_ms, dtype=np.float64))
    z_dev = ad_keys % nd
    z_alg = ad_keys // nd
    # memory of (a, d): the same for every triple of the pair group
    z_mem = np.zeros(Z)
    z_mem[t_z] = t_mem
    block(z_dev, oz + np.arange(Z), z_mem, nd, np.asarray(prob.cap_mem, dtype=np.float64))
    y_dev = cd_keys % nd
    block(y_dev, oy + np.arange(Y), np.ones(Y), nd, np.asarray(prob.cap_streams, dtype=np.float64))
    del z_alg

    if mip_rel_gap is None:
        # Prove the priority sum optimal, not every tie-break: stop once the gap is below
        # 0.4 of the smallest step the objective can move by (1 for integral priorities).
        step = 1.0 if _all_integral(prio) else pmin
        if keep and churn_weight:
            step = min(step, churn_weight)
        mip_rel_gap = max(
            1e-9, 0.4 * step / max(1.0, float(sum(prio)) + churn_weight * len(keep or ()))
        )
    A = csr_array(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(r0, n)
    )
    upper = np.concatenate(ub)
    cons = LinearConstraint(A, -np.inf, upper)
    lower = np.zeros(n)
    if prob.fixed:  # pins are placed, whatever else
        lower[ox + np.fromiter(prob.fixed, dtype=np.int64)] = 1.0
    res = milp(
        c,
        integrality=np.ones(n),
        bounds=Bounds(lower, np.ones(n)),
        constraints=cons,
        options={"time_limit": max(0.1, float(time_limit)), "mip_rel_gap": mip_rel_gap},
    )
    triples: list[int] | None = None
    if res.x is not None:
        triples = [int(t) for t in np.flatnonzero(res.x[:T] > 0.5)]
    bound: float | None = None
    dual = getattr(res, "mip_dual_bound", None)
    if dual is not None and math.isfinite(dual):
        # f = -P + E - w*kept >= dual  =>  P <= -dual + E_max (E_max <= delta)
        b = -float(dual) + delta
        if _all_integral(prio):
            b = math.floor(b + 1e-6)
        bound = min(b, float(sum(prio)))
    elif res.status == 0 and res.fun is not None:
        bound = -float(res.fun) + delta
    return MilpResult(triples, res.status == 0, bound, int(res.status), str(res.message))
