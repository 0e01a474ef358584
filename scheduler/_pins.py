"""Placing pins first (see :mod:`scheduler._extensions`)."""

from __future__ import annotations

from ._extensions import INFEASIBLE_PIN, pin_event
from ._problem import Problem
from ._state import State


def _why_no_triple(prob: Problem, c: int, a: int) -> str:
    cam = prob.cam_ids[c]
    alg = prob.inst.algorithms[a]
    if not prob.reach[c]:
        return f"no device reaches camera {cam}"
    targets = {prob.inst.devices[d].target for d in prob.reach[c]}
    costed = [d for d in prob.reach[c] if prob.inst.devices[d].target in alg.cost]
    if not costed:
        return (
            f"{alg.id} has no cost profile for the target of any device reaching {cam} "
            f"({', '.join(sorted(targets))})"
        )
    usable = [d for d in costed if prob.ext.excluded(cam, alg.id, prob.dev_ids[d]) is None]
    if not usable:
        pols = sorted({prob.ext.excluded(cam, alg.id, prob.dev_ids[d]) or "policy" for d in costed})
        return f"excluded by {', '.join(pols)} on every device that reaches {cam}"
    return f"{alg.id} does not fit any device reaching {cam} even when it is empty"


def place_pins(prob: Problem, keep: set[int]) -> None:
    """Choose a triple for every pin (highest priority first) in an otherwise empty
    placement; sets ``prob.fixed`` and ``prob.pin_unserved``.

    A pin keeps its previous device when it still fits (churn); otherwise it goes where
    the camera is already decoded by another pin, else where the model is already
    loaded, else on the device with the most compute left."""
    pins = sorted(enumerate(prob.ext.pins), key=lambda x: (-x[1].priority, x[0]))
    state = State(prob)
    fixed: list[int] = []
    unserved: list[tuple[str, str, str]] = []
    seen: set[tuple[str, str]] = set()
    for _, pin in pins:
        key = (pin.camera, pin.algorithm)
        if key in seen:
            continue
        seen.add(key)
        ev = pin_event(pin.algorithm)
        c = prob.cam_idx.get(pin.camera)
        a = prob.alg_idx.get(pin.algorithm)
        if c is None:
            unserved.append(
                (pin.camera, ev, f"{INFEASIBLE_PIN}: camera {pin.camera} is not in the instance")
            )
            continue
        if a is None:
            unserved.append(
                (
                    pin.camera,
                    ev,
                    f"{INFEASIBLE_PIN}: algorithm {pin.algorithm} is not in the instance "
                    "(unknown, or it detects nothing)",
                )
            )
            continue
        pr = prob.pair_idx.get((c, a))
        triples = prob.pair_triples[pr] if pr is not None else []
        if not triples:
            unserved.append((pin.camera, ev, f"{INFEASIBLE_PIN}: {_why_no_triple(prob, c, a)}"))
            continue
        fit = [t for t in triples if state.fits(t)]
        if not fit:
            where = state.cam_dev[c]
            why = (
                f"camera {pin.camera} is decoded on {prob.dev_ids[where]} for another pin, "
                "which has no capacity left for it"
                if where != -1
                else f"no device reaching {pin.camera} has compute, memory or a decode slot "
                "left after the pins placed before it"
            )
            unserved.append((pin.camera, ev, f"{INFEASIBLE_PIN}: {why}"))
            continue

        def pref(t: int, c: int = c, a: int = a) -> tuple:
            d = prob.t_dev[t]
            return (
                t not in keep,
                state.cam_dev[c] != d,
                a not in state.model_users[d],
                -(prob.cap_ms[d] - state.used_ms[d]) / prob.cap_ms[d],
                d,
            )

        t = min(fit, key=pref)
        state.add(t)
        fixed.append(t)
    prob.fixed = frozenset(fixed)
    prob.pin_unserved = unserved
