"""What every policy does before and after its own step: bring one layer ([T, E]) or B
layers at once ([B, T, E]) into one row layout, read the router's choice and weights, and
turn kept/rerouted masks into a ``DispatchPlan`` with its drop tally.

B layers are processed as B·T rows; row r is token ``r mod T`` of layer ``r // T``, and
per-expert quantities (capacity, load) are indexed by ``layer·E + expert``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from macssim._errors import PolicyError
from macssim.policies._capacity import route_topk
from macssim.policies._plan import DispatchPlan, drop_stats
from macssim.trace import MODALITIES

__all__ = ["VISUAL_CODES", "LayerBatch", "finish_plan", "layer_batch", "visual_mask"]

VISUAL_CODES = (MODALITIES.index("image"), MODALITIES.index("video"))


def visual_mask(modality: torch.Tensor) -> torch.Tensor:
    """[T] bool: image or video tokens, the ones MACS weighs by entropy."""
    return (modality == VISUAL_CODES[0]) | (modality == VISUAL_CODES[1])


@dataclass(frozen=True)
class LayerBatch:
    """A policy's input in row layout (R = B·T rows)."""

    batched: bool
    """The caller passed [B, T, E]; the plan keeps a leading B."""
    num_layers: int
    num_tokens: int
    num_experts: int
    top_k: int
    scores: torch.Tensor
    """[R, E] router probabilities."""
    ids: torch.Tensor
    """[R, k] the router's choice."""
    gate: torch.Tensor
    """[R, k] float32 the router's gate weights."""
    modality: torch.Tensor
    """[T] codes (text when the caller gave none)."""
    entropy: torch.Tensor | None
    """[B, T] nats."""
    group: torch.Tensor
    """[R] int64 layer of each row."""

    def per_expert(self, values: torch.Tensor) -> torch.Tensor:
        """[B·E] from a per-layer [B, E] (or one [E] for every layer)."""
        return values.expand(self.num_layers, self.num_experts).reshape(-1)


def _layered(x: torch.Tensor | None, name: str, shape: tuple[int, ...], batched: bool,
             policy: str) -> torch.Tensor | None:
    if x is None:
        return None
    want = shape if batched else shape[1:]
    if tuple(x.shape) != want:
        raise PolicyError(f'{policy}: "{name}" must have shape {list(want)}, got '
                          f"{list(x.shape)}")
    return x.reshape(shape)


def layer_batch(scores: torch.Tensor, top_k: int, *, modality: torch.Tensor | None,
                entropy: torch.Tensor | None, topk_ids: torch.Tensor | None,
                topk_weights: torch.Tensor | None, policy: str) -> LayerBatch:
    """Check shapes and bring one layer or B layers into row layout."""
    if scores.dim() not in (2, 3):
        raise PolicyError(f'{policy}: "scores" must be [T, E] or [B, T, E], got shape '
                          f"{list(scores.shape)}")
    batched = scores.dim() == 3
    full = scores if batched else scores.unsqueeze(0)
    num_layers, num_tokens, num_experts = full.shape
    if not 1 <= top_k <= num_experts:
        raise PolicyError(f'{policy}: "top_k" must be in 1..E={num_experts}, got {top_k}')
    if modality is None:
        modality = torch.zeros(num_tokens, dtype=torch.uint8, device=scores.device)
    elif tuple(modality.shape) != (num_tokens,):
        raise PolicyError(f'{policy}: "modality" must be [T] = [{num_tokens}], got '
                          f"{list(modality.shape)}")
    entropy = _layered(entropy, "entropy", (num_layers, num_tokens), batched, policy)
    ids = _layered(topk_ids, "topk_ids", (num_layers, num_tokens, top_k), batched, policy)
    weights = _layered(topk_weights, "topk_weights", (num_layers, num_tokens, top_k), batched,
                       policy)
    rows = full.reshape(num_layers * num_tokens, num_experts).float()
    ids = route_topk(rows, top_k, None if ids is None else ids.reshape(-1, top_k))
    gate = (weights.reshape(-1, top_k).float() if weights is not None
            else torch.gather(rows, 1, ids))
    group = torch.arange(num_layers, device=scores.device).repeat_interleave(num_tokens)
    return LayerBatch(batched, num_layers, num_tokens, num_experts, top_k, rows, ids,
                      gate.to(rows.device), modality.to(rows.device),
                      None if entropy is None else entropy.float(), group)


def finish_plan(batch: LayerBatch, new_ids: torch.Tensor, kept: torch.Tensor,
                rerouted: torch.Tensor, capacity: torch.Tensor | None,
                semantic_weight: torch.Tensor) -> DispatchPlan:
    """Assemble the plan in the caller's shape; a rerouted slot carries the router's score
    for its new expert.

    Args:
        new_ids, kept, rerouted: [R, k]; capacity: [B, E] or None; semantic_weight: [B, T].
    """
    shape = (batch.num_layers, batch.num_tokens, batch.top_k)
    weights = torch.where(rerouted, torch.gather(batch.scores, 1, new_ids), batch.gate)
    stats = drop_stats(batch.gate.view(shape), kept.view(shape), rerouted.view(shape),
                       batch.modality, semantic_weight)
    parts = [new_ids.view(shape), weights.view(shape), kept.view(shape), rerouted.view(shape),
             capacity, semantic_weight]
    if not batch.batched:
        parts = [None if p is None else p[0] for p in parts]
        return DispatchPlan(*parts, drops=stats[0])
    return DispatchPlan(*parts, drops=tuple(stats))
