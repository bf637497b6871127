"""Plain top-k, no capacity: the accuracy reference every other plan is measured against."""

from __future__ import annotations

import torch

from macssim.policies._capacity import check_inputs
from macssim.policies._common import finish_plan, router_choice
from macssim.policies.macs import entropy_weights
from macssim.policies._plan import DispatchPlan

__all__ = ["vanilla"]


def vanilla(scores: torch.Tensor, *, top_k: int, modality: torch.Tensor | None = None,
            entropy: torch.Tensor | None = None, topk_ids: torch.Tensor | None = None,
            topk_weights: torch.Tensor | None = None, delta: float = 1.0, **_unused
            ) -> DispatchPlan:
    """Keep every one of the router's k choices.

    Args:
        scores: [T, E] router probabilities; top_k: k.
        modality, entropy: [T], only to report semantic mass (w with ``delta``).
    """
    check_inputs(scores, top_k, None, modality, entropy, topk_ids, "vanilla")
    ids, gate = router_choice(scores, top_k, topk_ids, topk_weights)
    kept = torch.ones_like(ids, dtype=torch.bool)
    w = (entropy_weights(modality, entropy, delta) if modality is not None
         else torch.ones(scores.shape[0], device=scores.device))
    return finish_plan(scores, ids, gate, ids, kept, torch.zeros_like(kept), None, modality, w)
