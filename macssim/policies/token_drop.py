"""CAI-MoE Token Drop (arXiv 2503.05066): every expert keeps at most C = ceil(γ·T·k/E)
assignments and drops the rest, with Megatron-Core's drop policies: ``probs`` keeps the C
highest router scores (``--moe-token-drop-policy probs``), ``position`` the first C
tokens in batch order. Under scope ``rank`` (as deployed) T is each GPU's own tokens and
each expert keeps at most C of each GPU's tokens."""

from __future__ import annotations

from typing import Literal

import torch

from macssim._errors import PolicyError
from macssim.policies._capacity import admit_by_priority
from macssim.policies._common import LayerBatch, finish_plan, layer_batch
from macssim.policies._plan import DispatchPlan
from macssim.policies._scope import Sources, exchange_bytes, sources

__all__ = ["bucket_capacity", "token_drop"]

DropPolicy = Literal["probs", "position"]


def bucket_capacity(src: Sources, top_k: int, num_experts: int,
                    capacity_factor: float) -> torch.Tensor:
    """[B, S, E] float64: C = ceil((n·k / E) · γ) of each source group's n tokens,
    Megatron-Core's ``get_capacity``, the same for every expert."""
    cap = torch.ceil((src.tokens * top_k / num_experts) * capacity_factor)
    return cap.unsqueeze(2).expand(-1, -1, num_experts).contiguous()


def plan_capacity(cap: torch.Tensor, scope: str) -> torch.Tensor:
    """[B, E] (global) or [B, G, E] (rank) for the plan."""
    return cap[:, 0] if scope == "global" else cap


def token_drop(scores: torch.Tensor, *, top_k: int, capacity_factor: float = 1.0,
               drop_policy: DropPolicy = "probs", scope: str = "rank",
               token_gpu: torch.Tensor | None = None, placement: torch.Tensor | None = None,
               modality: torch.Tensor | None = None, entropy: torch.Tensor | None = None,
               topk_ids: torch.Tensor | None = None, topk_weights: torch.Tensor | None = None,
               scores_known: bool = True, **_unused) -> DispatchPlan:
    """Token Drop on one MoE layer's batch ([T, E]) or B layers at once ([B, T, E]).

    Args:
        scores: router probabilities; top_k: k; capacity_factor: γ > 0.
        scope: ``rank`` (capacity on each GPU's own tokens) or ``global``.
        token_gpu: [T] GPU each token is dispatched from; placement: [E] (only to size G).
        modality, entropy: only to report what was dropped.
    """
    if not capacity_factor > 0:
        raise PolicyError(f'token-drop: "capacity_factor" must be > 0, got {capacity_factor!r}')
    if drop_policy not in ("probs", "position"):
        raise PolicyError(f'token-drop: "drop_policy" must be probs or position, got '
                          f"{drop_policy!r}")
    b = layer_batch(scores, top_k, modality=modality, entropy=entropy, topk_ids=topk_ids,
                    topk_weights=topk_weights, policy="token-drop", scores_known=scores_known)
    src = sources(scope, token_gpu, placement, b.num_layers, b.num_tokens, "token-drop")
    cap = bucket_capacity(src, top_k, b.num_experts, capacity_factor)
    kept = keep_within_capacity(b, src, cap, drop_policy)
    exchange = exchange_bytes(src, b.ids, None, cap[:, 0], b.num_experts,
                              key_bytes=4 if drop_policy == "probs" else 0)
    return finish_plan(b, b.ids, kept, torch.zeros_like(kept), plan_capacity(cap, scope),
                       torch.ones(b.num_layers, b.num_tokens, device=kept.device), exchange)


def keep_within_capacity(b: LayerBatch, src: Sources, cap: torch.Tensor,
                         drop_policy: DropPolicy = "probs") -> torch.Tensor:
    """[R, k] bool: the router slots each capacity bucket keeps. ``probs`` ranks a
    bucket's slots by router score (the probability before any top-k renormalisation),
    ties to the earlier token; ``position`` by token order."""
    rows = torch.arange(b.ids.shape[0], device=b.ids.device).repeat_interleave(b.top_k)
    bucket = src.bucket(rows, b.ids.reshape(-1), b.num_experts)
    size = torch.ones(bucket.shape[0], dtype=torch.float64, device=bucket.device)
    priority = [torch.gather(b.scores, 1, b.ids).reshape(-1)] if drop_policy == "probs" else []
    return admit_by_priority(bucket, size, cap.reshape(-1), priority).view_as(b.ids)
