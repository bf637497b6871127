"""CAI-MoE Expanded Drop (arXiv 2503.05066): Token Drop first, then each dropped
assignment moves to the token's next-best expert on the same GPU that still has room,
and is dropped only when none has. Staying on the GPU keeps the dispatch traffic as it
was while the spare capacity of the GPU's cooler experts absorbs the overflow."""

from __future__ import annotations

import torch

from macssim._errors import PolicyError
from macssim.policies._capacity import check_placement, megatron_capacity, reroute_local
from macssim.policies._common import finish_plan, layer_batch
from macssim.policies._plan import DispatchPlan
from macssim.policies.macs import entropy_weights
from macssim.policies.token_drop import keep_within_capacity

__all__ = ["expanded_drop"]


def expanded_drop(scores: torch.Tensor, *, top_k: int, placement: torch.Tensor,
                  capacity_factor: float = 1.0, modality: torch.Tensor | None = None,
                  entropy: torch.Tensor | None = None, topk_ids: torch.Tensor | None = None,
                  topk_weights: torch.Tensor | None = None, delta: float = 1.0, **_unused
                  ) -> DispatchPlan:
    """Expanded Drop on one MoE layer's batch ([T, E]) or B layers at once ([B, T, E]).

    Args:
        scores: router probabilities; top_k: k; capacity_factor: γ > 0.
        placement: [E] int64 expert -> GPU.
        modality, entropy: only to report semantic mass (w with ``delta``).
    """
    if not capacity_factor > 0:
        raise PolicyError(f'expanded-drop: "capacity_factor" must be > 0, got '
                          f"{capacity_factor!r}")
    b = layer_batch(scores, top_k, modality=modality, entropy=entropy, topk_ids=topk_ids,
                    topk_weights=topk_weights, policy="expanded-drop")
    check_placement(placement, b.num_experts, "expanded-drop")
    capacity = megatron_capacity(b.num_tokens, top_k, b.num_experts, capacity_factor)
    first_pass = keep_within_capacity(b, capacity, "probs")
    cap = torch.full((b.num_layers * b.num_experts,), float(capacity), dtype=torch.float64,
                     device=first_pass.device)
    global_ids = b.group.unsqueeze(1) * b.num_experts + b.ids
    load = torch.bincount(global_ids[first_pass], minlength=cap.shape[0]).double()
    ones = torch.ones(b.scores.shape[0], dtype=torch.float64, device=cap.device)
    new_ids, rerouted = reroute_local(b.scores, b.ids, ~first_pass, placement.long(), load, cap,
                                      ones, group=b.group)
    w = entropy_weights(b.modality, b.entropy, delta, num_layers=b.num_layers)
    return finish_plan(b, new_ids, first_pass | rerouted, rerouted,
                       cap.view(b.num_layers, b.num_experts), w)
