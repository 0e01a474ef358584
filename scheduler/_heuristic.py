"""Fast placement for city scale: greedy by priority-per-cost with consolidation,
then large-neighbourhood local search; and the plain baseline of the benchmarks.

Greedy score of a triple (camera c, algorithm a, device d)::

    value of the demands it newly serves (+ churn weight if it was in the previous plan)
    ---------------------------------------------------------------------------------
      fps*ms/ms_per_s(d)                 * (1 + wu * compute share of d already used)
    + wm * mem/mem_mb(d) / k(a,d)        * (1 + wu * memory share used)  [a not loaded on d]
    + ws / streams(d) / n(c,d)           * (1 + wu * decode slots used)  [c not decoded on d]

where k(a,d) is how many cameras reachable by d could use a (the model memory is
shared by all of them) and n(c,d) how many algorithms camera c could run on d (they
share the decode slot). Loading a model or decoding a camera on a device makes
the other placements that share it cheaper (consolidation): they are re-scored
and queued again. Otherwise scores only fall (demands get served, devices fill
up), so a lazy queue is exact: an entry is re-scored when it reaches the top.

Local search ruins all placements of the cameras one device reaches and repairs
them greedily with perturbed weights; the result is kept when the lexicographic
key (served priority minus churn penalty, fewer models, less compute) does not get
worse.
"""

from __future__ import annotations

import heapq
import random
import time

import numpy as np

from ._problem import Problem
from ._state import State

_REL = 1e-9


class _Index:
    """Groupings of triples by (algorithm, device) and (camera, device)."""

    def __init__(self, prob: Problem) -> None:
        nd = max(1, len(prob.dev_ids))
        t_alg = np.asarray(prob.t_alg, dtype=np.int64)
        t_cam = np.asarray(prob.t_cam, dtype=np.int64)
        t_dev = np.asarray(prob.t_dev, dtype=np.int64)
        self.by_ad = self._group(t_alg * nd + t_dev)
        self.by_cd = self._group(t_cam * nd + t_dev)
        self.nd = nd
        cam_pairs: list[list[int]] = [[] for _ in prob.cam_ids]
        for p, c in enumerate(prob.pair_cam):
            cam_pairs[c].append(p)
        self.cam_pairs = cam_pairs
        self.dev_cams: list[list[int]] = [
            [prob.cam_idx[cid] for cid in d.cameras] for d in prob.inst.devices
        ]

    @staticmethod
    def _group(keys: np.ndarray) -> dict[int, list[int]]:
        if len(keys) == 0:
            return {}
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        cut = np.flatnonzero(np.diff(sk)) + 1
        starts = np.concatenate(([0], cut))
        ends = np.concatenate((cut, [len(sk)]))
        ol = order.tolist()
        return {
            int(k): ol[s:e]
            for k, s, e in zip(sk[starts].tolist(), starts.tolist(), ends.tolist(), strict=True)
        }

    def ad(self, a: int, d: int) -> list[int]:
        return self.by_ad.get(a * self.nd + d, [])

    def cd(self, c: int, d: int) -> list[int]:
        return self.by_cd.get(c * self.nd + d, [])


class Greedy:
    def __init__(self, state: State, index: _Index) -> None:
        self.s = state
        self.ix = index
        p = state.p
        self.t_dev = p.t_dev
        self.t_cam = p.t_cam
        self.t_alg = p.t_alg
        self.t_comp = p.t_comp
        self.t_mem = p.t_mem
        self.cap_ms = p.cap_ms
        self.cap_mem = p.cap_mem
        self.cap_streams = p.cap_streams
        self.wm = 1.0
        self.ws = 1.0
        self.noise = 0.0
        self.salt = 0.0
        #: scarcity: how much a device's use so far makes its resources dearer
        self.wu = 4.0
        #: triples added by :meth:`run`, in order (for undoing a local-search move)
        self.log: list[int] = []

    def score(self, t: int) -> float:
        s = self.s
        g = s.gain(t)
        if g <= 0:
            return 0.0
        d = self.t_dev[t]
        a = self.t_alg[t]
        wu = self.wu
        cost = self.t_comp[t] / self.cap_ms[d]
        if wu:
            # scarcity in steps of 1/8 of a device, so that queued scores go stale rarely
            cost *= 1.0 + wu * int(8.0 * s.used_ms[d] / self.cap_ms[d]) / 8.0
        if a not in s.model_users[d]:
            k = len(self.ix.ad(a, d)) or 1
            m = self.wm * self.t_mem[t] / self.cap_mem[d] / k
            if wu:
                m *= 1.0 + wu * int(8.0 * s.used_mem[d] / self.cap_mem[d]) / 8.0
            cost += m
        c = self.t_cam[t]
        if s.cam_dev[c] != d:
            # the decode slot is shared by every algorithm the camera could run on d
            m = self.ws / self.cap_streams[d] / (len(self.ix.cd(c, d)) or 1)
            if wu:
                m *= 1.0 + wu * int(8.0 * s.used_streams[d] / self.cap_streams[d]) / 8.0
            cost += m
        sc = g / (cost + 1e-12)
        if self.noise:
            # a fixed pseudo-random factor per triple and round keeps scores consistent
            sc *= 1.0 + self.noise * (((t + 1) * 0.6180339887 + self.salt) % 1.0)
        return sc

    def initial_scores(self, cand: list[int]) -> tuple[list[int], list[float]]:
        """Candidates sorted by their current score (only positive ones)."""
        scored = [(self.score(t), t) for t in cand]
        scored = [x for x in scored if x[0] > 0]
        scored.sort(key=lambda x: (-x[0], x[1]))
        return [t for _, t in scored], [sc for sc, _ in scored]

    def run(
        self,
        order: list[int],
        scores: list[float],
        heap: list | None = None,
        deadline: float | None = None,
    ) -> int:
        """Greedy over ``order`` (sorted, with upper-bound ``scores``) + a heap of fresh entries.

        Past ``deadline`` it hurries: entries are taken in queue order without being
        re-queued when their score fell, so the remaining work is one pass.
        """
        s = self.s
        hurry = False
        tick = 0
        heap = heap if heap is not None else []
        cam_dev = s.cam_dev
        cam_algs = s.cam_algs
        model_users = s.model_users
        t_dev, t_cam, t_alg = self.t_dev, self.t_cam, self.t_alg
        ix = self.ix
        score = self.score
        i, n = 0, len(order)
        added = 0
        while True:
            if heap and (i >= n or -heap[0][0] >= scores[i]):
                neg, t = heapq.heappop(heap)
                sc = -neg
            elif i < n:
                t = order[i]
                sc = scores[i]
                i += 1
            else:
                break
            c = t_cam[t]
            d = t_dev[t]
            cd = cam_dev[c]
            if cd != -1 and cd != d:
                continue
            a = t_alg[t]
            if a in cam_algs[c]:
                continue
            cur = score(t)
            if cur <= 0:
                continue
            if deadline is not None and not hurry:
                tick += 1
                if tick % 1024 == 0 and time.perf_counter() > deadline:
                    hurry = True
            if not hurry and cur < sc * (1 - _REL) - 1e-12:
                heapq.heappush(heap, (-cur, t))
                continue
            if not s.fits(t):
                continue
            new_model = a not in model_users[d]
            s.add(t)
            self.log.append(t)
            added += 1
            if new_model:
                for t2 in ix.ad(a, d):
                    if t2 != t and cam_dev[t_cam[t2]] in (-1, d):
                        s2 = score(t2)
                        if s2 > 0:
                            heapq.heappush(heap, (-s2, t2))
            if cd == -1:
                for t2 in ix.cd(c, d):
                    if t2 != t and t_alg[t2] not in cam_algs[c]:
                        s2 = score(t2)
                        if s2 > 0:
                            heapq.heappush(heap, (-s2, t2))
        return added


def _full_initial(prob: Problem, index: _Index, state: State, wm: float, ws: float):
    """Every candidate with its score in the current state, sorted; vectorised.

    Same formula as :meth:`Greedy.score` (without noise): demands already served,
    models already loaded and cameras already decoded are taken into account.
    """
    n = prob.n_triples
    if n == 0:
        return [], []
    prio = np.asarray(prob.dem_prio, dtype=np.float64)
    uncovered = np.asarray(state.cover, dtype=np.int64) == 0
    pair_val = np.zeros(len(prob.pair_cam))
    lens = np.fromiter((len(x) for x in prob.pair_dems), dtype=np.int64, count=len(prob.pair_dems))
    flat = np.fromiter(
        (k for x in prob.pair_dems for k in x), dtype=np.int64, count=int(lens.sum())
    )
    owner = np.repeat(np.arange(len(prob.pair_dems)), lens)
    np.add.at(pair_val, owner, prio[flat] * uncovered[flat])
    t_pair = np.asarray(prob.t_pair, dtype=np.int64)
    t_dev = np.asarray(prob.t_dev, dtype=np.int64)
    t_alg = np.asarray(prob.t_alg, dtype=np.int64)
    t_cam = np.asarray(prob.t_cam, dtype=np.int64)
    val = pair_val[t_pair]
    if state.churn_keep:
        keep = np.fromiter(state.churn_keep, dtype=np.int64)
        val[keep] += state.churn_weight
    cap_ms = np.asarray(prob.cap_ms)[t_dev]
    cap_mem = np.asarray(prob.cap_mem)[t_dev]
    streams = np.asarray(prob.cap_streams, dtype=np.float64)[t_dev]
    adkey = t_alg * index.nd + t_dev
    _, inv, counts = np.unique(adkey, return_inverse=True, return_counts=True)
    k = counts[inv].astype(np.float64)
    cdkey = t_cam * index.nd + t_dev
    _, inv, counts = np.unique(cdkey, return_inverse=True, return_counts=True)
    kc = counts[inv].astype(np.float64)
    mem_term = wm * np.asarray(prob.t_mem) / cap_mem / k
    stream_term = ws / streams / kc
    cam_dev = np.asarray(state.cam_dev, dtype=np.int64)[t_cam]
    if state.n_models:
        loaded = np.fromiter(
            (a * index.nd + d for d, mu in enumerate(state.model_users) for a in mu),
            dtype=np.int64,
        )
        mem_term[np.isin(adkey, loaded)] = 0.0
        stream_term[cam_dev == t_dev] = 0.0
    cost = np.asarray(prob.t_comp) / cap_ms + mem_term + stream_term + 1e-12
    sc = val / cost
    sc[(cam_dev != -1) & (cam_dev != t_dev)] = 0.0  # the camera is decoded elsewhere
    live = np.flatnonzero(sc > 0)
    order = live[np.lexsort((live, -sc[live]))]
    return order.tolist(), (sc[order] * (1 + 1e-9)).tolist()


def _seed(state: State, keep: set[int]) -> None:
    """Add the previous plan's triples that still exist and fit, camera by camera."""
    p = state.p
    for t in sorted(keep, key=lambda t: (p.t_cam[t], p.t_alg[t])):
        if state.fits(t) and state.gain(t) > 0:
            state.add(t)


def greedy_solve(
    prob: Problem,
    keep: set[int] | None = None,
    churn_weight: float = 0.0,
    wm: float = 1.0,
    ws: float = 1.0,
    index: _Index | None = None,
    wu: float = 4.0,
    deadline: float | None = None,
) -> State:
    index = index or _Index(prob)
    state = State(prob, keep, churn_weight)
    g = Greedy(state, index)
    g.wm, g.ws, g.wu = wm, ws, wu
    if keep:
        _seed(state, keep)
    order, scores = _full_initial(prob, index, state, wm, ws)
    g.run(order, scores, deadline=deadline)
    return state


def local_search(
    state: State,
    index: _Index,
    deadline: float,
    seed: int = 0,
    max_rounds: int | None = None,
    stale_limit: int | None = None,
) -> int:
    """Ruin-and-recreate around devices until ``deadline``; returns improvements kept."""
    p = state.p
    rng = random.Random(seed)
    g = Greedy(state, index)
    nd = len(p.dev_ids)
    if nd == 0 or p.n_triples == 0:
        return 0
    # neighbouring devices share cameras
    cam_devs: list[list[int]] = [[] for _ in p.cam_ids]
    for d in range(nd):
        for c in index.dev_cams[d]:
            cam_devs[c].append(d)
    order = list(range(nd))
    rng.shuffle(order)
    improved = 0
    rounds = 0
    stale = 0
    stale_limit = max(50, 10 * nd) if stale_limit is None else stale_limit
    while time.perf_counter() < deadline and stale < stale_limit:
        if max_rounds is not None and rounds >= max_rounds:
            break
        d = order[rounds % nd]
        rounds += 1
        if rounds % nd == 0:
            rng.shuffle(order)
        cams = index.dev_cams[d]
        if not cams:
            stale += 1
            continue
        if rng.random() < 0.5:
            c0 = rng.choice(cams)
            d2 = rng.choice(cam_devs[c0])
            if d2 != d:
                cams = list(dict.fromkeys(cams + index.dev_cams[d2]))
        before = state.key()
        kept_before = state.kept
        fixed = p.fixed
        removed = [t for c in cams for t in state.cam_algs[c].values() if t not in fixed]
        for t in removed:
            state.remove(t)
        cand = [t for c in cams for pr in index.cam_pairs[c] for t in p.pair_triples[pr]]
        g.wm = rng.choice((0.25, 0.5, 1.0, 2.0, 4.0))
        g.ws = rng.choice((0.25, 0.5, 1.0, 2.0, 4.0))
        g.wu = rng.choice((0.0, 2.0, 4.0, 8.0))
        g.noise = rng.choice((0.0, 0.0, 0.1, 0.3))
        g.salt = rng.random()
        o, sc = g.initial_scores(cand)
        g.log = []
        g.run(o, sc)
        after = state.key()
        # sideways moves are fine, but not ones that give up previous assignments
        if after < before or (after == before and state.kept < kept_before):
            for t in reversed(g.log):
                state.remove(t)
            for t in removed:
                state.add(t)
            stale += 1
        elif after > before:
            improved += 1
            stale = 0
        else:
            stale += 1
    return improved


def heuristic_solve(
    prob: Problem,
    keep: set[int] | None = None,
    churn_weight: float = 0.0,
    deadline: float | None = None,
    seed: int = 0,
    multistart: bool = False,
) -> State:
    """Greedy (several weightings when ``multistart``) then local search until ``deadline``."""
    index = _Index(prob)
    weights = [(1.0, 1.0, 4.0)]
    if multistart:
        weights += [
            (1.0, 1.0, 0.0), (1.0, 1.0, 10.0), (0.3, 1.0, 4.0), (3.0, 1.0, 4.0),
            (1.0, 0.3, 4.0), (1.0, 3.0, 4.0), (0.0, 0.0, 0.0),
        ]  # fmt: skip
    best: State | None = None
    for wm, ws, wu in weights:
        if best is not None and deadline is not None and time.perf_counter() > deadline:
            break
        st = greedy_solve(prob, keep, churn_weight, wm, ws, index, wu, deadline)
        if best is None or st.key() > best.key():
            best = st
    assert best is not None
    if deadline is not None:
        local_search(best, index, deadline, seed)
    return best


def baseline_solve(prob: Problem) -> State:
    """Demands in priority order, first device that fits, preferring one that already
    decodes the camera and holds the model."""
    state = State(prob)
    dem_pairs: list[list[int]] = [[] for _ in prob.dem_cam]
    for pr, ks in enumerate(prob.pair_dems):
        for k in ks:
            dem_pairs[k].append(pr)
    order = sorted(range(len(prob.dem_cam)), key=lambda k: (-prob.dem_prio[k], k))
    t_dev, t_alg = prob.t_dev, prob.t_alg
    for k in order:
        if state.cover[k] or not dem_pairs[k]:
            continue
        c = prob.dem_cam[k]
        cd = state.cam_dev[c]
        cands = [t for pr in dem_pairs[k] for t in prob.pair_triples[pr]]
        if cd != -1:
            cands = [t for t in cands if t_dev[t] == cd]
        cands.sort(key=lambda t: (t_alg[t] not in state.model_users[t_dev[t]], t_dev[t], t))
        for t in cands:
            if state.fits(t):
                state.add(t)
                break
    return state
