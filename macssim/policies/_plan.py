"""The dispatch plan every policy returns, and the price it paid: what it dropped.

A plan has one column per candidate assignment: the router's k slots first, then (for
Expanded Drop and MACS) one column per expert of the token's own GPU, which a token may
take on top of its top-k. A router slot is kept or dropped; an added column is kept
(``rerouted``) or not taken. Per-expert and per-GPU loads follow from
``expert_ids[kept]``.

What a plan dropped is measured on one yardstick for every policy: the semantic weight
w(x) with the fixed ``YARDSTICK_DELTA`` (not the policy's own δ), so MACS and the others
are compared on the same scale.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from macssim.trace import MODALITIES

__all__ = ["YARDSTICK_DELTA", "YARDSTICK_EPS", "DispatchPlan", "DropStats", "drop_stats"]

YARDSTICK_DELTA = 1.0
"""δ of the semantic weight every policy's dropped semantic mass is measured with."""
YARDSTICK_EPS = 1e-6
"""ε of the same weight."""


@dataclass(frozen=True)
class DropStats:
    """What a plan dropped, split by modality (keys: ``MODALITIES`` present in the batch).

    Counts and masses are over the router's k slots. Gate mass uses the slot's gate
    weight; semantic mass the token's w(x) with the fixed ``YARDSTICK_DELTA`` over the
    layer's visual tokens (1 for text), whatever the policy. A mass the input cannot
    support is NaN: gate mass without the router's weights or scores, semantic mass
    without feature entropy (id-only imports).
    """

    assignments: dict[str, int]
    dropped_assignments: dict[str, int]
    rerouted_assignments: dict[str, int]
    """Kept assignments on experts outside the token's top-k (the local experts Expanded
    Drop and MACS add)."""
    gate_mass: dict[str, float]
    dropped_gate_mass: dict[str, float]
    semantic_mass: dict[str, float]
    dropped_semantic_mass: dict[str, float]
    tokens: dict[str, int]
    tokens_lost_all: dict[str, int]
    """Tokens left with no expert at all: none of their k slots kept and no expert
    added (the MoE layer contributes nothing to them)."""

    def total(self, name: str) -> float:
        return sum(getattr(self, name).values())

    def frac(self, name: str, modality: str | None = None) -> float:
        """``dropped_<name>`` over ``<name>``, for one modality or all (0 when empty; NaN
        when the input cannot support the mass)."""
        num, den = getattr(self, f"dropped_{name}"), getattr(self, name)
        if modality is None:
            d = sum(den.values())
            return sum(num.values()) / d if d else 0.0
        return num.get(modality, 0) / den[modality] if den.get(modality) else 0.0


@dataclass(frozen=True)
class DispatchPlan:
    """Where each token's k assignments go.

    A plan for one layer has [T, S] tensors; a plan for B layers at once (scores given as
    [B, T, E]) has [B, T, S] tensors, ``capacity`` [B, ...], ``semantic_weight`` [B, T],
    ``exchange_bytes`` [B, G] and one ``DropStats`` per layer in ``drops``; ``layers()``
    splits it.

    Attributes (T tokens, k router slots, S = k + M columns, E experts, G GPUs):
        expert_ids: [T, S] int64: columns < k the router's choice, columns >= k the
            experts of the token's GPU that Expanded Drop and MACS may add (-1 padding,
            never kept). S = k for vanilla and token-drop.
        weights: [T, S] float32, gate weight of each column: the router's weight for its
            k slots, the router's score for an added expert (as CAI-MoE's code; a model
            that normalises top-k renormalises over the kept columns). Combine with
            ``kept`` for the effective weight.
        kept: [T, S] bool, the assignment is computed.
        rerouted: [T, S] bool, an added expert is computed (columns >= k only).
        capacity: None for ``vanilla``; else float64 [E] (scope ``global``) or [G, E]
            (scope ``rank``: what expert e takes of GPU g's tokens), in tokens, or in
            semantic-weight units for MACS.
        semantic_weight: [T] float32, the policy's w(x) (MACS's δ; 1 for text); the drop
            tallies use the fixed yardstick instead.
        exchange_bytes: [G] int64 or None: bytes each GPU must all-gather to all others
            before dispatch (scope ``global``: per-expert demand and ranking keys); None
            when nothing is exchanged (scope ``rank``, vanilla).
        drops: what the plan dropped, by modality (a tuple, one per layer, for B layers).
    """

    expert_ids: torch.Tensor
    weights: torch.Tensor
    kept: torch.Tensor
    rerouted: torch.Tensor
    capacity: torch.Tensor | None
    semantic_weight: torch.Tensor
    drops: DropStats | tuple[DropStats, ...] = field(repr=False)
    top_k: int = 0
    """k: the router's slots are the first k columns."""
    exchange_bytes: torch.Tensor | None = None

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
                             self.semantic_weight[b], self.drops[b], self.top_k,
                             None if self.exchange_bytes is None else self.exchange_bytes[b])
                for b in range(self.expert_ids.shape[0])]


_FIELDS = [(f.name, int if "int" in str(f.type) else float) for f in dataclasses.fields(DropStats)]
"""DropStats' fields in order, with the type of their values (counts or masses)."""


def drop_stats(original_weights: torch.Tensor | None, kept: torch.Tensor,
               rerouted: torch.Tensor, modality: torch.Tensor,
               semantic_weight: torch.Tensor | None, top_k: int) -> list[DropStats]:
    """Tally each layer's drops by modality, all layers in one pass.

    Args:
        original_weights: [B, T, k] gate weights of the router's slots; None when the
            input has neither weights nor scores (gate masses NaN).
        kept, rerouted: [B, T, S] bool, the router's k slots first.
        modality: [T] integer codes into ``MODALITIES``.
        semantic_weight: [B, T] yardstick w(x); None without entropy (masses NaN).
    Returns:
        One ``DropStats`` per layer.
    """
    num_mod = len(MODALITIES)
    lost_all = ~kept.any(dim=2)
    rerouted_count = rerouted.sum(dim=2)                                  # [B, T]
    kept = kept[:, :, :top_k]
    num_layers, num_tokens, k = kept.shape
    nan_gate = original_weights is None
    nan_sem = semantic_weight is None
    if nan_gate:
        original_weights = torch.zeros(kept.shape, device=kept.device)
    if nan_sem:
        semantic_weight = torch.zeros(num_layers, num_tokens, device=kept.device)
    layer = torch.arange(num_layers, device=kept.device).view(-1, 1)
    tok_bin = (layer * num_mod + modality.long().view(1, -1)).reshape(-1)          # [B*T]
    slot_bin = tok_bin.view(num_layers, num_tokens, 1).expand(-1, -1, k).reshape(-1)  # [B*T*k]
    dropped = (~kept).reshape(-1).double()
    gw = original_weights.double().reshape(-1)
    sw = semantic_weight.double().unsqueeze(2).expand(-1, -1, k).reshape(-1)
    size = num_layers * num_mod

    def count(bins: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        # A masked-out entry weighs 0: the sums are the masked sums (x + 0.0 == x), with
        # no boolean indexing of [B, T, k] tensors.
        return torch.bincount(bins, weights=values, minlength=size).view(num_layers, num_mod)

    table = torch.stack([
        count(slot_bin).double(),
        count(slot_bin, dropped),
        count(tok_bin, rerouted_count.double().reshape(-1)),
        count(slot_bin, gw),
        count(slot_bin, dropped * gw),
        count(slot_bin, sw),
        count(slot_bin, dropped * sw),
        count(tok_bin).double(),
        count(tok_bin, lost_all.reshape(-1).double()),
    ]).cpu().numpy()                                                      # [9, B, M], _FIELDS order
    if nan_gate:
        table[3:5] = float("nan")
    if nan_sem:
        table[5:7] = float("nan")
    out = []
    for b in range(num_layers):
        present = [m for m in range(num_mod) if table[7, b, m] > 0]  # row 7: tokens
        out.append(DropStats(**{name: {MODALITIES[m]: _cast(cast, table[i, b, m])
                                       for m in present}
                                for i, (name, cast) in enumerate(_FIELDS)}))
    return out


def _cast(cast, value: float):
    return float(value) if value != value else cast(value)  # NaN stays a float
