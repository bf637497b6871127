"""Admission compiled for the CPU.

Admission is a sequential idea: within each capacity bucket, candidates in priority
order, each one joining if it still fits. On the CPU it runs as exactly that (numba):
a counting sort by bucket, a stable sort of each contested bucket's keys, one pass.
``admit_local_cpu`` also builds Expanded Drop's candidates (top-k plus the token's
GPU's experts) as it goes, so that the [rows × candidates] tensors the vectorised path
needs are never materialised. The vectorised torch code in ``_capacity`` and
``_scope`` does the same with whole-array sorts on CUDA, where a loop cannot run, and is
the twin the tests compare these with.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

__all__ = ["admit_cpu", "admit_local_cpu"]


@numba.njit(cache=True, nogil=True)
def _admit(bucket: np.ndarray, size: np.ndarray, limit: np.ndarray,
           key: np.ndarray) -> np.ndarray:
    num_buckets = limit.shape[0]
    n = bucket.shape[0]
    demand = np.zeros(num_buckets)
    count = np.zeros(num_buckets + 1, dtype=np.int64)
    for i in range(n):
        demand[bucket[i]] += size[i]
        count[bucket[i] + 1] += 1
    admitted = np.ones(n, dtype=np.bool_)
    # A bucket whose whole demand fits keeps everything (the margin, as in the rounds,
    # keeps summation order from mattering at the edge); the rest are ranked.
    contested = np.zeros(num_buckets, dtype=np.bool_)
    for b in range(num_buckets):
        contested[b] = demand[b] > limit[b] - 1e-12 * max(abs(limit[b]), 1.0)
    start = np.cumsum(count)
    fill = start[:-1].copy()
    members = np.empty(n, dtype=np.int64)
    for i in range(n):                   # stable: input order within a bucket
        b = bucket[i]
        if contested[b]:
            members[fill[b]] = i
            fill[b] += 1
    for b in range(num_buckets):
        if not contested[b]:
            continue
        group = members[start[b]:fill[b]]
        order = np.argsort(key[group], kind="mergesort")   # stable: ties keep input order
        used = 0.0
        for j in order:
            i = group[j]
            if used + size[i] <= limit[b]:
                used += size[i]
            else:
                admitted[i] = False
    return admitted


def admit_cpu(bucket: torch.Tensor, size: torch.Tensor, limit: torch.Tensor,
              key: torch.Tensor) -> torch.Tensor:
    """``admit_by_priority`` on CPU tensors: ``limit`` is each bucket's capacity plus the
    tolerance, ``key`` one int64 per candidate, lower admitted first.

    Returns:
        [N] bool, admitted, in input order.
    """
    return torch.from_numpy(_admit(bucket.numpy(), size.double().numpy(),
                                   limit.double().numpy(), key.numpy()))


@numba.njit(cache=True, nogil=True)
def _refuse_all_but_best(run: np.ndarray, m: int, scores: np.ndarray, cand_ids: np.ndarray,
                         width: int, kept: np.ndarray) -> None:
    """Clear ``kept`` for all of ``run`` (candidate ids r·width + c, ascending) but its
    ``m`` (0 < m < len) highest float32 scores, ties to the earlier candidate: top-m by
    selection."""
    n = run.shape[0]
    neg = np.empty(n, dtype=np.float32)
    for q in range(n):
        neg[q] = -np.float32(scores[run[q] // width, cand_ids.flat[run[q]]])
    threshold = np.partition(neg, m - 1)[m - 1]
    ties_left = m
    for q in range(n):
        ties_left -= neg[q] < threshold
    for q in range(n):
        if neg[q] < threshold:
            continue
        if neg[q] == threshold and ties_left > 0:
            ties_left -= 1
            continue
        kept.flat[run[q]] = False


@numba.njit(cache=True, nogil=True)
def _admit_local(ids: np.ndarray, scores: np.ndarray, table: np.ndarray,
                 row_gpu: np.ndarray, row_source: np.ndarray, tokens_per_layer: int,
                 size: np.ndarray, limit: np.ndarray, row_order: np.ndarray,
                 row_key: np.ndarray):
    num_rows, top_k = ids.shape
    num_experts = scores.shape[1]
    width = top_k + table.shape[2]
    num_buckets = limit.shape[0]
    cand_ids = np.empty((num_rows, width), dtype=np.int64)
    cand = np.zeros((num_rows, width), dtype=np.bool_)
    demand = np.zeros(num_buckets)
    count = np.zeros(num_buckets + 1, dtype=np.int64)
    for r in range(num_rows):
        layer = r // tokens_per_layer if table.shape[0] > 1 else 0
        base = row_source[r] * num_experts
        for c in range(width):
            e = ids[r, c] if c < top_k else table[layer, row_gpu[r], c - top_k]
            cand_ids[r, c] = e
            if c >= top_k:   # a local expert: real, scored, not already among the top-k
                if e < 0 or not scores[r, e] > 0:
                    continue
                duplicate = False
                for j in range(top_k):
                    duplicate |= ids[r, j] == e
                if duplicate:
                    continue
            cand[r, c] = True
            demand[base + e] += size[r]
            count[base + e + 1] += 1
    kept = cand.copy()
    contested = np.zeros(num_buckets, dtype=np.bool_)
    for b in range(num_buckets):
        contested[b] = demand[b] > limit[b] - 1e-12 * max(abs(limit[b]), 1.0)
    start = np.cumsum(count)
    fill = start[:-1].copy()
    members = np.empty(start[-1], dtype=np.int64)        # r * width + c
    member_key = np.empty(start[-1], dtype=np.int64)
    # Rows visited in priority order fill each bucket's list already ordered by the row
    # key; runs of equal row keys are then ordered by score, highest first (stable).
    for r in row_order:
        base = row_source[r] * num_experts
        for c in range(width):
            if cand[r, c]:
                b = base + cand_ids[r, c]
                if contested[b]:
                    members[fill[b]] = r * width + c
                    member_key[fill[b]] = row_key[r]
                    fill[b] += 1
    # A run's candidates all have the same size (the size is the row's, and equal row
    # keys mean equal weights), so once one is refused every later one is too: the run
    # admits its m best-scoring candidates, m counted by the same sequential sums; only
    # a partly admitted run needs ranking, and then only a selection of its top m.
    for b in range(num_buckets):
        if not contested[b]:
            continue
        lo, hi = start[b], fill[b]
        used = 0.0
        j = lo
        while j < hi:
            k = j + 1
            while k < hi and member_key[k] == member_key[j]:
                k += 1
            s = size[members[j] // width]
            m = 0
            while m < k - j and used + s <= limit[b]:
                used += s
                m += 1
            if m == 0:
                for q in range(j, k):
                    kept.flat[members[q]] = False
            elif m < k - j:
                _refuse_all_but_best(members[j:k], m, scores, cand_ids, width, kept)
            j = k
    return cand_ids, cand, kept


def admit_local_cpu(ids: torch.Tensor, scores: torch.Tensor, table: torch.Tensor,
                    row_gpu: torch.Tensor, row_source: torch.Tensor, tokens_per_layer: int,
                    size: torch.Tensor, limit: torch.Tensor, row_order: torch.Tensor,
                    row_key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Expanded Drop's candidates and their admission in one pass, on CPU tensors.

    Args:
        ids: [R, k] the router's choice; scores: [R, E] (ranked as float32);
        table: [B' ∈ {1, B}, G, M] each GPU's experts (-1 padded); row_gpu, row_source:
        [R] each row's GPU and capacity source (layer·S + source); size: [R] float64 each
        row's load per candidate; limit: [NB] capacity plus tolerance; row_order: [R] the
        rows by ascending ``row_key`` ([R] int64), ties by row.
    Returns:
        (candidate ids [R, k + M], candidate mask, kept), as ``local_candidates`` and
        ``admit_by_priority`` with priority (row key, score) give them.
    """
    cand_ids, cand, kept = _admit_local(
        ids.numpy(), scores.float().numpy(), table.numpy(), row_gpu.numpy(),
        row_source.numpy(), max(tokens_per_layer, 1), size.double().numpy(),
        limit.double().numpy(), row_order.numpy(), row_key.numpy())
    return torch.from_numpy(cand_ids), torch.from_numpy(cand), torch.from_numpy(kept)
