"""The dispatch plan every policy returns, and the price it paid: what it dropped.

A plan keeps the router's [T, k] slot layout. A slot is either kept on its original
expert, kept on a rerouted expert (``rerouted``), or dropped (``kept`` False). Per-expert
and per-GPU loads follow from ``expert_ids[kept]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from macssim.trace import MODALITIES

__all__ = ["DispatchPlan", "DropStats", "drop_stats"]


@dataclass(frozen=True)
class DropStats:
    """What a plan dropped, split by modality (keys: ``MODALITIES`` present in the batch).

    Masses are sums over assignments: gate mass uses the slot's gate weight, semantic
    mass the token's semantic weight w(x) (DESIGN.md §4; 1 for text).
    """

    assignments: dict[str, int]
    dropped_assignments: dict[str, int]
    rerouted_assignments: dict[str, int]
    gate_mass: dict[str, float]
    dropped_gate_mass: dict[str, float]
    semantic_mass: dict[str, float]
    dropped_semantic_mass: dict[str, float]
    tokens: dict[str, int]
    tokens_lost_all: dict[str, int]
    """Tokens none of whose k assignments survived."""

    def total(self, name: str) -> float:
        return sum(getattr(self, name).values())

    def frac(self, name: str, modality: str | None = None) -> float:
        """``dropped_<name>`` over ``<name>``, for one modality or all (0 when empty)."""
        num, den = getattr(self, f"dropped_{name}"), getattr(self, name)
        if modality is None:
            d = sum(den.values())
            return sum(num.values()) / d if d else 0.0
        return num.get(modality, 0) / den[modality] if den.get(modality) else 0.0


@dataclass(frozen=True)
class DispatchPlan:
    """Where each token's k assignments go.

    Attributes (T tokens, k slots, E experts):
        expert_ids: [T, k] int64, expert of each slot after rerouting (the original expert
            for dropped slots).
        weights: [T, k] float32, gate weight of each slot (the router's weight; a rerouted
            slot carries the router's score for its new expert). Dropped slots keep their
            weight here: combine with ``kept`` for the effective weight.
        kept: [T, k] bool, the slot is computed.
        rerouted: [T, k] bool, the slot moved to another expert (implies kept).
        capacity: [E] float64 or None, the capacity each expert was held to (token counts;
            semantic-weight units for MACS). None for ``vanilla``.
        semantic_weight: [T] float32, w(x) per token (1 for text).
        drops: what the plan dropped, by modality.
    """

    expert_ids: torch.Tensor
    weights: torch.Tensor
    kept: torch.Tensor
    rerouted: torch.Tensor
    capacity: torch.Tensor | None
    semantic_weight: torch.Tensor
    drops: DropStats = field(repr=False)

    def expert_load(self, num_experts: int) -> torch.Tensor:
        """[E] int64: kept assignments per expert."""
        return torch.bincount(self.expert_ids[self.kept], minlength=num_experts)


def drop_stats(original_weights: torch.Tensor, kept: torch.Tensor, rerouted: torch.Tensor,
               modality: torch.Tensor, semantic_weight: torch.Tensor) -> DropStats:
    """Tally a plan's drops by modality.

    Args:
        original_weights: [T, k] gate weights of the router's original assignments.
        kept, rerouted: [T, k] bool.
        modality: [T] integer codes into ``MODALITIES``.
        semantic_weight: [T] w(x).
    """
    n = len(MODALITIES)
    mod = modality.long()
    k = kept.shape[1]
    slot_mod = mod.unsqueeze(1).expand(-1, k).reshape(-1)
    dropped = ~kept.reshape(-1)
    gw = original_weights.reshape(-1).double()
    sw = semantic_weight.double().unsqueeze(1).expand(-1, k).reshape(-1)

    def by_mod(values: torch.Tensor | None, mask: torch.Tensor | None, idx=slot_mod):
        if mask is not None:
            idx = idx[mask]
            values = None if values is None else values[mask]
        return torch.bincount(idx, weights=values, minlength=n).tolist()

    lost_all = ~kept.any(dim=1)
    stacked = {
        "assignments": by_mod(None, None),
        "dropped_assignments": by_mod(None, dropped),
        "rerouted_assignments": by_mod(None, rerouted.reshape(-1)),
        "gate_mass": by_mod(gw, None),
        "dropped_gate_mass": by_mod(gw, dropped),
        "semantic_mass": by_mod(sw, None),
        "dropped_semantic_mass": by_mod(sw, dropped),
        "tokens": by_mod(None, None, idx=mod),
        "tokens_lost_all": by_mod(None, lost_all, idx=mod),
    }
    present = [i for i, c in enumerate(stacked["tokens"]) if c > 0]
    out = {}
    for name, values in stacked.items():
        as_int = name in ("assignments", "dropped_assignments", "rerouted_assignments",
                          "tokens", "tokens_lost_all")
        out[name] = {MODALITIES[i]: (int(values[i]) if as_int else float(values[i]))
                     for i in present}
    return DropStats(**out)
