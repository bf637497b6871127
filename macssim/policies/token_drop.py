"""CAI-MoE Token Drop (arXiv 2503.05066): every expert keeps at most C = ceil(γ·T·k/E)
assignments and drops the rest, with Megatron-Core's drop policies: ``probs`` keeps the C
highest router scores (``--moe-token-drop-policy probs``), ``position`` the first C
tokens in batch order."""

from __future__ import annotations

from typing import Literal

import torch

from macssim._errors import PolicyError
from macssim.policies._capacity import admit_by_priority, check_inputs, megatron_capacity
from macssim.policies._common import finish_plan, router_choice
from macssim.policies._plan import DispatchPlan
from macssim.policies.macs import entropy_weights

__all__ = ["token_drop", "keep_within_capacity"]

DropPolicy = Literal["probs", "position"]


def keep_within_capacity(scores: torch.Tensor, ids: torch.Tensor, capacity: int,
                         drop_policy: DropPolicy = "probs") -> torch.Tensor:
    """[T, k] bool: the assignments each expert keeps under capacity C.

    ``probs`` ranks an expert's assignments by the router score (the probability before
    any top-k renormalisation), ties to the earlier token; ``position`` by token order.
    """
    if drop_policy not in ("probs", "position"):
        raise PolicyError(f'token-drop: "drop_policy" must be probs or position, got '
                          f"{drop_policy!r}")
    num_tokens, k = ids.shape
    num_experts = scores.shape[1]
    flat = ids.reshape(-1)
    size = torch.ones(flat.shape[0], dtype=torch.float64, device=ids.device)
    cap = torch.full((num_experts,), float(capacity), dtype=torch.float64, device=ids.device)
    priority = [torch.gather(scores, 1, ids).reshape(-1)] if drop_policy == "probs" else []
    return admit_by_priority(flat, size, cap, priority).reshape(num_tokens, k)


def token_drop(scores: torch.Tensor, *, top_k: int, capacity_factor: float = 1.0,
               drop_policy: DropPolicy = "probs", modality: torch.Tensor | None = None,
               entropy: torch.Tensor | None = None, topk_ids: torch.Tensor | None = None,
               topk_weights: torch.Tensor | None = None, delta: float = 1.0, **_unused
               ) -> DispatchPlan:
    """Token Drop on one MoE layer's batch.

    Args:
        scores: [T, E] router probabilities; top_k: k; capacity_factor: γ > 0.
        modality, entropy: [T], only to report semantic mass (w with ``delta``).
    """
    check_inputs(scores, top_k, None, modality, entropy, topk_ids, "token-drop")
    if not capacity_factor > 0:
        raise PolicyError(f'token-drop: "capacity_factor" must be > 0, got {capacity_factor!r}')
    ids, gate = router_choice(scores, top_k, topk_ids, topk_weights)
    num_tokens, num_experts = scores.shape
    capacity = megatron_capacity(num_tokens, top_k, num_experts, capacity_factor)
    kept = keep_within_capacity(scores, ids, capacity, drop_policy)
    w = (entropy_weights(modality, entropy, delta) if modality is not None
         else torch.ones(num_tokens, device=scores.device))
    cap = torch.full((num_experts,), float(capacity), dtype=torch.float64, device=scores.device)
    return finish_plan(scores, ids, gate, ids, kept, torch.zeros_like(kept), cap, modality, w)
