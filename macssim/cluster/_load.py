"""From one MoE layer's dispatch plan to per-GPU work and the all-to-all's byte matrix.

This is the bookkeeping between a policy's output (expert ids and a kept mask per token)
and the cluster: which GPU (and which expert slot on it) computes each kept token-expert
assignment, how many rows each of a GPU's expert slots gets, and how many bytes go from
each GPU to each other GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from macssim._errors import MacssimError
from macssim.cost import TokenCounts, count_routed, count_tokens
from macssim.placement import Placement

__all__ = ["LayerRouting", "LayerLoad", "ExpertMap", "layer_load"]


@dataclass(frozen=True)
class LayerRouting:
    """What one MoE layer does with the step's tokens, after the policy.

    Attributes:
        expert_ids: [T, k] int64, experts each token is sent to (after rerouting); entries
            whose ``kept`` is False are ignored (they may hold -1).
        kept: [T, k] bool, False where the policy dropped the assignment.
        exchange_bytes: [G] bytes each GPU must all-gather to every other GPU before the
            dispatch, or None: what a policy with one capacity over the whole step
            (``scope=global``) needs exchanged to apply it (``DispatchPlan.exchange_bytes``);
            the step runs it as phase ``exchange``.
        experts: this layer's own ``ExpertMap`` when the placement differs per layer
            (EPLB balances each layer on its own loads, as DeepSeek's code does), or
            None: the step's placement. It must give each GPU as many slots as the
            step's (``slots_per_gpu``), so that the layers' expert phases line up.
    """

    expert_ids: np.ndarray
    kept: np.ndarray
    exchange_bytes: np.ndarray | None = None
    experts: ExpertMap | None = None

    def __post_init__(self) -> None:
        ids, kept = np.asarray(self.expert_ids), np.asarray(self.kept)
        if ids.ndim != 2 or kept.shape != ids.shape:
            raise MacssimError(f'LayerRouting: "expert_ids" [T, k] and "kept" [T, k] must have '
                               f"the same 2-D shape, got {list(ids.shape)} and "
                               f"{list(kept.shape)}")
        object.__setattr__(self, "expert_ids", ids.astype(np.int64, copy=False))
        object.__setattr__(self, "kept", kept.astype(bool, copy=False))
        if self.exchange_bytes is not None:
            ex = np.asarray(self.exchange_bytes, dtype=np.float64)
            if ex.ndim != 1 or not np.isfinite(ex).all() or (ex < 0).any():
                raise MacssimError('LayerRouting: "exchange_bytes" must be [G] finite bytes '
                                   f">= 0, got shape {list(ex.shape)}")
            object.__setattr__(self, "exchange_bytes", ex)


@dataclass(frozen=True)
class ExpertMap:
    """A placement in the form the hot path wants: the physical slots of each expert.

    A kept assignment (token t on GPU g, expert e) of a replicated expert goes to a
    replica on g when e has one there (no transfer), else to one on g's node (NVLink,
    not the scale-out network), else to any of e's replicas; within the chosen set the
    assignments are dealt round-robin in token order, per (set, expert), so the split is
    even to one token and deterministic (``route``).
    """

    num_gpus: int
    num_experts: int
    slot_gpu: np.ndarray
    """[S] int64, GPU of each physical slot."""
    first_slot: np.ndarray
    """[E] int64, position in ``slots_by_expert`` of expert e's first slot."""
    replicas: np.ndarray
    """[E] int64, slots of each expert."""
    slots_by_expert: np.ndarray
    """[S] int64, slot ids ordered by expert (stable)."""
    replicated: bool
    slot_local: np.ndarray
    """[S] int64, index of each slot among its GPU's slots (in slot order)."""
    slots_per_gpu: int
    """Most slots any GPU holds: the width of ``LayerLoad.rows_per_slot``."""
    _pools: dict = field(default_factory=dict, compare=False, repr=False)
    """gpus_per_node -> the replica pools ``route`` picks from (built on first use)."""

    @classmethod
    def from_placement(cls, placement: Placement) -> ExpertMap:
        order = np.argsort(placement.slot_expert, kind="stable")
        num_experts = placement.num_experts
        replicas = np.bincount(placement.slot_expert, minlength=num_experts).astype(np.int64)
        first = np.concatenate([[0], np.cumsum(replicas)[:-1]]).astype(np.int64)
        slot_gpu = np.asarray(placement.slot_gpu, dtype=np.int64)
        by_gpu = np.argsort(slot_gpu, kind="stable")
        per_gpu = np.bincount(slot_gpu, minlength=placement.num_gpus)
        starts = np.concatenate([[0], np.cumsum(per_gpu)[:-1]])
        local = np.empty(slot_gpu.size, dtype=np.int64)
        local[by_gpu] = np.arange(slot_gpu.size) - np.repeat(starts, per_gpu)
        return cls(num_gpus=placement.num_gpus, num_experts=num_experts,
                   slot_gpu=slot_gpu, first_slot=first,
                   replicas=replicas, slots_by_expert=order.astype(np.int64),
                   replicated=bool(placement.is_replicated), slot_local=local,
                   slots_per_gpu=int(per_gpu.max()) if per_gpu.size else 0)

    def _replica_pools(self, gpus_per_node: int) -> tuple[np.ndarray, ...]:
        """Slots of each (GPU, expert), (node, expert) and expert as one concatenated
        list of pools: (pool start [G, E], pool size [G, E], node pool start [N, E],
        node pool size [N, E], slot list)."""
        if gpus_per_node in self._pools:
            return self._pools[gpus_per_node]
        num_gpus, num_experts = self.num_gpus, self.num_experts
        num_nodes = -(-num_gpus // gpus_per_node)
        slot_expert = np.empty(self.slot_gpu.size, dtype=np.int64)
        slot_expert[self.slots_by_expert] = np.repeat(np.arange(num_experts), self.replicas)
        slot_node = self.slot_gpu // gpus_per_node
        lists, out = [], []
        offset = 0
        for place, size in ((self.slot_gpu, num_gpus), (slot_node, num_nodes)):
            key = place * num_experts + slot_expert
            order = np.argsort(key, kind="stable")
            n = np.bincount(key, minlength=size * num_experts)
            start = offset + np.cumsum(n) - n
            lists.append(order)
            out += [start.reshape(size, num_experts), n.reshape(size, num_experts)]
            offset += order.size
        pools = (*out, np.concatenate(lists).astype(np.int64))
        self._pools[gpus_per_node] = pools
        return pools

    def route(self, expert: np.ndarray, src_gpu: np.ndarray,
              gpus_per_node: int | None = None) -> np.ndarray:
        """[N] slot of each kept assignment (expert [N], from token GPU [N], in token
        order): the token's own GPU's replicas of the expert if any, else its node's,
        else all of the expert's; round-robin within that set per (set, expert)."""
        if not self.replicated:
            return self.slots_by_expert[self.first_slot[expert]]
        gpn = gpus_per_node or self.num_gpus
        gpu_start, gpu_n, node_start, node_n, slots = self._replica_pools(gpn)
        node = src_gpu // gpn
        local_n = gpu_n[src_gpu, expert]
        near_n = node_n[node, expert]
        on_gpu, on_node = local_n > 0, (local_n == 0) & (near_n > 0)
        far = ~(on_gpu | on_node)
        size = np.where(on_gpu, local_n, np.where(on_node, near_n, self.replicas[expert]))
        start = np.where(on_gpu, gpu_start[src_gpu, expert],
                         np.where(on_node, node_start[node, expert], -1))
        # The far pool is the expert's slots in slot order (slots_by_expert).
        num_experts = self.num_experts
        num_nodes = node_n.shape[0]
        pool = np.where(on_gpu, src_gpu * num_experts + expert,
                        np.where(on_node, (self.num_gpus + node) * num_experts + expert,
                                 (self.num_gpus + num_nodes) * num_experts + expert))
        order = np.argsort(pool, kind="stable")
        sorted_pool = pool[order]
        first = np.searchsorted(sorted_pool, sorted_pool, side="left")
        rank = np.empty_like(pool)
        rank[order] = np.arange(pool.size) - first
        pick = rank % size
        slot = np.empty_like(expert)
        near = ~far
        slot[near] = slots[start[near] + pick[near]]
        slot[far] = self.slots_by_expert[self.first_slot[expert[far]] + pick[far]]
        return slot


@dataclass(frozen=True)
class LayerLoad:
    """Per-GPU work and traffic of one MoE layer (G GPUs).

    Attributes:
        rows_per_slot: [G, S] int64, kept assignments of each of the GPU's expert slots
            (column j: the GPU's j-th slot in slot order; zeros pad GPUs with fewer than
            S slots); ``assignments`` and ``active_experts`` follow from it.
        dispatch_bytes: [G, G] float64, bytes from the token's GPU (row) to the expert's
            GPU (column); zero diagonal (local tokens do not touch the network).
        local_tokens: [G] int64, tokens needing an expert on their own GPU.
        kept: kept assignments in the layer; dropped: assignments the policy dropped.
    """

    rows_per_slot: np.ndarray
    dispatch_bytes: np.ndarray
    local_tokens: np.ndarray
    kept: int
    dropped: int
    counts: TokenCounts
    """Token counts the all-to-all engines build their legs from (``_engines``)."""

    @property
    def assignments(self) -> np.ndarray:
        """[G] int64, kept token-expert assignments each GPU computes."""
        return self.rows_per_slot.sum(axis=1)

    @property
    def active_experts(self) -> np.ndarray:
        """[G] int64, slots on each GPU with at least one assignment."""
        return (self.rows_per_slot > 0).sum(axis=1)


def layer_load(routing: LayerRouting, token_gpu: np.ndarray, experts: ExpertMap,
               token_bytes: float, where: str, gpus_per_node: int | None = None,
               top_k: int | None = None) -> LayerLoad:
    """Work and traffic of one layer; ``where`` names the layer in error messages.
    ``routing.experts``, when set, replaces ``experts`` for this layer."""
    if routing.experts is not None:
        own = routing.experts
        if (own.num_gpus, own.num_experts, own.slots_per_gpu) != (
                experts.num_gpus, experts.num_experts, experts.slots_per_gpu):
            raise MacssimError(f"{where}: the layer's placement has {own.num_experts} experts "
                               f"on {own.num_gpus} GPUs with up to {own.slots_per_gpu} slots "
                               f"each; the step's has {experts.num_experts} on "
                               f"{experts.num_gpus} with {experts.slots_per_gpu}")
        experts = own
    num_tokens = token_gpu.shape[0]
    if routing.expert_ids.shape[0] != num_tokens:
        raise MacssimError(f'{where}: "expert_ids" has {routing.expert_ids.shape[0]} tokens, '
                           f"expected T = {num_tokens} (the step's tokens)")
    num_gpus = experts.num_gpus
    gpn = gpus_per_node or num_gpus
    if experts.replicated:
        slot_rows, counts, kept_total = _route_replicated(routing, token_gpu, experts, where,
                                                          gpn)
    else:
        bad, kept_total, slot_rows, counts = count_routed(
            routing.expert_ids, routing.kept, token_gpu,
            experts.slots_by_expert[experts.first_slot], experts.slot_gpu, num_gpus, gpn)
        if bad >= 0:
            _bad_expert(where, int(routing.expert_ids.reshape(-1)[bad]), experts)
    rows_per_slot = np.zeros((num_gpus, experts.slots_per_gpu), dtype=np.int64)
    rows_per_slot[experts.slot_gpu, experts.slot_local] = slot_rows
    pairs = counts.pair_tokens
    local = np.diagonal(pairs).astype(np.int64)
    dispatch = pairs.astype(np.float64) * float(token_bytes)
    np.fill_diagonal(dispatch, 0.0)
    return LayerLoad(rows_per_slot=rows_per_slot, dispatch_bytes=dispatch,
                     local_tokens=local, kept=kept_total,
                     dropped=_dropped(routing.kept, top_k), counts=counts)


def _route_replicated(routing: LayerRouting, token_gpu: np.ndarray, experts: ExpertMap,
                      where: str, gpus_per_node: int) -> tuple[np.ndarray, TokenCounts, int]:
    """Rows per slot, token counts and kept assignments when experts have replicas (the
    replica a token uses depends on its GPU and node: ``ExpertMap.route``)."""
    num_tokens = token_gpu.shape[0]
    if routing.kept.all():
        t_idx = np.repeat(np.arange(num_tokens), routing.kept.shape[1])
        expert = routing.expert_ids.reshape(-1)
    else:
        t_idx, j_idx = np.nonzero(routing.kept)
        expert = routing.expert_ids[t_idx, j_idx]
    if expert.size and (expert.min() < 0 or expert.max() >= experts.num_experts):
        _bad_expert(where, int(expert[(expert < 0) | (expert >= experts.num_experts)][0]),
                    experts)
    src_gpu = token_gpu[t_idx] if t_idx.size else np.zeros(0, np.int64)
    slot = experts.route(expert, src_gpu, gpus_per_node)
    slot_rows = np.bincount(slot, minlength=experts.slot_gpu.size)
    counts = count_tokens(num_tokens, t_idx, src_gpu, experts.slot_gpu[slot],
                          experts.num_gpus, gpus_per_node)
    return slot_rows, counts, int(expert.size)


def _bad_expert(where: str, bad: int, experts: ExpertMap) -> None:
    raise MacssimError(f'{where}: "expert_ids" holds expert {bad} in a kept entry; the '
                       f"placement has experts 0..{experts.num_experts - 1}")


def _dropped(kept: np.ndarray, top_k: int | None) -> int:
    """Router slots the policy dropped: only the first ``top_k`` columns are the router's
    choices (Expanded Drop and MACS append the token's GPU's experts as candidates, and a
    candidate not taken is not a drop)."""
    router = kept if top_k is None else kept[:, :top_k]
    return int(router.size - np.count_nonzero(router))
