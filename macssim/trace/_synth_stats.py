"""Measurements that tie synthetic routing to the published figures it is calibrated on.

Three figures:
- per-rank load skew: DeepSeek-R1 served at EP32 (256 experts, top-8, 8 experts per
  rank) shows (max - mean)/mean of the per-rank load ~1.56 on average over layers, worst
  layers ~3.5x the mean (DESIGN.md section 3). ``simulate_rank_imbalance`` routes text
  tokens through a model of that shape with given knobs and measures the same quantity.
- per-expert concentration of Qwen3-30B-A3B (the language model of Qwen3-VL-30B-A3B and
  InternVL3.5-30B-A3B) on ~1k diverse text tokens (``QWEN3_CONCENTRATION_TARGET``);
  ``simulate_expert_concentration`` measures the same three figures.
- the shape of a token's top-8 router mass on Qwen3-VL-30B-A3B (cumulative over the
  top-1/2/4/6/7 experts, and the entropy of the normalised top-8).
  ``topk_mass_profile`` measures it from router scores.

Used by the tests, ``benchmarks/calibrate_synth.py`` and ``docs/synthetic.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from macssim.trace._model import ModelFacts
from macssim.trace._routing_model import RoutingKnobs, build_router_state, route_layer

__all__ = [
    "DEEPSEEK_R1_SHAPE",
    "QWEN3_CONCENTRATION_TARGET",
    "ConcentrationTarget",
    "expert_concentration",
    "rank_imbalance",
    "simulate_expert_concentration",
    "simulate_rank_imbalance",
    "topk_mass_profile",
    "VISION_TOPK_TARGET",
    "TEXT_TOPK_TARGET",
    "TOPK_POINTS",
]

TOPK_POINTS = (1, 2, 4, 6, 7)
"""Top-n prefixes at which the cumulative top-8 mass is measured."""
VISION_TOPK_TARGET = ((16.4, 30.6, 55.9, 78.7, 89.6), 2.07)
"""Qwen3-VL-30B-A3B vision tokens: cumulative % over TOPK_POINTS, entropy (nats)."""
TEXT_TOPK_TARGET = ((22.6, 40.7, 66.6, 85.2, 92.8), 1.99)
"""Qwen3-VL-30B-A3B text tokens: cumulative % over TOPK_POINTS, entropy (nats)."""

DEEPSEEK_R1_SHAPE = ModelFacts(
    name="deepseek-r1-shape", num_layers=61, moe_layers=tuple(range(3, 61)), num_experts=256,
    top_k=8, hidden_size=7168, expert_intermediate_size=2048, num_shared_experts=1,
    source="deepseek-ai/DeepSeek-R1 config.json: 61 layers, first_k_dense_replace 3, "
           "n_routed_experts 256, num_experts_per_tok 8, hidden 7168, moe_intermediate 2048 "
           "(routing shape only; its sigmoid, group-limited router is not modelled)")
"""The routing shape of DeepSeek-R1, the model behind the per-rank skew figure."""


@dataclass(frozen=True)
class ConcentrationTarget:
    """How concentrated a layer's expert choices are, per layer over ``num_tokens``
    tokens, summarised over layers (the measurement's own definitions)."""

    top1_share_pct: float
    """Median over layers of the hottest expert's share of the layer's assignments, %."""
    coverage90_experts: float
    """Median over layers of how many experts (hottest first) cover 90 % of them."""
    concentration: float
    """Mean over layers of 1 - H(shares) / ln(E)."""
    num_tokens: int
    source: str


QWEN3_CONCENTRATION_TARGET = ConcentrationTarget(
    top1_share_pct=4.3, coverage90_experts=65.0, concentration=0.111, num_tokens=1024,
    source="Qwen3-30B-A3B (Q4_K_M, llama.cpp imatrix expert counts), ~1k tokens of diverse "
           "prose/code/math: mcp-tool-shop-org/gpu-container, docs/derisk-concentration.md")
"""Qwen3-30B-A3B's measured expert concentration (its ~8k-token single-domain Python run:
6.3 %, 58 experts, 0.154 -- narrower traffic, more concentrated)."""


def expert_concentration(counts: np.ndarray) -> tuple[float, float, float]:
    """(top-1 share %, experts covering 90 %, concentration), as ``ConcentrationTarget``
    defines them, from [L, E] assignments per layer and expert."""
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    ranked = -np.sort(-share, axis=1)
    coverage = (np.cumsum(ranked, axis=1) < 0.9).sum(axis=1) + 1
    logs = np.log(np.where(share > 0, share, 1.0))
    entropy = -(share * logs).sum(axis=1)
    return (float(np.median(share.max(axis=1))) * 100.0, float(np.median(coverage)),
            float((1.0 - entropy / np.log(counts.shape[1])).mean()))


def _text_counts(model: ModelFacts, knobs: RoutingKnobs, num_tokens: int, seed: int
                 ) -> np.ndarray:
    """[L, E] assignments of ``num_tokens`` independent text tokens per MoE layer, routed
    by the synth's own code."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7,)))
    state = build_router_state(model, knobs, rng)
    visual = np.zeros(num_tokens, dtype=bool)
    counts = np.empty((model.num_moe_layers, model.num_experts), dtype=np.int64)
    for layer in range(model.num_moe_layers):
        noise = rng.standard_normal((num_tokens, model.num_experts), dtype=np.float32)
        _, ids, _ = route_layer(state, layer, noise, visual, knobs, model)
        counts[layer] = np.bincount(ids.ravel(), minlength=model.num_experts)
    return counts


def simulate_expert_concentration(model: ModelFacts, knobs: RoutingKnobs, *,
                                  num_tokens: int = QWEN3_CONCENTRATION_TARGET.num_tokens,
                                  seed: int = 0) -> tuple[float, float, float]:
    """``expert_concentration`` of ``num_tokens`` text tokens per layer of ``model``."""
    return expert_concentration(_text_counts(model, knobs, num_tokens, seed))


def rank_imbalance(counts: np.ndarray, num_ranks: int) -> np.ndarray:
    """(max - mean)/mean of the per-rank load, experts placed contiguously.

    Args:
        counts: [L, E] assignments per layer and expert; E divisible by ``num_ranks``.
    Returns:
        [L] float64; 0 is perfectly even.
    """
    num_layers, num_experts = counts.shape
    per_rank = counts.reshape(num_layers, num_ranks, num_experts // num_ranks).sum(axis=2)
    mean = per_rank.mean(axis=1)
    return per_rank.max(axis=1) / mean - 1.0


def simulate_rank_imbalance(model: ModelFacts = DEEPSEEK_R1_SHAPE,
                            knobs: RoutingKnobs | None = None, *, num_ranks: int = 32,
                            num_tokens: int = 4096, seed: int = 0) -> np.ndarray:
    """Route ``num_tokens`` independent text tokens through every MoE layer of a synthetic
    ``model`` (the synth's own routing code) and measure the per-rank skew.

    Returns:
        [L] float64, (max - mean)/mean of the per-rank load per layer.
    """
    knobs = knobs or RoutingKnobs()
    return rank_imbalance(_text_counts(model, knobs, num_tokens, seed), num_ranks)


def topk_mass_profile(scores: np.ndarray, k: int = 8,
                      points: tuple[int, ...] = TOPK_POINTS) -> tuple[np.ndarray, float]:
    """Shape of each token's top-k router mass, averaged over tokens.

    Args:
        scores: [N, E] router scores (any float dtype), one row per token (and layer).
    Returns:
        cumulative: [len(points)] float64, mean % of the normalised top-k mass held by
            the top-n experts for n in ``points``.
        entropy: mean Shannon entropy (nats) of the normalised top-k distribution.
    """
    scores = np.asarray(scores, dtype=np.float64)
    top = -np.sort(-scores, axis=1)[:, :k]
    p = top / top.sum(axis=1, keepdims=True)
    cumulative = np.cumsum(p, axis=1)[:, [n - 1 for n in points]].mean(axis=0) * 100.0
    logs = np.log(np.where(p > 0, p, 1.0))
    entropy = float(-(p * logs).sum(axis=1).mean())
    return cumulative, entropy
