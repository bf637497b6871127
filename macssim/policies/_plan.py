"""The dispatch plan every policy returns, and the price it paid: what it dropped.

A plan keeps the router's [T, k] slot layout. A slot is either kept on its original
expert, kept on a rerouted expert (``rerouted``), or dropped (``kept`` False). Per-expert
and per-GPU loads follow from ``expert_ids[kept]``.
"""

from __future__ import annotations

import dataclasses
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

    A plan for one layer has [T, k] tensors; a plan for B layers at once (scores given as
    [B, T, E]) has [B, T, k] tensors, ``capacity`` [B, E], ``semantic_weight`` [B, T] and
    one ``DropStats`` per layer in ``drops``; ``layers()`` splits it.

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
        drops: what the plan dropped, by modality (a tuple, one per layer, for B layers).
    """

    expert_ids: torch.Tensor
    weights: torch.Tensor
    kept: torch.Tensor
    rerouted: torch.Tensor
    capacity: torch.Tensor | None
    semantic_weight: torch.Tensor
    drops: DropStats | tuple[DropStats, ...] = field(repr=False)

    @property
    def is_batched(self) -> bool:
        return self.expert_ids.dim() == 3

    def layers(self) -> list[DispatchPlan]:
        """One single-layer plan per layer (views, no copies)."""
        if not self.is_batched:
            return [self]
        return [DispatchPlan(self.expert_ids[b], self.weights[b], self.kept[b],
                             self.rerouted[b],
                             None if self.capacity is None else self.capacity[b],
                             self.semantic_weight[b], self.drops[b])
                for b in range(self.expert_ids.shape[0])]


_FIELDS = [(f.name, int if "int" in str(f.type) else float) for f in dataclasses.fields(DropStats)]
"""DropStats' fields in order, with the type of their values (counts or masses)."""


def drop_stats(original_weights: torch.Tensor, kept: torch.Tensor, rerouted: torch.Tensor,
               modality: torch.Tensor, semantic_weight: torch.Tensor) -> list[DropStats]:
    """Tally each layer's drops by modality, all layers in one pass.

    Args:
        original_weights: [B, T, k] gate weights of the router's original assignments.
        kept, rerouted: [B, T, k] bool.
        modality: [T] integer codes into ``MODALITIES``.
        semantic_weight: [B, T] w(x).
    Returns:
        One ``DropStats`` per layer.
    """
    num_mod = len(MODALITIES)
    num_layers, num_tokens, k = kept.shape
    layer = torch.arange(num_layers, device=kept.device).view(-1, 1)
    tok_bin = (layer * num_mod + modality.long().view(1, -1))            # [B, T]
    slot_bin = tok_bin.unsqueeze(2).expand(-1, -1, k)                     # [B, T, k]
    dropped = ~kept
    gw = original_weights.double()
    sw = semantic_weight.double().unsqueeze(2).expand(-1, -1, k)
    size = num_layers * num_mod

    def count(bins: torch.Tensor, mask: torch.Tensor | None = None,
              values: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            bins = bins[mask]
            values = None if values is None else values[mask]
        else:
            bins = bins.reshape(-1)
            values = None if values is None else values.reshape(-1)
        return torch.bincount(bins, weights=values, minlength=size).view(num_layers, num_mod)

    table = torch.stack([
        count(slot_bin).double(),
        count(slot_bin, dropped).double(),
        count(slot_bin, rerouted).double(),
        count(slot_bin, None, gw),
        count(slot_bin, dropped, gw),
        count(slot_bin, None, sw),
        count(slot_bin, dropped, sw),
        count(tok_bin).double(),
        count(tok_bin, ~kept.any(dim=2)).double(),
    ]).cpu().numpy()                                                      # [9, B, M], _FIELDS order
    out = []
    for b in range(num_layers):
        present = [m for m in range(num_mod) if table[7, b, m] > 0]  # row 7: tokens
        out.append(DropStats(**{name: {MODALITIES[m]: cast(table[i, b, m]) for m in present}
                                for i, (name, cast) in enumerate(_FIELDS)}))
    return out
