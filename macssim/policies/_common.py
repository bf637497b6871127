"""What every policy does before and after its own step: bring one layer ([T, E]) or B
layers at once ([B, T, E]) into one row layout, read the router's choice and weights, and
turn kept/rerouted masks into a ``DispatchPlan`` with its drop tally.

B layers are processed as B·T rows; row r is token ``r mod T`` of layer ``r // T``, and
per-expert quantities (capacity, load) are indexed by ``layer·E + expert``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from macssim._errors import PolicyError
from macssim.policies._capacity import route_topk
from macssim.policies._plan import YARDSTICK_DELTA, YARDSTICK_EPS, DispatchPlan, drop_stats
from macssim.trace import MODALITIES

__all__ = ["VISUAL_CODES", "LayerBatch", "entropy_weights", "finish_plan", "layer_batch",
           "visual_mask"]

VISUAL_CODES = (MODALITIES.index("image"), MODALITIES.index("video"))


def visual_mask(modality: torch.Tensor) -> torch.Tensor:
    """[T] bool: image or video tokens, the ones MACS weighs by entropy."""
    return (modality == VISUAL_CODES[0]) | (modality == VISUAL_CODES[1])


@dataclass(frozen=True)
class LayerBatch:
    """A policy's input in row layout (R = B·T rows)."""

    batched: bool
    """The caller passed [B, T, E]; the plan keeps a leading B."""
    num_layers: int
    num_tokens: int
    num_experts: int
    top_k: int
    scores: torch.Tensor
    """[R, E] router probabilities."""
    ids: torch.Tensor
    """[R, k] the router's choice."""
    gate: torch.Tensor
    """[R, k] float32 the router's gate weights."""
    modality: torch.Tensor
    """[T] codes (text when the caller gave none)."""
    entropy: torch.Tensor | None
    """[B, T] nats."""
    group: torch.Tensor
    """[R] int64 layer of each row."""
    gate_known: bool = True
    """The router's weights (or real scores to read them from) were given."""

    def per_expert(self, values: torch.Tensor) -> torch.Tensor:
        """[B·E] from a per-layer [B, E] (or one [E] for every layer)."""
        return values.expand(self.num_layers, self.num_experts).reshape(-1)


def _layered(x: torch.Tensor | None, name: str, shape: tuple[int, ...], batched: bool,
             policy: str) -> torch.Tensor | None:
    if x is None:
        return None
    want = shape if batched else shape[1:]
    if tuple(x.shape) != want:
        raise PolicyError(f'{policy}: "{name}" must have shape {list(want)}, got '
                          f"{list(x.shape)}")
    return x.reshape(shape)


def layer_batch(scores: torch.Tensor, top_k: int, *, modality: torch.Tensor | None,
                entropy: torch.Tensor | None, topk_ids: torch.Tensor | None,
                topk_weights: torch.Tensor | None, policy: str,
                scores_known: bool = True) -> LayerBatch:
    """Check shapes and bring one layer or B layers into row layout. ``scores_known``
    False: ``scores`` stands in for an id-only trace, so gate masses are unknown."""
    if scores.dim() not in (2, 3):
        raise PolicyError(f'{policy}: "scores" must be [T, E] or [B, T, E], got shape '
                          f"{list(scores.shape)}")
    batched = scores.dim() == 3
    full = scores if batched else scores.unsqueeze(0)
    num_layers, num_tokens, num_experts = full.shape
    if not 1 <= top_k <= num_experts:
        raise PolicyError(f'{policy}: "top_k" must be in 1..E={num_experts}, got {top_k}')
    if modality is None:
        modality = torch.zeros(num_tokens, dtype=torch.uint8, device=scores.device)
    elif tuple(modality.shape) != (num_tokens,):
        raise PolicyError(f'{policy}: "modality" must be [T] = [{num_tokens}], got '
                          f"{list(modality.shape)}")
    entropy = _layered(entropy, "entropy", (num_layers, num_tokens), batched, policy)
    ids = _layered(topk_ids, "topk_ids", (num_layers, num_tokens, top_k), batched, policy)
    weights = _layered(topk_weights, "topk_weights", (num_layers, num_tokens, top_k), batched,
                       policy)
    rows = full.reshape(num_layers * num_tokens, num_experts).float()
    ids = route_topk(rows, top_k, None if ids is None else ids.reshape(-1, top_k))
    gate = (weights.reshape(-1, top_k).float() if weights is not None
            else torch.gather(rows, 1, ids))
    group = torch.arange(num_layers, device=scores.device).repeat_interleave(num_tokens)
    return LayerBatch(batched, num_layers, num_tokens, num_experts, top_k, rows, ids,
                      gate.to(rows.device), modality.to(rows.device),
                      None if entropy is None else entropy.float(), group,
                      gate_known=scores_known or weights is not None)


def finish_plan(batch: LayerBatch, new_ids: torch.Tensor, kept: torch.Tensor,
                rerouted: torch.Tensor, capacity: torch.Tensor | None,
                semantic_weight: torch.Tensor,
                exchange_bytes: torch.Tensor | None = None) -> DispatchPlan:
    """Assemble the plan in the caller's shape and tally its drops on the yardstick
    (``YARDSTICK_DELTA``), the same for every policy.

    Args:
        new_ids, kept, rerouted: [R, S], the router's k slots first; capacity: [B, ...] or
        None; semantic_weight: [B, T] the policy's w(x); exchange_bytes: [B, G] or None.
    """
    width = new_ids.shape[1]
    shape = (batch.num_layers, batch.num_tokens, width)
    k = batch.top_k
    added = torch.gather(batch.scores, 1, new_ids[:, k:].clamp(min=0))
    weights = torch.cat([batch.gate, added], dim=1)
    yardstick = None
    if batch.entropy is not None:
        yardstick = entropy_weights(batch.modality, batch.entropy, YARDSTICK_DELTA,
                                    YARDSTICK_EPS)
    stats = drop_stats(batch.gate.view(batch.num_layers, batch.num_tokens, k)
                       if batch.gate_known else None,
                       kept.view(shape), rerouted.view(shape), batch.modality, yardstick, k)
    parts = [new_ids.view(shape), weights.view(shape), kept.view(shape), rerouted.view(shape),
             capacity, semantic_weight]
    if not batch.batched:
        parts = [None if p is None else p[0] for p in parts]
        return DispatchPlan(*parts, drops=stats[0], top_k=k,
                            exchange_bytes=None if exchange_bytes is None else exchange_bytes[0])
    return DispatchPlan(*parts, drops=tuple(stats), top_k=k, exchange_bytes=exchange_bytes)


def entropy_weights(modality: torch.Tensor, entropy: torch.Tensor | None, delta: float,
                    eps: float = 1e-6, *, num_layers: int | None = None,
                    segment: torch.Tensor | None = None,
                    num_segments: int = 1) -> torch.Tensor:
    """MACS step 1. w(x) = sigmoid(−δ · H̃(x)) for visual tokens, H̃ = (H − μ)/(σ + ε) with
    μ, σ (population) over the visual tokens of the layer (of the layer and ``segment``:
    under capacity scope ``rank`` each GPU sees only its own tokens); w = 1 for every
    other token.

    High feature entropy marks a redundant patch (flat background): it weighs little.

    Args:
        modality: [T] codes; entropy: [T] or [B, T] nats, or None (every token weighs 1).
        num_layers: B when ``entropy`` is None and a [B, T] result is wanted.
        segment: [T] int64 in 0..num_segments-1, or None (one segment).
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
        h = h_all[:, vis].double()                                        # [B, V]
        if segment is None or num_segments == 1:
            mu = h.mean(dim=1, keepdim=True)
            sigma = h.std(dim=1, unbiased=False, keepdim=True)
        else:
            seg = segment[vis].long()
            count = torch.bincount(seg, minlength=num_segments).double().clamp(min=1)
            total = torch.zeros(h.shape[0], num_segments, dtype=torch.float64, device=h.device)
            mu = (total.index_add(1, seg, h) / count)[:, seg]
            sq = torch.zeros_like(total).index_add(1, seg, (h - mu) ** 2)
            sigma = torch.sqrt(sq / count)[:, seg]
        w[:, vis] = torch.sigmoid(-delta * (h - mu) / (sigma + eps)).float()
    return w[0] if single else w
