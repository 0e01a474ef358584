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

:func:`lagrangian_bound` gives an upper bound at any size in seconds (HiGHS may not
finish its presolve on a city); :func:`solve_milp_isolated` runs HiGHS in a child
process that is stopped at the time limit.
"""

from __future__ import annotations

import math
import time
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


@dataclass
class LagrangianBound:
    #: upper bound on the sum of served priorities (never below the optimum)
    bound: float
    iterations: int
    seconds: float


def lagrangian_bound(
    prob: Problem,
    *,
    target: float = 0.0,
    deadline: float | None = None,
    max_iter: int = 300,
) -> LagrangianBound:
    """An upper bound on the sum of served priorities from a Lagrangian relaxation of
    the per-device capacities, cheap at city scale (numpy, O(triples) per iteration;
    HiGHS may not even finish presolve there).

    Compute (multiplier ``lam[d]``), memory (``mu[d]``) and decode slots (``nu[d]``)
    are dualised. For any multipliers >= 0, the optimum is at most::

        sum_d lam cap_ms + mu cap_mem + nu streams
          + sum_c max(0, max_d [ -nu[d] + sum_k max(0, p_k - min_t w_t / n_t) ])

    where t runs over the triples on d serving demand k of camera c, ``n_t`` is the
    number of demands t's (camera, algorithm) pair serves and ``w_t = lam comp_t +
    mu mem_t / N_ad`` charges each triple its compute and a 1/N_ad share of its model
    (N_ad: cameras that could use model a on d; a loaded model is paid once, so
    ``mem z_ad >= mem sum_t x_t / N_ad``). Sharing a triple's price over the demands it
    serves under-charges a chosen set of triples, so each camera term is an upper
    bound of its relaxed subproblem (one decoding device, any algorithms on it).
    Pins and churn are left out (dropping constraints only raises the bound).

    The multipliers follow projected subgradient steps (Polyak, towards ``target``, a
    known plan's value), in units scaled by each capacity; the smallest value seen is
    returned, floored when every priority is an integer.
    """
    t0 = time.perf_counter()
    servable = np.asarray([r is None for r in prob.dem_reason], dtype=bool)
    prio = np.asarray(prob.dem_prio, dtype=np.float64)
    trivial = float(prio[servable].sum()) if len(prio) else 0.0
    T = prob.n_triples
    if T == 0 or trivial <= 0:
        return LagrangianBound(trivial, 0, time.perf_counter() - t0)
    nd = len(prob.dev_ids)
    t_dev = np.asarray(prob.t_dev, dtype=np.int64)
    t_alg = np.asarray(prob.t_alg, dtype=np.int64)
    t_pair = np.asarray(prob.t_pair, dtype=np.int64)
    t_comp = np.asarray(prob.t_comp, dtype=np.float64)
    t_mem = np.asarray(prob.t_mem, dtype=np.float64)
    cap_ms = np.asarray(prob.cap_ms, dtype=np.float64)
    cap_mem = np.asarray(prob.cap_mem, dtype=np.float64)
    cap_st = np.asarray(prob.cap_streams, dtype=np.float64)
    dem_cam = np.asarray(prob.dem_cam, dtype=np.int64)

    # servable demands of each pair, as flat (pair, demand) incidences
    p_len = np.asarray([len(d) for d in prob.pair_dems], dtype=np.int64)
    p_flat = np.fromiter((k for d in prob.pair_dems for k in d), dtype=np.int64, count=p_len.sum())
    p_of = np.repeat(np.arange(len(p_len)), p_len)
    keep = servable[p_flat]
    p_flat, p_of = p_flat[keep], p_of[keep]
    n_pair = np.bincount(p_of, minlength=len(p_len)).astype(np.float64)
    # (triple, demand) incidences: every servable demand of the triple's pair
    order = np.argsort(p_of, kind="stable")
    p_flat, p_of = p_flat[order], p_of[order]
    pstart = np.searchsorted(p_of, np.arange(len(p_len)))
    cnt = n_pair[t_pair].astype(np.int64)
    inc_t = np.repeat(np.arange(T), cnt)
    offs = np.arange(len(inc_t)) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    inc_k = p_flat[np.repeat(pstart[t_pair], cnt) + offs]
    if len(inc_t) == 0:
        return LagrangianBound(trivial, 0, time.perf_counter() - t0)
    # groups: (demand, device) -> min over its incidences; (camera, device) -> sum
    kd = inc_k * nd + t_dev[inc_t]
    srt = np.argsort(kd, kind="stable")
    inc_t, inc_k, kd = inc_t[srt], inc_k[srt], kd[srt]
    kd_keys, kd_start = np.unique(kd, return_index=True)
    kd_dev = kd_keys % nd
    kd_prio = prio[kd_keys // nd]
    cd = dem_cam[kd_keys // nd] * nd + kd_dev
    cd_keys, kd_cd = np.unique(cd, return_inverse=True)
    cd_dev = cd_keys % nd
    cd_cam = cd_keys // nd
    cam_keys, cd_start = np.unique(cd_cam, return_index=True)
    # N_ad: cameras that could use model a on device d
    ad = t_alg * nd + t_dev
    _, ad_inv, ad_cnt = np.unique(ad, return_inverse=True, return_counts=True)
    mem_share = t_mem / ad_cnt[ad_inv]
    n_t = np.maximum(n_pair[t_pair], 1.0)  # a pinned pair may serve no demand
    comp_n = t_comp / n_t  # per unit of lam
    mem_n = mem_share / n_t  # per unit of mu

    seg = np.repeat(np.arange(len(cam_keys)), np.diff(np.append(cd_start, len(cd_keys))))
    grp = np.repeat(np.arange(len(kd_keys)), np.diff(np.append(kd_start, len(kd))))

    # multipliers in capacity-scaled units: lam = u / cap (so dL/du = 1 - use / cap)
    u = np.zeros(nd)
    v = np.zeros(nd)
    w = np.zeros(nd)
    best = trivial
    theta = 1.0
    since = 0
    it = 0
    while it < max_iter:
        it += 1
        lam, mu, nu = u / cap_ms, v / cap_mem, w / cap_st
        share = lam[t_dev] * comp_n + mu[t_dev] * mem_n  # (T,)
        s_inc = share[inc_t]
        m = np.minimum.reduceat(s_inc, kd_start)
        val = np.maximum(0.0, kd_prio - m)
        inner = np.bincount(kd_cd, weights=val, minlength=len(cd_keys)) - nu[cd_dev]
        cam_best = np.maximum.reduceat(inner, cd_start)
        cam_val = np.maximum(0.0, cam_best)
        L = float(u.sum() + v.sum() + w.sum() + cam_val.sum())
        if L < best - 1e-9:
            best, since = L, 0
        else:
            since += 1
            if since >= 10:
                theta, since = theta / 2, 0
        if deadline is not None and time.perf_counter() >= deadline:
            break
        # subgradient at the relaxed solution: per camera its best device (if > 0), on
        # it every demand with a positive value through its cheapest incidence
        cand = np.flatnonzero((inner == cam_best[seg]) & (cam_val[seg] > 0))
        pick = np.zeros(len(cd_keys), dtype=bool)
        pick[cand[np.unique(seg[cand], return_index=True)[1]]] = True  # first maximiser
        use_st = np.bincount(cd_dev[pick], minlength=nd).astype(np.float64)
        kd_on = pick[kd_cd] & (val > 0)
        at_min = (s_inc == m[grp]) & kd_on[grp]
        # one incidence per active group: the first at the minimum
        idx = np.flatnonzero(at_min)
        g_first = np.unique(grp[idx], return_index=True)[1]
        ti = inc_t[idx[g_first]]
        use_ms = np.bincount(t_dev[ti], weights=comp_n[ti], minlength=nd)
        use_mem = np.bincount(t_dev[ti], weights=mem_n[ti], minlength=nd)
        gu = 1.0 - use_ms / cap_ms
        gv = 1.0 - use_mem / cap_mem
        gw = 1.0 - use_st / cap_st
        norm = float((gu * gu).sum() + (gv * gv).sum() + (gw * gw).sum())
        if norm <= 1e-12:
            break
        step = theta * max(L - target, 1e-6 * max(1.0, L)) / norm
        u = np.maximum(0.0, u - step * gu)
        v = np.maximum(0.0, v - step * gv)
        w = np.maximum(0.0, w - step * gw)
        if theta < 1e-4:
            break
    if _all_integral(prio[servable].tolist()):
        best = math.floor(best + 1e-6)
    return LagrangianBound(min(best, trivial), it, time.perf_counter() - t0)


def solve_milp_isolated(
    prob: Problem,
    time_limit: float,
    keep: set[int] | None = None,
    churn_weight: float = 0.0,
    grace: float = 10.0,
) -> MilpResult:
    """:func:`solve_milp` in a child process stopped ``grace`` seconds after
    ``time_limit``: HiGHS's presolve does not look at its time limit, and on a
    city-scale model it can run for many minutes past it."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # no fork of a process that may hold threads and locks
    with ctx.Pool(1) as pool:
        job = pool.apply_async(solve_milp, (prob, time_limit, keep, churn_weight))
        try:
            return job.get(timeout=time_limit + grace)
        except mp.TimeoutError:
            pool.terminate()
            return MilpResult(
                None,
                False,
                None,
                -1,
                f"HiGHS returned nothing within {time_limit:g} s (+{grace:g} s grace): stopped",
            )
