"""Demand expansion and the compiled, indexed problem every solver works on.

A demand is (camera, event) with the highest priority of the policies that ask
for it. A *pair* (camera, algorithm) is an algorithm that detects at least one
demanded event of the camera and whose scenes intersect the camera's scenes;
one pair may serve several demands. A *triple* (pair, device) is a pair placed on
a device that reaches the camera, has a cost profile for the device's target and
fits the empty device on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._extensions import Extensions
from ._models import Instance, Plan
from ._zones import match_policies

EPS = 1e-9

REASON_CAPACITY = "capacity: reachable devices have no compute, memory or decode slot left for it"


def reason_no_detector(event: str) -> str:
    return f"no algorithm detects {event}"


def expand_demands(inst: Instance) -> dict[tuple[str, str], float]:
    """(camera id, event) -> priority (the highest of the policies asking for it).

    Order: cameras in instance order, then events in policy order.
    """
    pols = inst.policies
    covering = match_policies([p.zone for p in pols], {c.zone for c in inst.cameras})
    by_zone: dict[str, dict[str, float]] = {}
    for zone, idx in covering.items():
        events: dict[str, float] = {}
        for i in idx:
            pol = pols[i]
            for e in pol.events:
                if events.get(e, 0.0) < pol.priority:
                    events[e] = pol.priority
        by_zone[zone] = events
    out: dict[tuple[str, str], float] = {}
    for cam in inst.cameras:
        for e, p in by_zone[cam.zone].items():
            out[(cam.id, e)] = p
    return out


@dataclass
class Problem:
    inst: Instance
    cam_ids: list[str]
    alg_ids: list[str]
    dev_ids: list[str]
    cam_idx: dict[str, int]
    alg_idx: dict[str, int]
    dev_idx: dict[str, int]
    # devices
    cap_ms: list[float]
    cap_mem: list[float]
    cap_streams: list[int]
    # demands
    dem_cam: list[int]
    dem_event: list[str]
    dem_prio: list[float]
    #: reason a demand can never be served whatever the plan; None if it has a triple
    dem_reason: list[str | None]
    dem_key: dict[tuple[int, str], int]
    cam_dems: list[list[int]]
    # pairs (camera, algorithm)
    pair_cam: list[int]
    pair_alg: list[int]
    pair_dems: list[list[int]]
    pair_idx: dict[tuple[int, int], int]
    # triples (pair, device)
    t_pair: list[int]
    t_cam: list[int]
    t_alg: list[int]
    t_dev: list[int]
    t_comp: list[float]
    t_mem: list[float]
    pair_triples: list[list[int]] = field(default_factory=list)
    reach: list[list[int]] = field(default_factory=list)
    #: pins and exclusions (see :mod:`scheduler._extensions`)
    ext: Extensions = field(default_factory=Extensions)
    #: triples forced by pins (set by :func:`scheduler._pins.place_pins`); every state holds them
    fixed: frozenset[int] = frozenset()
    #: pins that could not be placed: (camera, "pin:<algorithm>", reason)
    pin_unserved: list[tuple[str, str, str]] = field(default_factory=list)

    _t_idx: dict[tuple[int, int, int], int] | None = None

    @property
    def t_idx(self) -> dict[tuple[int, int, int], int]:
        if self._t_idx is None:
            self._t_idx = {
                k: t for t, k in enumerate(zip(self.t_cam, self.t_alg, self.t_dev, strict=True))
            }
        return self._t_idx

    @property
    def n_triples(self) -> int:
        return len(self.t_pair)

    def servable_value(self) -> float:
        """Sum of priorities of demands some triple could serve: an upper bound."""
        return sum(p for p, r in zip(self.dem_prio, self.dem_reason, strict=True) if r is None)

    def triple_of(self, camera: str, algorithm: str, device: str) -> int | None:
        c = self.cam_idx.get(camera)
        a = self.alg_idx.get(algorithm)
        d = self.dev_idx.get(device)
        if c is None or a is None or d is None:
            return None
        return self.t_idx.get((c, a, d))

    def previous_triples(self, previous: Plan | None) -> set[int]:
        """Triples of a previous plan that still exist in this problem."""
        if previous is None:
            return set()
        out: set[int] = set()
        for asg in previous.assignments:
            t = self.triple_of(asg.camera, asg.algorithm, asg.device)
            if t is not None:
                out.add(t)
        return out


def compile_problem(inst: Instance, ext: Extensions | None = None) -> Problem:
    ext = ext or Extensions()
    cams, algs, devs = inst.cameras, inst.algorithms, inst.devices
    cam_idx = {c.id: i for i, c in enumerate(cams)}
    alg_idx = {a.id: i for i, a in enumerate(algs)}
    dev_idx = {d.id: i for i, d in enumerate(devs)}
    cap_ms = [d.capacity.ms_per_s for d in devs]
    cap_mem = [d.capacity.mem_mb for d in devs]
    cap_streams = [d.capacity.streams for d in devs]
    targets = [d.target for d in devs]

    reach: list[list[int]] = [[] for _ in cams]
    for di, d in enumerate(devs):
        for cid in d.cameras:
            reach[cam_idx[cid]].append(di)

    algs_by_event: dict[str, list[int]] = {}
    for ai, a in enumerate(algs):
        for e in dict.fromkeys(a.detects):
            algs_by_event.setdefault(e, []).append(ai)
    alg_scenes = [frozenset(a.scenes) for a in algs]

    demands = expand_demands(inst)
    dem_cam: list[int] = []
    dem_event: list[str] = []
    dem_prio: list[float] = []
    dem_key: dict[tuple[int, str], int] = {}
    cam_dems: list[list[int]] = [[] for _ in cams]
    for (cid, e), p in demands.items():
        c = cam_idx[cid]
        k = len(dem_cam)
        dem_cam.append(c)
        dem_event.append(e)
        dem_prio.append(p)
        dem_key[(c, e)] = k
        cam_dems[c].append(k)
    dem_reason: list[str | None] = [None] * len(dem_cam)

    pair_cam: list[int] = []
    pair_alg: list[int] = []
    pair_dems: list[list[int]] = []

    # (zone, scenes) -> [(alg, [events])], and per event the reason it has no pair
    # keyed by the camera's demanded events and scenes: many cameras share both
    cache: dict[tuple, tuple[list[tuple[int, list[str]]], dict[str, str]]] = {}
    for c, cam in enumerate(cams):
        if not cam_dems[c]:
            continue
        scenes = frozenset(cam.scenes)
        key = (tuple(dem_event[k] for k in cam_dems[c]), scenes)
        hit = cache.get(key)
        if hit is None:
            per_alg: dict[int, list[str]] = {}
            static: dict[str, str] = {}
            for k in cam_dems[c]:
                e = dem_event[k]
                cand = algs_by_event.get(e)
                if not cand:
                    static[e] = reason_no_detector(e)
                    continue
                ok = [a for a in cand if alg_scenes[a] & scenes]
                if not ok:
                    seen = ", ".join(sorted(scenes)) if scenes else "none"
                    static[e] = (
                        f"no scene match: no algorithm detecting {e} applies to the camera's "
                        f"scenes ({seen})"
                    )
                    continue
                for a in ok:
                    per_alg.setdefault(a, []).append(e)
            hit = (sorted(per_alg.items()), static)
            cache[key] = hit
        per_alg_list, static = hit
        if static:
            for k in cam_dems[c]:
                r = static.get(dem_event[k])
                if r is not None:
                    dem_reason[k] = r
        dk = dem_key
        for a, events in per_alg_list:
            pair_cam.append(c)
            pair_alg.append(a)
            pair_dems.append([dk[(c, e)] for e in events])
    pair_idx = {(c, a): i for i, (c, a) in enumerate(zip(pair_cam, pair_alg, strict=True))}
    # a pinned (camera, algorithm) is a candidate even without a scene match or demand
    for pin in ext.pins:
        c, a = cam_idx.get(pin.camera), alg_idx.get(pin.algorithm)
        if c is None or a is None or (c, a) in pair_idx:
            continue
        scenes = frozenset(cams[c].scenes)
        dems = (
            [dem_key[(c, e)] for e in dict.fromkeys(algs[a].detects) if (c, e) in dem_key]
            if alg_scenes[a] & scenes
            else []
        )
        pair_idx[(c, a)] = len(pair_cam)
        pair_cam.append(c)
        pair_alg.append(a)
        pair_dems.append(dems)

    # triples, vectorised: every pair on every device reaching its camera
    nP = len(pair_cam)
    tgt_names = sorted(set(targets))
    tgt_of = {t: i for i, t in enumerate(tgt_names)}
    dev_tgt = np.asarray([tgt_of[t] for t in targets], dtype=np.int64)
    comp_at = np.full((max(1, len(algs)), max(1, len(tgt_names))), np.nan)
    mem_at = np.full_like(comp_at, np.nan)
    for ai, a in enumerate(algs):
        for tname, prof in a.cost.items():
            ti = tgt_of.get(tname)
            if ti is not None:
                comp_at[ai, ti] = a.fps * prof.ms_per_frame
                mem_at[ai, ti] = prof.mem_mb
    rlen = np.asarray([len(r) for r in reach], dtype=np.int64)
    rptr = np.concatenate(([0], np.cumsum(rlen)))
    rdev = np.asarray([d for r in reach for d in r], dtype=np.int64)
    p_cam = np.asarray(pair_cam, dtype=np.int64)
    p_alg = np.asarray(pair_alg, dtype=np.int64)
    rc = rlen[p_cam] if nP else np.zeros(0, dtype=np.int64)
    rep = np.repeat(np.arange(nP), rc)
    offs = np.arange(len(rep)) - np.repeat(np.cumsum(rc) - rc, rc)
    dev = rdev[np.repeat(rptr[p_cam], rc) + offs] if len(rep) else np.zeros(0, dtype=np.int64)
    comp = comp_at[p_alg[rep], dev_tgt[dev]] if len(rep) else np.zeros(0)
    mem = mem_at[p_alg[rep], dev_tgt[dev]] if len(rep) else np.zeros(0)
    has = ~np.isnan(comp)
    cap_ms_a = np.asarray(cap_ms, dtype=np.float64)
    cap_mem_a = np.asarray(cap_mem, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        fits = has & (comp <= cap_ms_a[dev] + EPS) & (mem <= cap_mem_a[dev] + EPS)
    fits_unexcluded = fits
    if ext.exclusions and len(rep):
        nA = max(1, len(algs))
        cam_ex = [
            cam_idx[x.camera] * nA + alg_idx[x.algorithm]
            for x in ext.exclusions
            if x.camera is not None and x.camera in cam_idx and x.algorithm in alg_idx
        ]
        dev_ex = [
            dev_idx[x.device] * nA + alg_idx[x.algorithm]
            for x in ext.exclusions
            if x.camera is None and x.device in dev_idx and x.algorithm in alg_idx
        ]
        t_a = p_alg[rep]
        banned = np.isin(p_cam[rep] * nA + t_a, cam_ex) | np.isin(dev * nA + t_a, dev_ex)
        fits = fits & ~banned
    sel = np.flatnonzero(fits)
    t_pair_a = rep[sel]
    t_dev_a = dev[sel]
    pair_has_profile = np.zeros(nP, dtype=bool)
    pair_has_profile[rep[has]] = True
    counts = np.bincount(t_pair_a, minlength=nP)
    tptr = np.concatenate(([0], np.cumsum(counts))).tolist()
    tl = list(range(len(sel)))
    pair_triples = [tl[tptr[i] : tptr[i + 1]] for i in range(nP)]

    covered: set[int] = set()
    profiled: set[int] = set()
    for pi in np.flatnonzero(counts > 0).tolist():
        covered.update(pair_dems[pi])
    excluded: set[int] = set()
    if fits_unexcluded is not fits:
        for pi in np.unique(rep[np.flatnonzero(fits_unexcluded)]).tolist():
            excluded.update(k for k in pair_dems[pi] if k not in covered)
    for pi in np.flatnonzero(pair_has_profile).tolist():
        profiled.update(pair_dems[pi])
    for k, c in enumerate(dem_cam):
        if dem_reason[k] is not None or k in covered:
            continue
        if not reach[c]:
            dem_reason[k] = f"no reachable device: no device reaches {cams[c].id}"
        elif k in excluded:
            dem_reason[k] = (
                f"policy: every algorithm and device that could watch {cams[c].id} for "
                f"{dem_event[k]} is excluded"
            )
        elif k not in profiled:
            dem_reason[k] = "no cost profile for any reachable device target"
        else:
            dem_reason[k] = (
                f"capacity: no reachable device can hold an algorithm for {dem_event[k]} "
                "even when empty"
            )
    t_cam = p_cam[t_pair_a].tolist()
    t_alg = p_alg[t_pair_a].tolist()
    t_pair = t_pair_a.tolist()
    t_dev = t_dev_a.tolist()
    t_comp = comp[sel].tolist()
    t_mem = mem[sel].tolist()

    return Problem(
        inst=inst,
        cam_ids=[c.id for c in cams],
        alg_ids=[a.id for a in algs],
        dev_ids=[d.id for d in devs],
        cam_idx=cam_idx,
        alg_idx=alg_idx,
        dev_idx=dev_idx,
        cap_ms=cap_ms,
        cap_mem=cap_mem,
        cap_streams=cap_streams,
        dem_cam=dem_cam,
        dem_event=dem_event,
        dem_prio=dem_prio,
        dem_reason=dem_reason,
        dem_key=dem_key,
        cam_dems=cam_dems,
        pair_cam=pair_cam,
        pair_alg=pair_alg,
        pair_dems=pair_dems,
        pair_idx=pair_idx,
        t_pair=t_pair,
        t_cam=t_cam,
        t_alg=t_alg,
        t_dev=t_dev,
        t_comp=t_comp,
        t_mem=t_mem,
        pair_triples=pair_triples,
        reach=reach,
        ext=ext,
    )
