"""Near-linear building blocks for pools of millions.

Everything here reads the pool in batches (so a float32 ``np.memmap`` of any
size works) and is linear in the pool size N, with the expensive quadratic
parts confined to a sample whose size depends on the budget, not on N:

- :func:`kmeans_assign`: faiss k-means trained on a random sample, then every
  point assigned to its nearest centroid in batches (O(N·k·D)).
- :func:`nearest_distance`: distance of every point to a reference set with a
  faiss flat index, in batches (O(N·|ref|·D)).
- :func:`kcenter_candidates`: the candidate set of the approximate k-center:
  a random sample plus the pool's outliers (far from every k-means centroid,
  or members of tiny clusters) so rare, well-separated events are never lost by
  the subsampling.
- :func:`kcenter_greedy`: farthest-first traversal on an in-memory candidate
  matrix, O(m·B·D) via ``|x|² - 2x·c + |c|²`` (no ``[m, D]`` temporaries).
- :func:`batched_probs`: apply a model head to the pool batch by batch, locally
  or fanned out over Ray tasks (same numbers either way).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from ._types import Head

DEFAULT_BATCH = 65_536


def iter_batches(n: int, batch: int = DEFAULT_BATCH) -> Iterator[tuple[int, int]]:
    for start in range(0, n, batch):
        yield start, min(n, start + batch)


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def sample_indices(n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """``m`` distinct sorted indices out of ``n`` (all of them when ``m >= n``)."""
    if m >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(rng.choice(n, size=m, replace=False)).astype(np.int64)


def gather(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` (sorted order is kindest to a memmap) as a float32 array."""
    if idx.size == 0:
        return np.zeros((0, x.shape[1]), dtype=np.float32)
    order = np.argsort(idx, kind="stable")
    out = np.empty((idx.size, x.shape[1]), dtype=np.float32)
    out[order] = x[idx[order]]
    return out


def nearest_distance(
    x: np.ndarray, ref: np.ndarray, batch: int = DEFAULT_BATCH
) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance of every row of ``x`` to its nearest row of ``ref``
    and that row's position; ``inf`` / ``-1`` when ``ref`` is empty."""
    import faiss

    n = x.shape[0]
    dist = np.full(n, np.inf, dtype=np.float32)
    pos = np.full(n, -1, dtype=np.int64)
    if ref.shape[0] == 0:
        return dist, pos
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(_f32(ref))
    for s, e in iter_batches(n, batch):
        d2, i = index.search(_f32(x[s:e]), 1)
        dist[s:e] = np.sqrt(np.maximum(d2[:, 0], 0.0))
        pos[s:e] = i[:, 0]
    return dist, pos


def pool_mean(x: np.ndarray, batch: int = DEFAULT_BATCH) -> np.ndarray:
    acc = np.zeros(x.shape[1], dtype=np.float64)
    for s, e in iter_batches(x.shape[0], batch):
        acc += np.asarray(x[s:e], dtype=np.float64).sum(axis=0)
    return (acc / x.shape[0]).astype(np.float32)


def kmeans_assign(
    x: np.ndarray,
    k: int,
    rng: np.random.Generator,
    *,
    sample_per_centroid: int = 40,
    min_sample: int = 2_000,
    niter: int = 15,
    batch: int = DEFAULT_BATCH,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k-means on a sample, then assignment of the whole pool.

    Returns ``(centroids [k, D], assign [N], distance to own centroid [N])``.
    """
    import faiss

    n, d = x.shape
    k = max(1, min(k, n))
    m = min(n, max(min_sample, k * sample_per_centroid))
    idx = sample_indices(n, m, rng)
    xs = gather(x, idx)
    if k == n:
        centroids = xs
    else:
        km = faiss.Kmeans(
            d,
            k,
            niter=niter,
            seed=int(rng.integers(1, 2**31 - 1)),
            max_points_per_centroid=1 << 30,
            min_points_per_centroid=1,
            verbose=False,
        )
        km.train(xs)
        centroids = _f32(km.centroids)
    index = faiss.IndexFlatL2(d)
    index.add(centroids)
    assign = np.empty(n, dtype=np.int64)
    dist = np.empty(n, dtype=np.float32)
    for s, e in iter_batches(n, batch):
        d2, i = index.search(_f32(x[s:e]), 1)
        assign[s:e] = i[:, 0]
        dist[s:e] = np.sqrt(np.maximum(d2[:, 0], 0.0))
    return centroids, assign, dist


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest scores, largest first (ties: lowest position)."""
    k = min(k, scores.size)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k < scores.size:
        part = np.argpartition(-scores, k - 1)[:k]
    else:
        part = np.arange(scores.size)
    order = np.lexsort((part, -scores[part]))
    return part[order].astype(np.int64)


def kcenter_candidates(
    x: np.ndarray,
    candidate_mask: np.ndarray,
    budget: int,
    rng: np.random.Generator,
    *,
    exact_below: int = 30_000,
    sample_size: int | None = None,
    n_outlier_clusters: int = 128,
) -> np.ndarray:
    """Candidate indices for an approximate k-center over a huge pool.

    Below ``exact_below`` selectable points, every one of them is a candidate
    (the greedy is then exact). Above, a random sample of
    ``max(20·budget, exact_below)`` selectable points, plus the outliers of a
    coarse k-means partition of the whole pool: the ``2·budget`` points farthest
    from their centroid and the members of clusters holding under 0.1% of the
    pool (capped at ``2·budget``). Cost: O(N·128·D).
    """
    cand = np.flatnonzero(candidate_mask)
    if cand.size <= exact_below:
        return cand
    m = sample_size or max(20 * budget, exact_below)
    chosen = [cand[sample_indices(cand.size, m, rng)]]
    k = min(n_outlier_clusters, cand.size)
    _, assign, dist = kmeans_assign(x, k, rng)
    dist = np.where(candidate_mask, dist, -np.inf)
    chosen.append(top_k(dist, 2 * budget))
    sizes = np.bincount(assign, minlength=k)
    small = np.flatnonzero(sizes < max(2, int(0.001 * x.shape[0])))
    if small.size:
        members = np.flatnonzero(np.isin(assign, small) & candidate_mask)
        if members.size > 2 * budget:
            members = members[sample_indices(members.size, 2 * budget, rng)]
        chosen.append(members)
    out = np.unique(np.concatenate(chosen))
    return out[candidate_mask[out]]


def kcenter_greedy(
    xc: np.ndarray, min_dist: np.ndarray, budget: int
) -> tuple[np.ndarray, np.ndarray]:
    """Farthest-first traversal on candidates ``xc`` (in memory, ``[m, D]``).

    ``min_dist``: each candidate's current distance to the covered set (``inf``
    when nothing is covered yet). Returns positions into ``xc`` and the
    distance each had when picked.
    """
    xc = _f32(xc)
    d2 = np.square(min_dist.astype(np.float64))
    norms = np.einsum("ij,ij->i", xc, xc, dtype=np.float64)
    picks = np.empty(min(budget, xc.shape[0]), dtype=np.int64)
    at = np.empty(picks.size, dtype=np.float64)
    for t in range(picks.size):
        j = int(np.argmax(d2))
        picks[t] = j
        at[t] = np.sqrt(max(d2[j], 0.0))
        c = xc[j]
        nd = norms - 2.0 * (xc @ c).astype(np.float64) + norms[j]
        np.minimum(d2, np.maximum(nd, 0.0), out=d2)
        d2[j] = -1.0  # never again
    return picks, at


def _score_range(x: np.ndarray, head: Head, start: int, stop: int, batch: int) -> np.ndarray:
    parts = [np.asarray(head(_f32(x[s:e])), dtype=np.float32) for s, e in _sub(start, stop, batch)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def _sub(start: int, stop: int, batch: int) -> Iterator[tuple[int, int]]:
    for s in range(start, stop, batch):
        yield s, min(stop, s + batch)


def batched_probs(
    x: np.ndarray,
    head: Head,
    *,
    batch: int = DEFAULT_BATCH,
    out: np.ndarray | None = None,
    done: np.ndarray | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    use_ray: bool = False,
    ray_tasks: int = 8,
) -> np.ndarray:
    """Class probabilities of the whole pool, batch by batch.

    ``out`` (e.g. a memmap) receives the rows; ``done`` (bool per batch) marks
    batches to skip and is set as batches finish, so an interrupted scoring can
    resume; ``on_batch(batch_no, n_batches)`` is called after each batch is
    written. With ``use_ray`` the batches are fanned out over Ray tasks (a local
    ``ray.init`` when none is running); results are identical to the local path.
    """
    n = x.shape[0]
    bounds = list(iter_batches(n, batch))
    if done is None:
        done = np.zeros(len(bounds), dtype=bool)
    todo = [b for b in range(len(bounds)) if not done[b]]
    if out is None:
        c = np.asarray(head(_f32(x[:1]))).shape[1]
        out = np.zeros((n, c), dtype=np.float32)
    if not use_ray:
        for b in todo:
            s, e = bounds[b]
            out[s:e] = _score_range(x, head, s, e, batch)
            _mark(out, done, b)
            if on_batch:
                on_batch(b, len(bounds))
        return out
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    remote = ray.remote(_ray_score)
    src = _ray_source(x, ray)
    head_ref = ray.put(head)
    per = max(1, -(-len(todo) // ray_tasks))
    groups = [todo[i : i + per] for i in range(0, len(todo), per)]
    pending = {remote.remote(src, head_ref, [bounds[b] for b in g], batch): g for g in groups if g}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        g = pending.pop(ready[0])
        chunks = ray.get(ready[0])
        for b, chunk in zip(g, chunks, strict=True):
            s, e = bounds[b]
            out[s:e] = chunk
            _mark(out, done, b)
            if on_batch:
                on_batch(b, len(bounds))
    return out


def _mark(out: np.ndarray, done: np.ndarray, b: int) -> None:
    if isinstance(out, np.memmap):
        out.flush()
    done[b] = True
    if isinstance(done, np.memmap):
        done.flush()


def _ray_source(x: np.ndarray, ray) -> object:
    if isinstance(x, np.memmap) and x.filename:
        return ("memmap", str(x.filename), x.dtype.str, x.shape, int(x.offset))
    return ("ref", ray.put(np.ascontiguousarray(x)))


def _ray_score(src, head: Head, ranges: list[tuple[int, int]], batch: int) -> list[np.ndarray]:
    if src[0] == "memmap":
        _, path, dtype, shape, offset = src
        x = np.memmap(path, dtype=np.dtype(dtype), mode="r", shape=tuple(shape), offset=offset)
    else:
        import ray

        x = ray.get(src[1])
    return [_score_range(x, head, s, e, batch) for s, e in ranges]
