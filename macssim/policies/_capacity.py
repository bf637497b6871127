"""The routing concepts the capacity policies share, one function each, tensors in and
tensors out: plain top-k, Megatron-Core's capacity, admission of an expert's
highest-priority assignments up to its capacity, and local rerouting of overflow.

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
    "megatron_capacity",
    "reroute_local",
    "route_topk",
]


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


def _desc31(x: torch.Tensor) -> torch.Tensor:
    """31-bit int64 key, ascending as the non-negative float ``x`` descends."""
    return 0x7FFFFFFF - _score_bits(x)


def _group_then_priority(group: torch.Tensor, priority: list[torch.Tensor]) -> torch.Tensor:
    """Stable permutation by ``group`` ascending, then by up to two non-negative float
    priority keys descending; full ties keep input order. Keys are packed into int64 so
    the work is one or two integer sorts."""
    if not priority:
        return torch.sort(group, stable=True).indices
    if len(priority) == 1:
        return torch.sort((group << 31) | _desc31(priority[0]), stable=True).indices
    if len(priority) == 2:
        by_priority = torch.sort((_desc31(priority[0]) << 31) | _desc31(priority[1]),
                                 stable=True).indices
        grp = group[by_priority]
        if group.numel() and int(group.max()) < 2**31:
            grp = grp.int()  # a stable sort of int32 keys is ~3x faster than of int64
        return by_priority[torch.sort(grp, stable=True).indices]
    raise ValueError("at most two priority keys")


def admit_by_priority(expert: torch.Tensor, size: torch.Tensor, capacity: torch.Tensor,
                      priority: list[torch.Tensor]) -> torch.Tensor:
    """Admit each expert's assignments in priority order while its load stays within
    capacity; everything after the first one that does not fit overflows.

    Args:
        expert: [N] int64, the expert each assignment asks for.
        size: [N] float64, the load the assignment adds (1 for token counts, w(x) for MACS).
        capacity: [E] float64, room each expert has.
        priority: non-negative float keys, most significant first, higher admitted
            first; ties keep input order (token-major).
    Returns:
        [N] bool, admitted.
    """
    n = expert.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.bool, device=expert.device)
    # An expert whose whole demand fits admits everything: only the oversubscribed ones
    # need ranking. (The margin keeps float summation order from mattering at the edge.)
    limit = capacity + 1e-9 * torch.clamp(capacity, min=1.0)
    demand = torch.bincount(expert, weights=size, minlength=capacity.shape[0])
    easy = demand <= limit - 1e-12 * torch.clamp(limit.abs(), min=1.0)
    contested = ~easy[expert]
    if not bool(contested.any()):
        return torch.ones(n, dtype=torch.bool, device=expert.device)
    if not bool(contested.all()):
        idx = torch.nonzero(contested, as_tuple=True)[0]   # ascending: input order kept
        admitted = torch.ones(n, dtype=torch.bool, device=expert.device)
        admitted[idx] = _admit_sorted(expert[idx], size[idx], capacity,
                                      [p[idx] for p in priority])
        return admitted
    return _admit_sorted(expert, size, capacity, priority)


def _admit_sorted(expert: torch.Tensor, size: torch.Tensor, capacity: torch.Tensor,
                  priority: list[torch.Tensor]) -> torch.Tensor:
    """``admit_by_priority`` on contested experts: stable ranking, running load, compare."""
    perm = _group_then_priority(expert, priority)
    e_sorted = expert[perm]
    cum = torch.cumsum(size[perm], dim=0)
    num_experts = capacity.shape[0]
    counts = torch.bincount(e_sorted, minlength=num_experts)
    starts = torch.cumsum(counts, dim=0) - counts
    # Load before each expert's segment, so ``within`` is the running load inside it.
    before = torch.zeros(num_experts, dtype=cum.dtype, device=cum.device)
    has = counts > 0
    before[has] = (cum - size[perm])[starts[has]]
    within = cum - before[e_sorted]
    # A relative tolerance absorbs float summation error on weighted loads; counts are exact.
    tol = 1e-9 * torch.clamp(capacity[e_sorted], min=1.0)
    admitted_sorted = within <= capacity[e_sorted] + tol
    return torch.empty_like(admitted_sorted).scatter_(0, perm, admitted_sorted)


def _gpu_expert_table(expert_gpu: torch.Tensor) -> torch.Tensor:
    """[G, M] experts of each GPU, ascending, padded with -1 (M = most experts on a GPU)."""
    num_gpus = int(expert_gpu.max()) + 1
    order = torch.sort(expert_gpu, stable=True).indices
    counts = torch.bincount(expert_gpu, minlength=num_gpus)
    width = int(counts.max())
    starts = torch.cumsum(counts, dim=0) - counts
    col = torch.arange(order.shape[0], device=order.device) - starts[expert_gpu[order]]
    table = torch.full((num_gpus, width), -1, dtype=torch.long, device=expert_gpu.device)
    table[expert_gpu[order], col] = order
    return table


def reroute_local(scores: torch.Tensor, expert_ids: torch.Tensor, overflow: torch.Tensor,
                  expert_gpu: torch.Tensor, load: torch.Tensor, capacity: torch.Tensor,
                  token_size: torch.Tensor, token_priority: torch.Tensor | None = None,
                  group: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Move overflowing assignments to the token's next-best expert on the same GPU that
    still has room; whatever finds none is dropped (the fail-safe).

    Proceeds in rounds. Each pending assignment proposes its best local candidate that is
    not yet one of the token's experts, has positive score and has room for the token's
    size. Each candidate expert admits proposals in priority order (``token_priority``
    first when given, then the token's score for that expert, then token index) up to its
    remaining room. Rejected proposals retry with the next candidate; a round in which a
    token proposes the same expert from two slots defers the later slot.

    Several layers go in one call as B independent groups of rows: row r belongs to
    layer ``group[r]``, and that layer's experts own entries ``group·E .. group·E + E − 1``
    of ``load`` and ``capacity``.

    Args:
        scores: [R, E] router probabilities, one row per token (per layer).
        expert_ids: [R, k] int64 current experts.
        overflow: [R, k] bool, slots the first admission pass did not keep.
        expert_gpu: [E] int64 GPU of each expert.
        load: [B·E] float64 admitted load so far.
        capacity: [B·E] float64.
        token_size: [R] float64 load one assignment of the row's token adds.
        token_priority: [R] or None, admitted first when higher (MACS: w(x)).
        group: [R] int64 layer of each row in 0..B-1; None means one layer.
    Returns:
        (new expert_ids [R, k], rerouted [R, k] bool).
    """
    new_ids = expert_ids.clone()
    rerouted = torch.zeros_like(overflow)
    tok, slot = torch.nonzero(overflow, as_tuple=True)
    if tok.numel() == 0:
        return new_ids, rerouted
    num_tokens, num_experts = scores.shape
    load = load.clone()
    table = _gpu_expert_table(expert_gpu)                                   # [G, M]
    num_gpus, width = table.shape
    # Column of each expert in its GPU's row of the table.
    column = torch.empty(num_experts, dtype=torch.long, device=scores.device)
    column[table[table >= 0]] = torch.nonzero(table >= 0, as_tuple=True)[1]
    # Scores and "already one of the token's experts" laid out per (token, GPU) row, so
    # a pending slot's candidates are one contiguous row: [T·G, M].
    padded = bool((table < 0).any())
    if not padded and bool((table.reshape(-1) == torch.arange(num_experts,
                                                               device=table.device)).all()):
        by_gpu = scores.reshape(num_tokens * num_gpus, width)  # contiguous: a free view
    else:
        by_gpu = scores[:, table.clamp(min=0).reshape(-1)].reshape(num_tokens * num_gpus, width)
    taken = torch.zeros(num_tokens * num_gpus, width, dtype=torch.bool, device=scores.device)
    token_col = torch.arange(num_tokens, device=scores.device).unsqueeze(1)
    taken[(token_col * num_gpus + expert_gpu[expert_ids]).reshape(-1),
          column[expert_ids].reshape(-1)] = True
    gpu = expert_gpu[expert_ids[tok, slot]]
    row = tok * num_gpus + gpu
    # A candidate's score, or -1 where it can never be taken (padding, zero score, one
    # of the token's own experts): one array carries both.
    cand_score = by_gpu[row].float()
    never = taken[row] | (cand_score <= 0)
    if padded:
        never |= table[gpu] < 0
    cand_score[never] = -1.0
    del never
    del by_gpu
    slack = 1e-9 * torch.clamp(capacity, min=1.0)
    won = torch.zeros(num_tokens, dtype=torch.bool, device=scores.device)
    max_slots = expert_ids.shape[1]
    num_groups = capacity.shape[0] // num_experts
    if group is None:
        group = torch.zeros(num_tokens, dtype=torch.long, device=scores.device)
    # Room of each (layer, GPU) row of candidates: [B·G, M]; padding never fits.
    room_index = table.clamp(min=0).unsqueeze(0) + (
        torch.arange(num_groups, device=scores.device) * num_experts).view(-1, 1, 1)
    room_index = room_index.reshape(num_groups * num_gpus, width)
    pad = (table < 0).repeat(num_groups, 1)
    room_row = group[tok] * num_gpus + gpu
    while tok.numel():
        # One room, with one float slack, for both "does it fit" and the admission below:
        # a proposal that fits alone is then always admitted when it comes first.
        room_flat = capacity - load + slack
        room = room_flat[room_index].masked_fill_(pad, -1.0)
        fits = room[room_row] >= token_size[tok].unsqueeze(1)
        best_score, best = torch.where(fits, cand_score, -1.0).max(dim=1)   # first max: lower id
        alive = best_score > 0
        if not alive.any():
            break
        if not alive.all():
            tok, slot, gpu, row, room_row, cand_score, best_score, best = (
                x[alive] for x in (tok, slot, gpu, row, room_row, cand_score, best_score, best))
        target = table[gpu, best]
        # One proposal per (token, expert) per round, from the token's lowest slot:
        # pending slots come token-major, so earlier slots of a token sit just before.
        prop = torch.ones_like(tok, dtype=torch.bool)
        for back in range(1, max_slots):
            same = (tok[back:] == tok[:-back]) & (target[back:] == target[:-back])
            prop[back:] &= ~same
        prop_idx = torch.nonzero(prop, as_tuple=True)[0]
        p_tok = tok[prop_idx]
        p_global = group[p_tok] * num_experts + target[prop_idx]
        priority = [best_score[prop_idx]]
        if token_priority is not None:
            priority.insert(0, token_priority[p_tok].float())
        admitted = admit_by_priority(p_global, token_size[p_tok].double(),
                                     room_flat.double(), priority)
        win = prop_idx[admitted]
        if win.numel() == 0:  # each targeted expert admits its first proposal: never empty
            raise RuntimeError("reroute_local made no progress; please report this input")
        w_tok, w_slot, w_target = tok[win], slot[win], target[win]
        new_ids[w_tok, w_slot] = w_target
        rerouted[w_tok, w_slot] = True
        taken[row[win], column[w_target]] = True
        load.index_add_(0, p_global[admitted], token_size[w_tok].double())
        pending = torch.ones_like(tok, dtype=torch.bool)
        pending[win] = False
        tok, slot, gpu, row, room_row, cand_score = (
            x[pending] for x in (tok, slot, gpu, row, room_row, cand_score))
        # Another slot of a winning token must not take the same expert later.
        won[w_tok] = True
        hit = torch.nonzero(won[tok], as_tuple=True)[0]
        if hit.numel():
            cand_score[hit] = torch.where(taken[row[hit]], -1.0, cand_score[hit])
        won[w_tok] = False
    return new_ids, rerouted


def check_placement(placement: torch.Tensor | None, num_experts: int, policy: str) -> None:
    """Rerouting policies need expert -> GPU for every expert."""
    if placement is None or tuple(placement.shape) != (num_experts,):
        got = None if placement is None else list(placement.shape)
        raise PolicyError(f'{policy}: "placement" must be [E] = [{num_experts}] (expert -> GPU), '
                          f"got {got}")
