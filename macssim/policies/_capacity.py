"""The routing concepts the capacity policies share, one function each, tensors in and
tensors out: plain top-k, Megatron-Core's capacity, and admission of each capacity
bucket's highest-priority candidates up to its capacity (one fit rule).

Everything is batched over tokens (sorts, cumulative sums, scatters) so the same code
runs on CPU and CUDA; ties are broken by token index, then slot, then expert id, so a
plan is a pure function of its inputs.
"""

from __future__ import annotations

import math

import torch

from macssim._errors import PolicyError

__all__ = [
    "admit_by_priority",
    "check_placement",
    "desc31",
    "gpu_expert_table",
    "megatron_capacity",
    "route_topk",
]


COMPILED_ON_CPU = True
"""Admit on CPU tensors with the compiled loops of ``_first_fit``; False runs the
vectorised torch path (the one CUDA takes) everywhere, so that tests can compare them."""


def use_compiled(t: torch.Tensor) -> bool:
    return COMPILED_ON_CPU and t.device.type == "cpu"


def megatron_capacity(num_tokens: int, top_k: int, num_experts: int,
                      capacity_factor: float) -> int:
    """C = ceil((T·k / E) · γ), as Megatron-Core's ``get_capacity`` computes it with
    ``num_tokens = T·k``; CAI-MoE's ``C = ceil(γ · T · k / E)``."""
    return math.ceil((num_tokens * top_k / num_experts) * capacity_factor)


def route_topk(scores: torch.Tensor, top_k: int,
               topk_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The router's choice: ``topk_ids`` when given (routers with biases or group limits
    choose differently from plain top-k), else the k highest scores, ties to the lower
    expert id.

    Args:
        scores: [T, E] router probabilities.
    Returns:
        [T, k] int64 expert ids, best first when computed here.
    """
    if topk_ids is not None:
        return topk_ids.to(device=scores.device, dtype=torch.long)
    values, ids = torch.topk(scores, min(top_k + 1, scores.shape[1]), dim=1, sorted=True)
    # topk orders equal scores arbitrarily; rows with a tie among the top k (or across
    # the k-th place) are redone with a stable sort, so ties go to the lower expert id.
    tied = (values[:, 1:] == values[:, :-1]).any(dim=1)
    ids = ids[:, :top_k]
    if bool(tied.any()):
        rows = torch.nonzero(tied, as_tuple=True)[0]
        ids[rows] = torch.sort(scores[rows], dim=1, descending=True, stable=True).indices[
            :, :top_k]
    return ids


def _score_bits(x: torch.Tensor) -> torch.Tensor:
    """int64 whose order is the order of the non-negative floats ``x`` (IEEE-754 bits of
    a non-negative float32 are monotone as integers; + 0.0 turns −0.0 into 0.0)."""
    return (x.float() + 0.0).view(torch.int32).long()


def desc31(x: torch.Tensor) -> torch.Tensor:
    """31-bit int64 key, ascending as the non-negative float ``x`` descends."""
    return 0x7FFFFFFF - _score_bits(x)


def _priority_key(priority: list[torch.Tensor], n: int) -> torch.Tensor:
    """One int64 per candidate whose ascending order is the priority keys' descending
    lexicographic order (two 31-bit keys fill 62 bits)."""
    if not priority:
        return torch.zeros(n, dtype=torch.long)
    if len(priority) == 1:
        return desc31(priority[0])
    if len(priority) == 2:
        return (desc31(priority[0]) << 31) | desc31(priority[1])
    raise ValueError("at most two priority keys")


def _group_then_priority(group: torch.Tensor, priority: list[torch.Tensor]) -> torch.Tensor:
    """Stable permutation by ``group`` ascending, then by up to two non-negative float
    priority keys descending; full ties keep input order. Keys are packed into int64 so
    the work is one or two integer sorts."""
    if not priority:
        return torch.sort(group, stable=True).indices
    if len(priority) == 1:
        return torch.sort((group << 31) | desc31(priority[0]), stable=True).indices
    if len(priority) == 2:
        # One full sort by (group, first key); the second key only orders runs that tie
        # on both (text tokens all weigh 1 in MACS), a sort over those entries alone.
        first = (group << 31) | desc31(priority[0])
        perm = torch.sort(first, stable=True).indices
        key = first[perm]
        tied = torch.zeros_like(key, dtype=torch.bool)
        same = key[1:] == key[:-1]
        tied[1:] |= same
        tied[:-1] |= same
        if bool(tied.any()):
            idx = torch.nonzero(tied, as_tuple=True)[0]
            start = torch.cat([torch.ones(1, dtype=torch.bool, device=key.device), ~same])
            run = torch.cumsum(start.long(), dim=0) - 1                    # run id, ascending
            sub = (run[idx] << 31) | desc31(priority[1][perm[idx]])
            perm[idx] = perm[idx][torch.sort(sub, stable=True).indices]
        return perm
    raise ValueError("at most two priority keys")


def admit_by_priority(bucket: torch.Tensor, size: torch.Tensor, capacity: torch.Tensor,
                      priority: list[torch.Tensor]) -> torch.Tensor:
    """Admit each bucket's candidates one by one in priority order, each one that still
    fits: one fit rule (load + size <= capacity at its turn), so a lighter candidate is
    placed after a heavier one only if the heavier one did not fit when its turn came.
    With unit sizes this keeps exactly the top-C of each bucket.

    Args:
        bucket: [N] int64, the capacity bucket each candidate asks for (an expert, or an
            expert as seen from one source GPU).
        size: [N] float64, the load the candidate adds (1 for token counts, w(x) for MACS).
        capacity: [NB] float64, room of each bucket.
        priority: non-negative float keys, most significant first, higher admitted
            first; ties keep input order (token-major).
    Returns:
        [N] bool, admitted.
    """
    n = bucket.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.bool, device=bucket.device)
    if use_compiled(bucket):
        from macssim.policies._first_fit import admit_cpu

        return admit_cpu(bucket, size, capacity + 1e-9 * torch.clamp(capacity, min=1.0),
                         _priority_key(priority, n))
    # A bucket whose whole demand fits admits everything: only the oversubscribed ones
    # need ranking. (The margin keeps float summation order from mattering at the edge.)
    limit = capacity + 1e-9 * torch.clamp(capacity, min=1.0)
    demand = torch.bincount(bucket, weights=size, minlength=capacity.shape[0])
    easy = demand <= limit - 1e-12 * torch.clamp(limit.abs(), min=1.0)
    contested = ~easy[bucket]
    if not bool(contested.any()):
        return torch.ones(n, dtype=torch.bool, device=bucket.device)
    if not bool(contested.all()):
        idx = torch.nonzero(contested, as_tuple=True)[0]   # ascending: input order kept
        admitted = torch.ones(n, dtype=torch.bool, device=bucket.device)
        admitted[idx] = _first_fit_sorted(bucket[idx], size[idx], capacity,
                                          [p[idx] for p in priority])
        return admitted
    return _first_fit_sorted(bucket, size, capacity, priority)


def _segment_cumsum(key: torch.Tensor, values: torch.Tensor, num_keys: int) -> torch.Tensor:
    """Running sum of ``values`` within runs of equal ``key`` (``key`` sorted)."""
    cum = torch.cumsum(values, dim=0)
    counts = torch.bincount(key, minlength=num_keys)
    starts = torch.cumsum(counts, dim=0) - counts
    before = torch.zeros(num_keys, dtype=cum.dtype, device=cum.device)
    has = counts > 0
    before[has] = (cum - values)[starts[has]]
    return cum - before[key]


def _first_fit_sorted(bucket: torch.Tensor, size: torch.Tensor, capacity: torch.Tensor,
                      priority: list[torch.Tensor]) -> torch.Tensor:
    """``admit_by_priority`` on contested buckets, in rounds that each do what a
    sequential pass does up to its next refusal: admit the longest prefix that fits, then
    discard every pending candidate larger than the room left (room only shrinks, so it
    would be refused at its turn too). Unit sizes finish in one round; sizes sorted
    heaviest first (MACS) in a few."""
    perm = _group_then_priority(bucket, priority)
    b_sorted, s_sorted = bucket[perm], size[perm]
    num_buckets = capacity.shape[0]
    tol = 1e-9 * torch.clamp(capacity, min=1.0)
    used = torch.zeros(num_buckets, dtype=torch.float64, device=bucket.device)
    admitted_sorted = torch.zeros(perm.shape[0], dtype=torch.bool, device=bucket.device)
    pending = torch.arange(perm.shape[0], device=bucket.device)
    while pending.numel():
        bb, ss = b_sorted[pending], s_sorted[pending]
        within = used[bb] + _segment_cumsum(bb, ss, num_buckets)
        fits = within <= capacity[bb] + tol[bb]
        # ``within`` rises along each bucket's run, so ``fits`` is a prefix of each run.
        admitted_sorted[pending[fits]] = True
        used.index_add_(0, bb[fits], ss[fits])
        rest = ~fits
        if not bool(rest.any()):
            break
        pending, bb, ss = pending[rest], bb[rest], ss[rest]
        pending = pending[ss <= capacity[bb] + tol[bb] - used[bb]]
    return torch.empty_like(admitted_sorted).scatter_(0, perm, admitted_sorted)


def gpu_expert_table(expert_gpu: torch.Tensor, num_gpus: int | None = None) -> torch.Tensor:
    """[G, M] experts of each GPU, ascending, padded with -1 (M = most experts on a GPU)."""
    num_gpus = max(int(expert_gpu.max()) + 1, num_gpus or 0)
    order = torch.sort(expert_gpu, stable=True).indices
    counts = torch.bincount(expert_gpu, minlength=num_gpus)
    width = max(int(counts.max()), 1)
    starts = torch.cumsum(counts, dim=0) - counts
    col = torch.arange(order.shape[0], device=order.device) - starts[expert_gpu[order]]
    table = torch.full((num_gpus, width), -1, dtype=torch.long, device=expert_gpu.device)
    table[expert_gpu[order], col] = order
    return table


def check_placement(placement: torch.Tensor | None, num_experts: int, policy: str) -> None:
    """Rerouting policies need expert -> GPU for every expert."""
    if placement is None or tuple(placement.shape) != (num_experts,):
        got = None if placement is None else list(placement.shape)
        raise PolicyError(f'{policy}: "placement" must be [E] = [{num_experts}] (expert -> GPU), '
                          f"got {got}")
