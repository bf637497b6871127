"""From one MoE layer's dispatch plan to per-GPU work and the all-to-all's byte matrix.

This is the bookkeeping between a policy's output (expert ids and a kept mask per token)
and the cluster: which GPU (and which expert slot on it) computes each kept token-expert
assignment, how many rows each of a GPU's expert slots gets, and how many bytes go from
each GPU to each other GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from macssim._errors import MacssimError
from macssim.cost import TokenCounts, count_tokens
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
    """

    expert_ids: np.ndarray
    kept: np.ndarray
    exchange_bytes: np.ndarray | None = None

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

    A kept assignment (token t, expert e) of a replicated expert goes to the slot
    ``t mod replicas(e)`` among e's slots (in slot order): deterministic and even, as
    engines spread tokens over an expert's replicas.
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
    """Work and traffic of one layer; ``where`` names the layer in error messages."""
    num_tokens = token_gpu.shape[0]
    if routing.expert_ids.shape[0] != num_tokens:
        raise MacssimError(f'{where}: "expert_ids" has {routing.expert_ids.shape[0]} tokens, '
                           f"expected T = {num_tokens} (the step's tokens)")
    if routing.kept.all():
        t_idx = np.repeat(np.arange(num_tokens), routing.kept.shape[1])
        expert = routing.expert_ids.reshape(-1)
    else:
        t_idx, j_idx = np.nonzero(routing.kept)
        expert = routing.expert_ids[t_idx, j_idx]
    if expert.size and (expert.min() < 0 or expert.max() >= experts.num_experts):
        bad = int(expert[(expert < 0) | (expert >= experts.num_experts)][0])
        raise MacssimError(f'{where}: "expert_ids" holds expert {bad} in a kept entry; the '
                           f"placement has experts 0..{experts.num_experts - 1}")
    if experts.replicated:
        pick = experts.first_slot[expert] + t_idx % experts.replicas[expert]
        slot = experts.slots_by_expert[pick]
    else:
        slot = experts.slots_by_expert[experts.first_slot[expert]]
    gpu = experts.slot_gpu[slot]
    num_gpus = experts.num_gpus
    slot_rows = np.bincount(slot, minlength=experts.slot_gpu.size)
    rows_per_slot = np.zeros((num_gpus, experts.slots_per_gpu), dtype=np.int64)
    rows_per_slot[experts.slot_gpu, experts.slot_local] = slot_rows
    gpn = gpus_per_node or num_gpus
    src_gpu = token_gpu[t_idx] if t_idx.size else np.zeros(0, np.int64)
    counts = count_tokens(num_tokens, t_idx, src_gpu, gpu, num_gpus, gpn)
    pairs = counts.pair_tokens
    local = np.diagonal(pairs).astype(np.int64)
    dispatch = pairs.astype(np.float64) * float(token_bytes)
    np.fill_diagonal(dispatch, 0.0)
    return LayerLoad(rows_per_slot=rows_per_slot, dispatch_bytes=dispatch,
                     local_tokens=local, kept=int(expert.size),
                     dropped=_dropped(routing.kept, top_k), counts=counts)


def _dropped(kept: np.ndarray, top_k: int | None) -> int:
    """Router slots the policy dropped: only the first ``top_k`` columns are the router's
    choices (Expanded Drop and MACS append the token's GPU's experts as candidates, and a
    candidate not taken is not a drop)."""
    router = kept if top_k is None else kept[:, :top_k]
    return int(router.size - np.count_nonzero(router))
