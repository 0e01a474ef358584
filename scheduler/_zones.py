"""Zone paths and zone globs.

A zone is a slash path such as ``longhua/street-12`` (non-empty segments, no
leading or trailing ``/``, no ``.`` or ``..`` segment). Because the hierarchy is
the path itself (``longhua/street-12`` is inside ``longhua``), it cannot contain
a cycle.

A policy's zone is a glob matched segment by segment with :func:`fnmatch.fnmatchcase`:

- ``*``, ``?`` and ``[...]`` match within ONE segment and never across ``/``
  (``longhua/*`` matches ``longhua/street-12``, ``*`` alone matches ``longhua``);
- a whole segment ``**`` matches any number of segments, zero included
  (``**/street-*`` matches ``longhua/street-12`` and ``a/b/street-1``);
- a glob that matches a zone also covers every zone inside it: ``longhua`` covers
  ``longhua/street-12``, and ``longhua/*`` covers ``longhua/street-12/north``.

Matching is case-sensitive. The matcher itself is the knowledge graph's
(:func:`knowledge_graph.zone_matches`), so that what the graph explains is what the
solver serves; this module adds path/glob validation and the indexed matching of
many globs against many zones.
"""

from __future__ import annotations

from knowledge_graph import zone_matches

__all__ = ["match_policies", "zone_glob_error", "zone_matches", "zone_path_error"]


def zone_path_error(zone: str) -> str | None:
    """Why ``zone`` is not a valid zone path, or ``None``."""
    if not zone:
        return "zone path is empty"
    if zone.startswith("/") or zone.endswith("/"):
        return f"zone path {zone!r} must not start or end with '/'"
    for seg in zone.split("/"):
        if not seg:
            return f"zone path {zone!r} has an empty segment"
        if seg in (".", ".."):
            return f"zone path {zone!r} has a '{seg}' segment"
        if any(ch in seg for ch in "*?[]"):
            return f"zone path {zone!r} contains a glob character"
    return None


def zone_glob_error(glob: str) -> str | None:
    """Why ``glob`` is not a valid zone glob, or ``None``."""
    if not glob:
        return "zone glob is empty"
    if glob.startswith("/") or glob.endswith("/"):
        return f"zone glob {glob!r} must not start or end with '/'"
    if any(not seg for seg in glob.split("/")):
        return f"zone glob {glob!r} has an empty segment"
    return None


def _literal_prefix(glob: str) -> tuple[str, ...]:
    out: list[str] = []
    for seg in glob.split("/"):
        if seg == "**" or any(ch in seg for ch in "*?["):
            break
        out.append(seg)
    return tuple(out)


def match_policies(globs: list[str], zones: list[str] | set[str]) -> dict[str, list[int]]:
    """For each zone, the indices of the globs that cover it (in glob order).

    Indexed by each glob's literal leading segments, so a city with thousands of
    zones and policies is matched without comparing every pair.
    """
    by_prefix: dict[tuple[str, ...], list[int]] = {}
    for i, g in enumerate(globs):
        by_prefix.setdefault(_literal_prefix(g), []).append(i)
    out: dict[str, list[int]] = {}
    for z in zones:
        if z in out:
            continue
        segs = tuple(z.split("/"))
        cands: list[int] = []
        for n in range(len(segs) + 1):
            cands.extend(by_prefix.get(segs[:n], ()))
        cands.sort()
        out[z] = [i for i in cands if zone_matches(globs[i], z)]
    return out
