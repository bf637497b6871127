"""CAI-MoE Expanded Drop (arXiv 2503.05066): Token Drop first, then each dropped
assignment moves to the token's next-best expert on the same GPU that still has room,
and is dropped only when none has. Staying on the GPU keeps the dispatch traffic as it
was while the spare capacity of the GPU's cooler experts absorbs the overflow."""

from __future__ import annotations

import torch

from macssim._errors import PolicyError
from macssim.policies._capacity import check_inputs, megatron_capacity, reroute_local
from macssim.policies._common import finish_plan, router_choice
from macssim.policies._plan import DispatchPlan
from macssim.policies.macs import entropy_weights
from macssim.policies.token_drop import keep_within_capacity

__all__ = ["expanded_drop"]


def expanded_drop(scores: torch.Tensor, *, top_k: int, placement: torch.Tensor,
                  capacity_factor: float = 1.0, modality: torch.Tensor | None = None,
                  entropy: torch.Tensor | None = None, topk_ids: torch.Tensor | None = None,
                  topk_weights: torch.Tensor | None = None, delta: float = 1.0, **_unused
                  ) -> DispatchPlan:
    """Expanded Drop on one MoE layer's batch.

    Args:
        scores: [T, E] router probabilities; top_k: k; capacity_factor: γ > 0.
        placement: [E] int64 expert -> GPU.
        modality, entropy: [T], only to report semantic mass (w with ``delta``).
    """
    check_inputs(scores, top_k, placement, modality, entropy, topk_ids, "expanded-drop")
    if not capacity_factor > 0:
        raise PolicyError(f'expanded-drop: "capacity_factor" must be > 0, got '
                          f"{capacity_factor!r}")
    ids, gate = router_choice(scores, top_k, topk_ids, topk_weights)
    num_tokens, num_experts = scores.shape
    capacity = megatron_capacity(num_tokens, top_k, num_experts, capacity_factor)
    first_pass = keep_within_capacity(scores, ids, capacity, "probs")
    cap = torch.full((num_experts,), float(capacity), dtype=torch.float64, device=scores.device)
    load = torch.bincount(ids[first_pass], minlength=num_experts).double()
    ones = torch.ones(num_tokens, dtype=torch.float64, device=scores.device)
    new_ids, rerouted = reroute_local(scores, ids, ~first_pass, placement.long(), load, cap,
                                      ones)
    w = (entropy_weights(modality, entropy, delta) if modality is not None
         else torch.ones(num_tokens, device=scores.device))
    return finish_plan(scores, ids, gate, new_ids, first_pass | rerouted, rerouted, cap,
                       modality, w)
