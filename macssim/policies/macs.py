"""MACS: Modality-Aware Capacity Scaling (arXiv 2605.05225), the paper's three steps as
three functions, then the policy that chains them.

1. ``entropy_weights``  — entropy-weighted load: a visual token's semantic weight.
2. ``modality_capacity`` — modality-adaptive capacity per expert.
3. ``semantic_reroute``  — admission heaviest-first, local semantic rerouting, fail-safe drop.

The paper does not publish δ, ρ, ε, the minimum capacity or the label thresholds; the
defaults below are ours (``docs/policies.md`` says why, and shows the sensitivity).
Every function takes one layer or B layers at once (a leading B dimension).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from macssim._errors import PolicyError
from macssim.policies._capacity import (
    admit_by_priority,
    check_placement,
    megatron_capacity,
    reroute_local,
)
from macssim.policies._common import LayerBatch, finish_plan, layer_batch, visual_mask
from macssim.policies._plan import DispatchPlan

__all__ = ["MacsParams", "entropy_weights", "macs", "modality_capacity", "semantic_reroute"]


@dataclass(frozen=True)
class MacsParams:
    """MACS knobs. The paper's values are not public: these defaults are ours."""

    capacity_factor: float = 1.0
    """γ: C_base = ceil(γ · T · k / E) (rounded up as CAI-MoE and Megatron-Core do)."""
    delta: float = 1.0
    """δ: steepness of w(x) = sigmoid(−δ · H̃); 0 makes every visual token weigh 0.5."""
    rho: float = 0.5
    """ρ: how far capacity moves with the batch's visual ratio; ±ρ/2 at the extremes."""
    eps: float = 1e-6
    """ε in the entropy z-score H̃ = (H − μ) / (σ + ε)."""
    min_capacity: float = 1.0
    """Lower clamp of every expert's capacity, in semantic-weight units."""
    capacity_basis: Literal["tokens", "weight"] = "tokens"
    """What C_base counts. ``tokens``: C_base = ceil(γ·T·k/E), as DESIGN.md writes the
    paper's formula — loads in w units then meet a capacity in token units, so an
    image-heavy batch gets more room than Token Drop gives it. ``weight``: C_base =
    ceil(γ·Σw·k/E), the same budget relative to the batch's semantic load. Both equal
    Expanded Drop on text (Σw = T)."""

    def __post_init__(self) -> None:
        if self.capacity_basis not in ("tokens", "weight"):
            raise PolicyError(f'macs: "capacity_basis" must be tokens or weight, got '
                              f"{self.capacity_basis!r}")
        for name in ("capacity_factor", "eps"):
            if not getattr(self, name) > 0:
                raise PolicyError(f'macs: "{name}" must be > 0, got {getattr(self, name)!r}')
        for name in ("delta", "rho", "min_capacity"):
            if not getattr(self, name) >= 0:
                raise PolicyError(f'macs: "{name}" must be >= 0, got {getattr(self, name)!r}')


def entropy_weights(modality: torch.Tensor, entropy: torch.Tensor | None, delta: float,
                    eps: float = 1e-6, *, num_layers: int | None = None) -> torch.Tensor:
    """Step 1. w(x) = sigmoid(−δ · H̃(x)) for visual tokens, H̃ = (H − μ)/(σ + ε) with μ, σ
    (population) over the layer's visual tokens; w = 1 for every other token.

    High feature entropy marks a redundant patch (flat background): it weighs little.

    Args:
        modality: [T] codes; entropy: [T] or [B, T] nats, or None (every token weighs 1).
        num_layers: B when ``entropy`` is None and a [B, T] result is wanted.
    Returns:
        float32 shaped like ``entropy`` ([T], or [B, T] with ``num_layers``, when None).
    """
    num_tokens = modality.shape[0]
    if entropy is None:
        shape = (num_tokens,) if num_layers is None else (num_layers, num_tokens)
        return torch.ones(shape, dtype=torch.float32, device=modality.device)
    single = entropy.dim() == 1
    h_all = entropy.reshape(-1, num_tokens)
    w = torch.ones(h_all.shape, dtype=torch.float32, device=modality.device)
    vis = visual_mask(modality)
    if bool(vis.any()):
        h = h_all[:, vis].double()
        mu = h.mean(dim=1, keepdim=True)
        sigma = h.std(dim=1, unbiased=False, keepdim=True)
        w[:, vis] = torch.sigmoid(-delta * (h - mu) / (sigma + eps)).float()
    return w[0] if single else w


def modality_capacity(weights: torch.Tensor, modality: torch.Tensor,
                      expert_labels: torch.Tensor, num_experts: int, top_k: int,
                      params: MacsParams) -> torch.Tensor:
    """Step 2. C_j = C_base · (1 + ρ · m_j · (R_v − 0.5)), clamped below by min_capacity;
    R_v = Σ_visual w / Σ_all w, m_j ∈ {+1 visual, −1 text, 0 shared}; C_base per
    ``params.capacity_basis``.

    When the batch holds one modality only (R_v is 0 or 1) there is no mix to adapt to
    and every C_j = C_base: MACS then equals entropy-weighted Expanded Drop, and exactly
    Expanded Drop on text.

    Args:
        weights: [T] or [B, T] w(x); modality: [T]; expert_labels: [E] or [B, E].
    Returns:
        [E] or [B, E] float64 capacities in semantic-weight units.
    """
    single = weights.dim() == 1
    w = weights.reshape(-1, weights.shape[-1]).double()
    num_tokens = w.shape[1]
    labels = expert_labels.reshape(-1, num_experts).double()
    total = w.sum(dim=1, keepdim=True)
    if params.capacity_basis == "tokens":
        base = torch.full_like(total, float(megatron_capacity(
            num_tokens, top_k, num_experts, params.capacity_factor)))
    else:  # ceil((Σw·k/E)·γ) per layer, as Megatron rounds a token count
        base = torch.tensor([[float(math.ceil((float(t) * top_k / num_experts)
                                              * params.capacity_factor))]
                             for t in total.reshape(-1).tolist()],
                            dtype=torch.float64, device=w.device)
    r_v = w[:, visual_mask(modality)].sum(dim=1, keepdim=True) / total.clamp(min=1e-300)
    mixed = (r_v > 0) & (r_v < 1)
    scale = torch.where(mixed, 1.0 + params.rho * labels * (r_v - 0.5), torch.ones_like(labels))
    cap = torch.clamp(base * scale, min=params.min_capacity)
    return cap[0] if single else cap


def semantic_reroute(b: LayerBatch, weights: torch.Tensor, capacity: torch.Tensor,
                     expert_gpu: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step 3. Each expert admits its assignments heaviest w first (then by router score,
    then token order) while its weighted load L̃_j = Σ w stays within C_j; the overflow
    goes, again heaviest first, to the token's next-best expert on the same GPU with
    weighted room; what finds none is dropped.

    Args:
        b: the layers in row layout; weights: [B, T] w(x); capacity: [B, E].
    Returns:
        (expert_ids [R, k], kept [R, k], rerouted [R, k]).
    """
    w_row = weights.reshape(-1)                                          # [R]
    k = b.top_k
    global_ids = b.group.unsqueeze(1) * b.num_experts + b.ids            # [R, k]
    size = w_row.double().repeat_interleave(k)
    cap = capacity.reshape(-1)
    admitted = admit_by_priority(global_ids.reshape(-1), size, cap,
                                 [w_row.repeat_interleave(k),
                                  torch.gather(b.scores, 1, b.ids).reshape(-1)])
    admitted = admitted.view_as(b.ids)
    load = torch.bincount(global_ids.reshape(-1), weights=size * admitted.reshape(-1),
                          minlength=cap.shape[0])
    new_ids, rerouted = reroute_local(b.scores, b.ids, ~admitted, expert_gpu, load, cap,
                                      w_row.double(), token_priority=w_row, group=b.group)
    return new_ids, admitted | rerouted, rerouted


def macs(scores: torch.Tensor, *, top_k: int, placement: torch.Tensor,
         modality: torch.Tensor, entropy: torch.Tensor | None,
         expert_labels: torch.Tensor | None = None, topk_ids: torch.Tensor | None = None,
         topk_weights: torch.Tensor | None = None, params: MacsParams = MacsParams()
         ) -> DispatchPlan:
    """MACS on one MoE layer's batch ([T, E]) or B layers at once ([B, T, E]).

    Args:
        scores: router probabilities; top_k: k.
        placement: [E] int64 expert -> GPU (rerouting stays on the GPU).
        modality: [T] codes; entropy: [T] ([B, T]) feature entropy (nats), required.
        expert_labels: [E] ([B, E]) in {+1 visual, −1 text, 0 shared} from
            ``calibrate_expert_labels``; None labels every expert shared (no step 2).
    """
    if entropy is None:
        raise PolicyError("macs: needs per-token feature entropy; this trace has no "
                          '"entropy" field (id-only sources such as vLLM/SGLang imports lack '
                          "it): use token-drop or expanded-drop")
    b = layer_batch(scores, top_k, modality=modality, entropy=entropy, topk_ids=topk_ids,
                    topk_weights=topk_weights, policy="macs")
    check_placement(placement, b.num_experts, "macs")
    if expert_labels is None:
        expert_labels = torch.zeros(b.num_experts, dtype=torch.long, device=b.scores.device)
    elif expert_labels.shape[-1] != b.num_experts or expert_labels.dim() > 1 + b.batched:
        raise PolicyError(f'macs: "expert_labels" must be [E] = [{b.num_experts}] (or [B, E]), '
                          f"got {list(expert_labels.shape)}")
    w = entropy_weights(b.modality, b.entropy, params.delta, params.eps)     # [B, T]
    cap = modality_capacity(w, b.modality, expert_labels.to(b.scores.device), b.num_experts,
                            top_k, params).reshape(b.num_layers, b.num_experts)
    new_ids, kept, rerouted = semantic_reroute(b, w, cap, placement.long().to(b.scores.device))
    return finish_plan(b, new_ids, kept, rerouted, cap, w)
