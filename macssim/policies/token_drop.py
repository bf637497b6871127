"""CAI-MoE Token Drop (arXiv 2503.05066): every expert keeps at most C = ceil(γ·T·k/E)
assignments and drops the rest, with Megatron-Core's drop policies: ``probs`` keeps the C
highest router scores (``--moe-token-drop-policy probs``), ``position`` the first C
tokens in batch order."""

from __future__ import annotations

from typing import Literal

import torch

from macssim._errors import PolicyError
from macssim.policies._capacity import admit_by_priority, megatron_capacity
from macssim.policies._common import LayerBatch, finish_plan, layer_batch
from macssim.policies._plan import DispatchPlan
from macssim.policies.macs import entropy_weights

__all__ = ["token_drop", "keep_within_capacity"]

DropPolicy = Literal["probs", "position"]


def keep_within_capacity(b: LayerBatch, capacity: int,
                         drop_policy: DropPolicy = "probs") -> torch.Tensor:
    """[R, k] bool: the assignments each expert of each layer keeps under capacity C.

    ``probs`` ranks an expert's assignments by the router score (the probability before
    any top-k renormalisation), ties to the earlier token; ``position`` by token order.
    """
    if drop_policy not in ("probs", "position"):
        raise PolicyError(f'token-drop: "drop_policy" must be probs or position, got '
                          f"{drop_policy!r}")
    flat = (b.group.unsqueeze(1) * b.num_experts + b.ids).reshape(-1)
    size = torch.ones(flat.shape[0], dtype=torch.float64, device=flat.device)
    cap = torch.full((b.num_layers * b.num_experts,), float(capacity), dtype=torch.float64,
                     device=flat.device)
    priority = [torch.gather(b.scores, 1, b.ids).reshape(-1)] if drop_policy == "probs" else []
    return admit_by_priority(flat, size, cap, priority).view_as(b.ids)


def token_drop(scores: torch.Tensor, *, top_k: int, capacity_factor: float = 1.0,
               drop_policy: DropPolicy = "probs", modality: torch.Tensor | None = None,
               entropy: torch.Tensor | None = None, topk_ids: torch.Tensor | None = None,
               topk_weights: torch.Tensor | None = None, delta: float = 1.0, **_unused
               ) -> DispatchPlan:
    """Token Drop on one MoE layer's batch ([T, E]) or B layers at once ([B, T, E]).

    Args:
        scores: router probabilities; top_k: k; capacity_factor: γ > 0.
        modality, entropy: only to report semantic mass (w with ``delta``).
    """
    if not capacity_factor > 0:
        raise PolicyError(f'token-drop: "capacity_factor" must be > 0, got {capacity_factor!r}')
    b = layer_batch(scores, top_k, modality=modality, entropy=entropy, topk_ids=topk_ids,
                    topk_weights=topk_weights, policy="token-drop")
    capacity = megatron_capacity(b.num_tokens, top_k, b.num_experts, capacity_factor)
    kept = keep_within_capacity(b, capacity, drop_policy)
    w = entropy_weights(b.modality, b.entropy, delta, num_layers=b.num_layers)
    cap = torch.full((b.num_layers, b.num_experts), float(capacity), dtype=torch.float64,
                     device=kept.device)
    return finish_plan(b, b.ids, kept, torch.zeros_like(kept), cap, w)
