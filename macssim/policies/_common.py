"""What every policy does before and after its own step: read the router's choice and
weights, and turn kept/rerouted masks into a ``DispatchPlan`` with its drop tally."""

from __future__ import annotations

import torch

from macssim.policies._capacity import route_topk
from macssim.policies._plan import DispatchPlan, drop_stats
from macssim.trace import MODALITIES

__all__ = ["VISUAL_CODES", "finish_plan", "router_choice", "visual_mask"]

VISUAL_CODES = (MODALITIES.index("image"), MODALITIES.index("video"))


def visual_mask(modality: torch.Tensor) -> torch.Tensor:
    """[T] bool: image or video tokens, the ones MACS weighs by entropy."""
    return (modality == VISUAL_CODES[0]) | (modality == VISUAL_CODES[1])


def router_choice(scores: torch.Tensor, top_k: int, topk_ids: torch.Tensor | None,
                  topk_weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """([T, k] ids, [T, k] gate weights): the router's own weights when given, else its
    scores at the chosen experts."""
    ids = route_topk(scores, top_k, topk_ids)
    if topk_weights is not None:
        weights = topk_weights.to(device=scores.device, dtype=torch.float32)
    else:
        weights = torch.gather(scores, 1, ids).float()
    return ids, weights


def finish_plan(scores: torch.Tensor, original_ids: torch.Tensor, weights: torch.Tensor,
                new_ids: torch.Tensor, kept: torch.Tensor, rerouted: torch.Tensor,
                capacity: torch.Tensor | None, modality: torch.Tensor | None,
                semantic_weight: torch.Tensor) -> DispatchPlan:
    """Assemble the plan; a rerouted slot carries the router's score for its new expert."""
    if modality is None:
        modality = torch.zeros(scores.shape[0], dtype=torch.uint8, device=scores.device)
    plan_weights = torch.where(rerouted, torch.gather(scores, 1, new_ids).float(), weights)
    stats = drop_stats(weights, kept, rerouted, modality, semantic_weight)
    return DispatchPlan(expert_ids=new_ids, weights=plan_weights, kept=kept,
                        rerouted=rerouted, capacity=capacity,
                        semantic_weight=semantic_weight, drops=stats)
