"""MACS: Modality-Aware Capacity Scaling (arXiv 2605.05225), the paper's three steps as
three functions, then the policy that chains them.

1. ``entropy_weights``  — entropy-weighted load: a visual token's semantic weight.
2. ``modality_capacity`` — modality-adaptive capacity per expert.
3. ``semantic_reroute``  — admission heaviest-first, local semantic rerouting, fail-safe drop.

The paper does not publish δ, ρ, ε, the minimum capacity or the label thresholds; the
defaults below are ours (``docs/policies.md`` shows the sensitivity).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from macssim._errors import PolicyError
from macssim.policies._capacity import (
    admit_by_priority,
    check_inputs,
    megatron_capacity,
    reroute_local,
)
from macssim.policies._common import finish_plan, router_choice, visual_mask
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

    def __post_init__(self) -> None:
        for name in ("capacity_factor", "eps"):
            if not getattr(self, name) > 0:
                raise PolicyError(f'macs: "{name}" must be > 0, got {getattr(self, name)!r}')
        for name in ("delta", "rho", "min_capacity"):
            if not getattr(self, name) >= 0:
                raise PolicyError(f'macs: "{name}" must be >= 0, got {getattr(self, name)!r}')


def entropy_weights(modality: torch.Tensor, entropy: torch.Tensor | None, delta: float,
                    eps: float = 1e-6) -> torch.Tensor:
    """Step 1. w(x) = sigmoid(−δ · H̃(x)) for visual tokens, H̃ = (H − μ)/(σ + ε) with μ, σ
    (population) over the batch's visual tokens; w = 1 for every other token.

    High feature entropy marks a redundant patch (flat background): it weighs little.

    Args:
        modality: [T] codes; entropy: [T] nats, or None (then every token weighs 1).
    Returns:
        [T] float32.
    """
    w = torch.ones(modality.shape[0], dtype=torch.float32, device=modality.device)
    if entropy is None:
        return w
    vis = visual_mask(modality)
    if not bool(vis.any()):
        return w
    h = entropy[vis].double()
    z = (h - h.mean()) / (h.std(unbiased=False) + eps)
    w[vis] = torch.sigmoid(-delta * z).float()
    return w


def modality_capacity(weights: torch.Tensor, modality: torch.Tensor,
                      expert_labels: torch.Tensor, num_experts: int, top_k: int,
                      params: MacsParams) -> torch.Tensor:
    """Step 2. C_j = C_base · (1 + ρ · m_j · (R_v − 0.5)), clamped below by min_capacity;
    R_v = Σ_visual w / Σ_all w, m_j ∈ {+1 visual, −1 text, 0 shared}.

    When the batch holds one modality only (R_v is 0 or 1) there is no mix to adapt to
    and every C_j = C_base: MACS then equals entropy-weighted Expanded Drop, and exactly
    Expanded Drop on text.

    Returns:
        [E] float64 capacities in semantic-weight units.
    """
    num_tokens = weights.shape[0]
    base = float(megatron_capacity(num_tokens, top_k, num_experts, params.capacity_factor))
    cap = torch.full((num_experts,), base, dtype=torch.float64, device=weights.device)
    total = weights.double().sum()
    if num_tokens == 0 or total <= 0:
        return cap
    r_v = weights.double()[visual_mask(modality)].sum() / total
    if 0.0 < float(r_v) < 1.0:
        cap = cap * (1.0 + params.rho * expert_labels.double() * (r_v - 0.5))
    return torch.clamp(cap, min=params.min_capacity)


def semantic_reroute(scores: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                     capacity: torch.Tensor, expert_gpu: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step 3. Each expert admits its assignments heaviest w first (then by router score,
    then token order) while its weighted load L̃_j = Σ w stays within C_j; the overflow
    goes, again heaviest first, to the token's next-best expert on the same GPU with
    weighted room; what finds none is dropped.

    Returns:
        (expert_ids [T, k], kept [T, k], rerouted [T, k]).
    """
    num_tokens, k = ids.shape
    flat_ids = ids.reshape(-1)
    token = torch.arange(num_tokens, device=ids.device).repeat_interleave(k)
    size = weights.double()[token]
    admitted = admit_by_priority(flat_ids, size, capacity,
                                 [weights[token], torch.gather(scores, 1, ids).reshape(-1)])
    admitted = admitted.reshape(num_tokens, k)
    load = torch.zeros_like(capacity).index_add_(0, ids[admitted], weights.double()[
        token.reshape(num_tokens, k)[admitted]])
    new_ids, rerouted = reroute_local(scores, ids, ~admitted, expert_gpu, load, capacity,
                                      weights.double(), token_priority=weights)
    return new_ids, admitted | rerouted, rerouted


def macs(scores: torch.Tensor, *, top_k: int, placement: torch.Tensor,
         modality: torch.Tensor, entropy: torch.Tensor | None,
         expert_labels: torch.Tensor | None = None, topk_ids: torch.Tensor | None = None,
         topk_weights: torch.Tensor | None = None, params: MacsParams = MacsParams()
         ) -> DispatchPlan:
    """MACS on one MoE layer's batch.

    Args:
        scores: [T, E] router probabilities; top_k: k.
        placement: [E] int64 expert -> GPU (rerouting stays on the GPU).
        modality: [T] codes; entropy: [T] feature entropy (nats), required.
        expert_labels: [E] in {+1 visual, −1 text, 0 shared} from
            ``calibrate_expert_labels``; None labels every expert shared (no step 2).
    """
    check_inputs(scores, top_k, placement, modality, entropy, topk_ids, "macs")
    if entropy is None:
        raise PolicyError("macs: needs per-token feature entropy; this trace has no "
                          '"entropy" field (id-only sources such as vLLM/SGLang imports lack '
                          "it): use token-drop or expanded-drop")
    num_experts = scores.shape[1]
    if expert_labels is None:
        expert_labels = torch.zeros(num_experts, dtype=torch.long, device=scores.device)
    elif expert_labels.shape != (num_experts,):
        raise PolicyError(f'macs: "expert_labels" must be [E] = [{num_experts}], got '
                          f"{list(expert_labels.shape)}")
    ids, gate = router_choice(scores, top_k, topk_ids, topk_weights)
    w = entropy_weights(modality, entropy, params.delta, params.eps)
    cap = modality_capacity(w, modality, expert_labels, num_experts, top_k, params)
    new_ids, kept, rerouted = semantic_reroute(scores, ids, w, cap, placement.long())
    return finish_plan(scores, ids, gate, new_ids, kept, rerouted, cap, modality, w)
