"""Near-linear building blocks for pools of millions.

Everything here reads the pool in batches (so a float32 ``np.memmap`` of any
size works) and is linear in the pool size N, with the expensive quadratic
parts confined to a sample whose size depends on the budget, not on N:

- :func:`kmeans_assign`: k-means (Lloyd) trained on a random sample, then every
  point assigned to its nearest centroid in batches (O(N·k·D), one GEMM per
  batch).
- :func:`nearest_distance`: distance of every point to a reference set, in
  batches (O(N·|ref|·D)); brute force with numpy's BLAS, which on the target
  machine runs ~2x faster than the generic OpenBLAS the faiss-cpu wheel bundles.
  faiss is used where its k-NN top-k search matters (ProbCover's δ-ball graph).
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


def _sq_norms(a: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, a)


def nearest_rows(
    xb: np.ndarray, ref: np.ndarray, ref_sq: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest row of ``ref`` for each row of the in-memory batch ``xb``:
    (position, Euclidean distance). Brute force with one BLAS GEMM (numpy's
    BLAS: on the target machines it is faster than the one bundled with faiss),
    in row blocks so the ``[b, |ref|]`` matrix stays under ~64 MB."""
    xb = _f32(xb)
    ref = _f32(ref)
    if ref_sq is None:
        ref_sq = _sq_norms(ref)
    pos = np.empty(xb.shape[0], dtype=np.int64)
    dist = np.empty(xb.shape[0], dtype=np.float32)
    step = max(1, (16 << 20) // max(1, ref.shape[0]))
    for s in range(0, xb.shape[0], step):
        blk = xb[s : s + step]
        d2 = blk @ ref.T
        d2 *= -2.0
        d2 += ref_sq[None, :]
        j = d2.argmin(axis=1)
        pos[s : s + step] = j
        best = d2[np.arange(blk.shape[0]), j] + _sq_norms(blk)
        dist[s : s + step] = np.sqrt(np.maximum(best, 0.0))
    return pos, dist


def nearest_distance(
    x: np.ndarray, ref: np.ndarray, batch: int = DEFAULT_BATCH
) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance of every row of ``x`` to its nearest row of ``ref``
    and that row's position; ``inf`` / ``-1`` when ``ref`` is empty."""
    n = x.shape[0]
    dist = np.full(n, np.inf, dtype=np.float32)
    pos = np.full(n, -1, dtype=np.int64)
    if ref.shape[0] == 0:
        return dist, pos
    ref = _f32(ref)
    ref_sq = _sq_norms(ref)
    for s, e in iter_batches(n, batch):
        pos[s:e], dist[s:e] = nearest_rows(x[s:e], ref, ref_sq)
    return dist, pos


def knn_mean_distance(xs: np.ndarray, k: int, ref_pos: np.ndarray | None = None) -> np.ndarray:
    """Mean Euclidean distance of every row of the in-memory ``xs`` to its ``k``
    nearest other rows among the reference rows ``xs[ref_pos]`` (all rows when
    ``ref_pos`` is None). Blocked GEMM + partial sort: O(|xs|·|ref|·D)."""
    xs = _f32(xs)
    m = xs.shape[0]
    if ref_pos is None:
        ref_pos = np.arange(m)
    ref = xs[ref_pos]
    r = ref.shape[0]
    k = min(k, r - 1)
    if k <= 0:
        return np.zeros(m, dtype=np.float32)
    self_col = np.full(m, -1, dtype=np.int64)
    self_col[ref_pos] = np.arange(r)
    sq = _sq_norms(xs)
    rsq = sq[ref_pos]
    out = np.empty(m, dtype=np.float32)
    step = max(1, (16 << 20) // r)
    for s in range(0, m, step):
        blk = xs[s : s + step]
        d2 = blk @ ref.T
        d2 *= -2.0
        d2 += rsq[None, :]
        d2 += sq[s : s + step, None]
        rows = np.arange(blk.shape[0])
        cols = self_col[s : s + step]
        own = cols >= 0
        d2[rows[own], cols[own]] = np.inf  # not itself
        part = np.partition(d2, k - 1, axis=1)[:, :k]
        out[s : s + step] = np.sqrt(np.maximum(part, 0.0)).mean(axis=1)
    return out


def pool_mean(x: np.ndarray, batch: int = DEFAULT_BATCH) -> np.ndarray:
    acc = np.zeros(x.shape[1], dtype=np.float64)
    for s, e in iter_batches(x.shape[0], batch):
        acc += np.asarray(x[s:e], dtype=np.float64).sum(axis=0)
    return (acc / x.shape[0]).astype(np.float32)


def lloyd(xs: np.ndarray, k: int, rng: np.random.Generator, niter: int = 15) -> np.ndarray:
    """Plain k-means (Lloyd) on an in-memory sample; empty clusters are
    re-seeded with the points farthest from their centroid. Returns centroids."""
    from scipy import sparse

    m = xs.shape[0]
    k = min(k, m)
    cent = xs[np.sort(rng.choice(m, size=k, replace=False))].copy()
    rows = np.arange(m)
    for _ in range(niter):
        assign, dist = nearest_rows(xs, cent)
        onehot = sparse.csr_matrix((np.ones(m, np.float32), (assign, rows)), shape=(k, m))
        sums = np.asarray(onehot @ xs, dtype=np.float32)
        counts = np.bincount(assign, minlength=k)
        new = cent.copy()
        nz = counts > 0
        new[nz] = sums[nz] / counts[nz, None]
        empty = np.flatnonzero(~nz)
        if empty.size:
            far = np.argsort(-dist, kind="stable")[: empty.size]
            new[empty] = xs[far]
        if np.allclose(new, cent, atol=1e-6):
            cent = new
            break
        cent = new
    return cent


def kmeans_assign(
    x: np.ndarray,
    k: int,
    rng: np.random.Generator,
    *,
    sample_per_centroid: int = 30,
    min_sample: int = 2_000,
    niter: int = 12,
    batch: int = DEFAULT_BATCH,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k-means on a sample (``30·k`` points at least ``2,000``), then assignment
    of the whole pool in batches.

    Returns ``(centroids [k, D], assign [N], distance to own centroid [N])``.
    """
    n = x.shape[0]
    k = max(1, min(k, n))
    m = min(n, max(min_sample, k * sample_per_centroid))
    xs = gather(x, sample_indices(n, m, rng))
    centroids = xs if k == m else lloyd(xs, k, rng, niter)
    dist, assign = nearest_distance(x, centroids, batch)
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
    ``max(10·budget, 10,000)`` selectable points, plus the outliers of a
    coarse k-means partition of the whole pool: the ``max(2·budget, 256)``
    points farthest from their centroid and up to 8 members of every cluster
    holding under 0.1% of the pool (a tiny cluster may be a rare class).
    Cost: O(N·128·D).
    """
    cand = np.flatnonzero(candidate_mask)
    if cand.size <= exact_below:
        return cand
    m = sample_size or max(10 * budget, 10_000)
    chosen = [cand[sample_indices(cand.size, m, rng)]]
    k = min(n_outlier_clusters, cand.size)
    _, assign, dist = kmeans_assign(x, k, rng)
    dist = np.where(candidate_mask, dist, -np.inf)
    n_out = max(2 * budget, 256)
    chosen.append(top_k(dist, n_out))
    sizes = np.bincount(assign, minlength=k)
    small = np.flatnonzero(sizes < max(2, int(0.001 * x.shape[0])))
    if small.size:
        # a few members of every tiny cluster (a tiny cluster may be a rare class)
        members = np.flatnonzero(np.isin(assign, small) & candidate_mask)
        grp = assign[members]
        order = np.lexsort((rng.random(members.size), grp))
        members, grp = members[order], grp[order]
        first = np.searchsorted(grp, grp, side="left")
        keep = members[(np.arange(members.size) - first) < 8]
        chosen.append(keep[:n_out] if keep.size > n_out else keep)
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
    d2 = np.square(np.minimum(min_dist, np.float32(3e18)).astype(np.float32))
    norms = _sq_norms(xc)
    picks = np.empty(min(budget, xc.shape[0]), dtype=np.int64)
    at = np.empty(picks.size, dtype=np.float64)
    nd = np.empty_like(d2)
    for t in range(picks.size):
        j = int(np.argmax(d2))
        picks[t] = j
        at[t] = float(np.sqrt(max(float(d2[j]), 0.0)))
        np.dot(xc, xc[j], out=nd)
        nd *= -2.0
        nd += norms
        nd += norms[j]
        np.minimum(d2, nd, out=d2)
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
