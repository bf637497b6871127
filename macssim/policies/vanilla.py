"""Plain top-k, no capacity: the accuracy reference every other plan is measured against."""

from __future__ import annotations

import torch

from macssim.policies._common import finish_plan, layer_batch
from macssim.policies._plan import DispatchPlan

__all__ = ["vanilla"]


def vanilla(scores: torch.Tensor, *, top_k: int, modality: torch.Tensor | None = None,
            entropy: torch.Tensor | None = None, topk_ids: torch.Tensor | None = None,
            topk_weights: torch.Tensor | None = None, scores_known: bool = True, **_unused
            ) -> DispatchPlan:
    """Keep every one of the router's k choices.

    Args:
        scores: [T, E] router probabilities ([B, T, E] for B layers at once); top_k: k.
        modality, entropy: [T] and [T] ([B, T]), only to report what was dropped (nothing).
    """
    b = layer_batch(scores, top_k, modality=modality, entropy=entropy, topk_ids=topk_ids,
                    topk_weights=topk_weights, policy="vanilla", scores_known=scores_known)
    kept = torch.ones_like(b.ids, dtype=torch.bool)
    return finish_plan(b, b.ids, kept, torch.zeros_like(kept), None,
                       torch.ones(b.num_layers, b.num_tokens, device=kept.device))
