"""Seeded generator of realistic-ish instances (small ones and city scale).

Cameras are laid out district by district (``district/sub-zone/site``); each
sees one or two scene types typical of its sub-zone. Scenes have plausible events,
algorithms detect one to three events of a scene family on one to three scenes,
with cost profiles for some hardware targets (GPU: few ms per frame, more memory;
CPU: tens of ms). Devices reach a window of neighbouring cameras, so neighbouring
devices overlap. Policies watch events in districts or sub-zones with priorities
1-5; some ask for events no algorithm detects or in zones without suitable scenes,
as real operators do.
"""

from __future__ import annotations

import random

from ._models import Instance

SCENE_EVENTS: dict[str, list[str]] = {
    "street": ["illegal_parking", "manhole_cover_missing", "road_debris", "pothole",
               "traffic_jam", "accident", "jaywalking", "garbage_overflow"],
    "sidewalk": ["manhole_cover_missing", "street_vendor", "garbage_overflow",
                 "person_fall", "bike_parking_violation", "loitering"],
    "intersection": ["red_light_running", "wrong_way_driving", "accident", "traffic_jam",
                     "jaywalking", "pedestrian_crowd"],
    "highway": ["accident", "wrong_way_driving", "road_debris", "stopped_vehicle",
                "pedestrian_on_highway", "smoke"],
    "parking_lot": ["illegal_parking", "vehicle_break_in", "loitering", "fire", "fight"],
    "sea_front": ["person_in_water", "boat_intrusion", "crowd_gathering", "litter_on_beach",
                  "swimming_in_prohibited_area"],
    "river_bank": ["person_in_water", "illegal_fishing", "floating_debris",
                   "water_level_high", "litter_on_bank"],
    "park": ["fire", "person_fall", "fight", "dog_off_leash", "litter_in_park",
             "crowd_gathering"],
    "lobby": ["cargo_carried", "tailgating", "loitering", "fight", "unattended_bag"],
    "corridor": ["tailgating", "smoke", "person_fall", "unattended_bag"],
    "metro_platform": ["person_on_track", "crowd_gathering", "unattended_bag", "person_fall",
                       "fight"],
    "bus_stop": ["crowd_gathering", "unattended_bag", "vandalism", "person_fall"],
    "construction_site": ["no_helmet", "no_safety_vest", "dust_emission", "fire",
                          "muck_truck_uncovered"],
    "school_gate": ["crowd_gathering", "illegal_parking", "loitering", "fight"],
    "market": ["street_vendor", "crowd_gathering", "garbage_overflow", "fire",
               "occupied_fire_lane"],
    "plaza": ["crowd_gathering", "fight", "vandalism", "kite_flying", "street_vendor"],
    "tunnel": ["smoke", "fire", "stopped_vehicle", "accident", "water_on_road"],
    "bridge": ["person_on_railing", "stopped_vehicle", "accident", "road_debris"],
    "warehouse": ["fire", "smoke", "forklift_speeding", "intrusion", "no_helmet"],
    "residential_gate": ["tailgating", "illegal_parking", "garbage_overflow", "intrusion"],
    "rooftop": ["intrusion", "person_on_railing", "fire", "smoke"],
    "bike_lane": ["bike_parking_violation", "vehicle_in_bike_lane", "person_fall"],
}  # fmt: skip

#: sub-zone kind -> scene types its cameras see
ZONE_KINDS: dict[str, list[str]] = {
    "street": ["street", "sidewalk", "intersection", "bike_lane"],
    "seafront": ["sea_front", "sidewalk", "plaza"],
    "riverside": ["river_bank", "park", "bike_lane"],
    "tower": ["lobby", "corridor", "rooftop", "parking_lot"],
    "metro": ["metro_platform", "corridor", "lobby"],
    "highway": ["highway", "tunnel", "bridge"],
    "park": ["park", "plaza", "sidewalk"],
    "worksite": ["construction_site", "warehouse", "street"],
    "estate": ["residential_gate", "parking_lot", "sidewalk", "school_gate"],
    "market": ["market", "street", "bus_stop"],
}

DISTRICTS = ["longhua", "longgang", "futian", "nanshan", "luohu", "baoan", "yantian",
             "pingshan", "guangming", "dapeng"]  # fmt: skip

QUALIFIERS = ["", "_night", "_heavy_vehicle", "_crowded", "_rain", "_long_range", "_thermal"]

TARGETS = {
    # target: (share of devices, ms factor, mem factor, capacity generator)
    "gpu-sm87": 0.35,
    "gpu-sm86": 0.15,
    "npu-rk3588": 0.15,
    "cpu-x86": 0.25,
    "cpu-arm64": 0.10,
}


def _capacity(rng: random.Random, target: str, small: bool) -> dict:
    if target.startswith("gpu"):
        cap = {"ms_per_s": 1000.0, "mem_mb": rng.choice([4000, 6000, 8000, 16000]),
               "streams": rng.choice([8, 12, 16, 24])}  # fmt: skip
    elif target.startswith("npu"):
        cap = {"ms_per_s": 3000.0, "mem_mb": rng.choice([2000, 4000]),
               "streams": rng.choice([6, 8, 12])}  # fmt: skip
    else:
        cores = rng.choice([2, 4, 8])
        cap = {"ms_per_s": 1000.0 * cores, "mem_mb": rng.choice([4000, 8000, 16000]),
               "streams": rng.choice([4, 8, 12])}  # fmt: skip
    if small:
        cap["streams"] = max(2, cap["streams"] // 3)
    return cap


def _cost(rng: random.Random, target: str) -> dict:
    if target.startswith("gpu"):
        ms = rng.uniform(3.0, 18.0) * (1.0 if target == "gpu-sm86" else 1.4)
        mem = rng.choice([150, 250, 400, 600, 900])
    elif target.startswith("npu"):
        ms = rng.uniform(8.0, 40.0)
        mem = rng.choice([80, 120, 200, 300])
    else:
        ms = rng.uniform(25.0, 140.0) * (1.0 if target == "cpu-x86" else 1.8)
        mem = rng.choice([100, 180, 250, 400])
    return {"ms_per_frame": round(ms, 2), "mem_mb": float(mem)}


def generate_instance(
    cameras: int,
    algorithms: int,
    devices: int,
    seed: int = 0,
    reach: tuple[int, int] | None = None,
) -> Instance:
    """A seeded instance with the given counts.

    ``reach`` is the (min, max) number of cameras each device reaches; by default
    (10, 60) for city scale and a smaller window for small instances.
    """
    if cameras < 1 or algorithms < 1 or devices < 1:
        raise ValueError("cameras, algorithms and devices must be at least 1")
    rng = random.Random(seed)
    small = cameras <= 200
    if reach is None:
        reach = (3, max(4, min(20, cameras // 2))) if small else (10, 60)
    lo, hi = reach
    if lo < 1 or hi < lo:
        raise ValueError("reach must be (min, max) with 1 <= min <= max")

    # zones: district/kind-n ; cameras in sites of a sub-zone
    n_sub = max(2, cameras // 25) if not small else max(2, cameras // 12)
    kinds = list(ZONE_KINDS) if not small else rng.sample(list(ZONE_KINDS), k=rng.randint(2, 3))
    subzones: list[tuple[str, str]] = []
    for i in range(n_sub):
        district = DISTRICTS[i % len(DISTRICTS)] if not small else DISTRICTS[i % 3]
        kind = rng.choice(kinds)
        subzones.append((f"{district}/{kind}-{i}", kind))
    subzones.sort()
    cams: list[dict] = []
    per = cameras / len(subzones)
    for i in range(cameras):
        zpath, kind = subzones[min(len(subzones) - 1, int(i / per))]
        site = f"site-{rng.randrange(3)}"
        scenes = rng.sample(ZONE_KINDS[kind], k=1 if rng.random() < 0.6 else 2)
        cams.append({"id": f"cam-{i:05d}", "zone": f"{zpath}/{site}", "scenes": scenes})

    # A city with many algorithms has finer events (the same base event at night,
    # for heavy vehicles, ...): about five detectors per event at any scale.
    n_var = max(1, min(len(QUALIFIERS), round(algorithms / 150)))
    scene_events = {
        sc: [e + q for e in evs for q in QUALIFIERS[:n_var]] for sc, evs in SCENE_EVENTS.items()
    }
    scene_names = list(SCENE_EVENTS)
    seen_scenes = sorted({s for c in cams for s in c["scenes"]})
    algs: list[dict] = []
    targets = list(TARGETS)
    for i in range(algorithms):
        home = rng.choice(seen_scenes if rng.random() < 0.9 else scene_names)
        family = [home] + [s for s in scene_names if s != home and
                           set(SCENE_EVENTS[s]) & set(SCENE_EVENTS[home])]  # fmt: skip
        scenes = [home] + rng.sample(family[1:], k=min(len(family) - 1, rng.randrange(0, 3)))
        events = rng.sample(scene_events[home], k=min(len(scene_events[home]),
                                                       rng.choice([1, 1, 2, 2, 3])))  # fmt: skip
        n_t = rng.choice([1, 2, 2, 3, 4])
        cost = {t: _cost(rng, t) for t in rng.sample(targets, k=n_t)}
        if rng.random() < 0.02 and not small:
            cost = {}  # an algorithm nobody packaged an engine for yet
        algs.append({
            "id": f"alg-{i:04d}-{events[0].replace('_', '-')}",
            "version": f"{rng.randrange(1, 4)}.{rng.randrange(10)}.{rng.randrange(10)}",
            "detects": events,
            "scenes": scenes,
            "fps": float(rng.choice([1, 2, 2, 4, 5, 5, 8, 10])),
            "cost": cost,
        })  # fmt: skip

    weights = [TARGETS[t] for t in targets]
    devs: list[dict] = []
    for i in range(devices):
        target = rng.choices(targets, weights)[0]
        n_reach = min(cameras, rng.randint(lo, hi))
        center = int((i + 0.5) * cameras / devices)
        start = max(0, min(cameras - n_reach, center - n_reach // 2 + rng.randint(-5, 5)))
        window = list(range(start, start + n_reach))
        devs.append({
            "id": f"edge-{i:04d}",
            "target": target,
            "capacity": _capacity(rng, target, small),
            "cameras": [cams[j]["id"] for j in window],
        })  # fmt: skip

    pols: list[dict] = []
    all_events = sorted({e for evs in scene_events.values() for e in evs})
    for zpath, kind in subzones:
        plausible = sorted({e for s in ZONE_KINDS[kind] for e in scene_events[s]})
        evs = rng.sample(plausible, k=min(len(plausible), rng.randint(3, 8)))
        if rng.random() < 0.3:
            evs.append(rng.choice(all_events))  # maybe not plausible here: no scene match
        if rng.random() < 0.1:
            evs.append("meteor_strike")  # no algorithm detects it
        pols.append({"zone": zpath, "events": evs, "priority": float(rng.randint(1, 5))})
    for district in sorted({z.split("/")[0] for z, _ in subzones}):
        evs = rng.sample(all_events, k=3)
        pols.append({"zone": f"{district}/*", "events": evs, "priority": float(rng.randint(1, 3))})

    return Instance.model_validate(
        {
            "schema": "citybrain.schedule-instance/1",
            "algorithms": algs,
            "cameras": cams,
            "devices": devs,
            "policies": pols,
        }
    )
