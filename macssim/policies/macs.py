"""MACS: Modality-Aware Capacity Scaling (arXiv 2605.05225), the paper's three steps as
three functions, then the policy that chains them.

1. ``entropy_weights``  — entropy-weighted load: a visual token's semantic weight.
2. ``modality_capacity`` — modality-adaptive capacity per expert.
3. ``semantic_reroute``  — local semantic rerouting on Expanded Drop's footing (top-k plus
   the token's GPU's experts), admitted in one global heaviest-first order with one fit
   rule, then the fail-safe drop.

The paper does not publish δ, ρ, ε, the minimum capacity or the label thresholds; the
defaults below are ours (``docs/policies.md`` says why, and shows the sensitivity).
Every function takes one layer or B layers at once (a leading B dimension).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from macssim._errors import PolicyError
from macssim.policies._capacity import check_placement
from macssim.policies._common import (
    LayerBatch,
    entropy_weights,
    finish_plan,
    layer_batch,
    visual_mask,
)
from macssim.policies._plan import DispatchPlan
from macssim.policies._scope import (
    SCOPES,
    Sources,
    admit_local_candidates,
    exchange_bytes,
    sources,
)
from macssim.policies.token_drop import plan_capacity

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
    scope: Literal["rank", "global"] = "rank"
    """Where the capacity applies: ``rank`` each GPU's own tokens before dispatch (as
    CAI-MoE deploys it; statistics μ, σ, R_v and C_base per GPU), ``global`` the step."""

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise PolicyError(f'macs: "scope" must be one of {list(SCOPES)}, got {self.scope!r}')
        if self.capacity_basis not in ("tokens", "weight"):
            raise PolicyError(f'macs: "capacity_basis" must be tokens or weight, got '
                              f"{self.capacity_basis!r}")
        for name in ("capacity_factor", "eps"):
            if not getattr(self, name) > 0:
                raise PolicyError(f'macs: "{name}" must be > 0, got {getattr(self, name)!r}')
        for name in ("delta", "rho", "min_capacity"):
            if not getattr(self, name) >= 0:
                raise PolicyError(f'macs: "{name}" must be >= 0, got {getattr(self, name)!r}')


def modality_capacity(weights: torch.Tensor, modality: torch.Tensor,
                      expert_labels: torch.Tensor, src: Sources, num_experts: int,
                      top_k: int, params: MacsParams) -> torch.Tensor:
    """Step 2. C_j = C_base · (1 + ρ · m_j · (R_v − 0.5)), clamped below by min_capacity;
    R_v = Σ_visual w / Σ_all w, m_j ∈ {+1 visual, −1 text, 0 shared}; C_base per
    ``params.capacity_basis``. R_v and C_base are taken over each capacity source (the
    step's tokens, or one GPU's own tokens under scope ``rank``).

    As the paper writes it, with no exemption for one-modality batches: on a text-only
    batch (R_v = 0) visual experts shrink to C_base·(1 − ρ/2) and text experts grow to
    C_base·(1 + ρ/2); only ρ = 0 or unlabelled experts leave C_j = C_base there.

    Args:
        weights: [B, T] w(x); modality: [T]; expert_labels: [E] or [B, E].
    Returns:
        [B, S, E] float64 capacities in semantic-weight units.
    """
    w = weights.double()                                                  # [B, T]
    num_sources = src.num_sources
    seg = src.token_source
    total = torch.zeros(w.shape[0], num_sources, dtype=torch.float64,
                        device=w.device).index_add(1, seg, w)              # [B, S]
    vis = visual_mask(modality)
    visual = torch.zeros_like(total).index_add(1, seg[vis], w[:, vis])
    if params.capacity_basis == "tokens":
        load = src.tokens
    else:
        load = total
    # ceil((n·k/E)·γ), as Megatron-Core rounds a token count (n: tokens or Σw).
    base = torch.ceil((load * top_k / num_experts) * params.capacity_factor)
    r_v = visual / total.clamp(min=1e-300)
    labels = expert_labels.reshape(-1, 1, num_experts).double()           # [B|1, 1, E]
    scale = 1.0 + params.rho * labels * (r_v.unsqueeze(2) - 0.5)
    return torch.clamp(base.unsqueeze(2) * scale, min=params.min_capacity)


def semantic_reroute(b: LayerBatch, weights: torch.Tensor, capacity: torch.Tensor,
                     src: Sources, expert_gpu: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step 3, on Expanded Drop's footing. A token's candidates are its top-k plus the
    experts of its own GPU (local semantic rerouting: no extra communication). All
    candidates are admitted in one global order, heaviest w first (then router score,
    then token), each one that still fits its expert: L̃_j + w(x) <= C_j. What fits
    nowhere is dropped (the fail-safe).

    Args:
        b: the layers in row layout; weights: [B, T] w(x); capacity: [B, S, E].
    Returns:
        (candidate ids [R, k + M], candidates [R, k + M], kept [R, k + M], added
        [R, k + M]: kept beyond the router's k).
    """
    cand_ids, cand, kept = admit_local_candidates(b, src, expert_gpu, capacity.reshape(-1),
                                                  row_weight=weights.reshape(-1))
    added = kept.clone()
    added[:, :b.top_k] = False
    return cand_ids, cand, kept, added


MACS_KEY_BYTES = 8
"""A candidate's ranking keys in the global exchange: w(x) and router score, fp32."""
MACS_STATS_BYTES = 5 * 8
"""Global statistics all-reduced first: visual tokens, Σ H, Σ H² (for μ, σ), then
Σ_visual w and Σ w (for R_v), fp64."""


def macs(scores: torch.Tensor, *, top_k: int, placement: torch.Tensor,
         modality: torch.Tensor, entropy: torch.Tensor | None,
         expert_labels: torch.Tensor | None = None, topk_ids: torch.Tensor | None = None,
         topk_weights: torch.Tensor | None = None, token_gpu: torch.Tensor | None = None,
         params: MacsParams = MacsParams(), scores_known: bool = True,
         local_experts: torch.Tensor | None = None) -> DispatchPlan:
    """MACS on one MoE layer's batch ([T, E]) or B layers at once ([B, T, E]).

    Args:
        scores: router probabilities; top_k: k.
        placement: [E] int64 expert -> GPU; token_gpu: [T] GPU each token is dispatched
            from (rerouting stays there; under scope ``rank`` statistics and capacity are
            that GPU's); local_experts: [G, M] every GPU's experts, replicas included
            (None: placement's).
        modality: [T] codes; entropy: [T] ([B, T]) feature entropy (nats), required.
        expert_labels: [E] ([B, E]) in {+1 visual, −1 text, 0 shared} from
            ``calibrate_expert_labels``; None labels every expert shared (no step 2).
    """
    if entropy is None:
        raise PolicyError("macs: needs per-token feature entropy; this trace has no "
                          '"entropy" field (id-only sources such as vLLM/SGLang imports lack '
                          "it): use token-drop or expanded-drop")
    b = layer_batch(scores, top_k, modality=modality, entropy=entropy, topk_ids=topk_ids,
                    topk_weights=topk_weights, policy="macs", scores_known=scores_known)
    check_placement(placement, b.num_experts, "macs")
    src = sources(params.scope, token_gpu, placement, b.num_layers, b.num_tokens, "macs",
                  local_experts)
    if expert_labels is None:
        expert_labels = torch.zeros(b.num_experts, dtype=torch.long, device=b.scores.device)
    elif expert_labels.shape[-1] != b.num_experts or expert_labels.dim() > 1 + b.batched:
        raise PolicyError(f'macs: "expert_labels" must be [E] = [{b.num_experts}] (or [B, E]), '
                          f"got {list(expert_labels.shape)}")
    w = entropy_weights(b.modality, b.entropy, params.delta, params.eps,
                        segment=src.token_source, num_segments=src.num_sources)   # [B, T]
    cap = modality_capacity(w, b.modality, expert_labels.to(b.scores.device), src,
                            b.num_experts, top_k, params)
    cand_ids, cand, kept, added = semantic_reroute(
        b, w, cap, src, placement.long().to(b.scores.device))
    exchange = exchange_bytes(src, cand_ids, cand, cap[:, 0], b.num_experts,
                              key_bytes=MACS_KEY_BYTES, stats_bytes=MACS_STATS_BYTES)
    return finish_plan(b, cand_ids, kept, added, plan_capacity(cap, params.scope), w,
                       exchange)
