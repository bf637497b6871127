"""The synthetic router: how a token's routing logits are made, and the knobs behind them.

Picture one MoE layer. Each expert has a popularity that the training left behind (some
experts are simply hot); some experts are favoured by image and video tokens, some by
text; and each token adds its own preference. A token's selection logit for expert e is

    z[t, e] = pop[l, e] + g · group[l, m(t), e] + eps[t, e]

with ``pop[l, e] = sigma_l · n[l, e]`` (log-normal popularity, ``n ~ N(0, 1)``, the cold
half stretched by ``popularity_cold_scale``), ``g`` the modality bias on the token's
preferred group, and ``eps ~ N(0, 1)`` the token's own preference. Redundant visual
tokens of one background cluster share most of ``eps`` (same experts); salient tokens and
text draw their own. The router's scores are
``softmax(c_m · z)`` (or ``sigmoid``) over all E experts, where the sharpness ``c_m`` per
modality shapes how the top-8 mass spreads without changing which experts win: expert
choice (and so load imbalance) and score shape are calibrated independently.

Everything a user may turn is in ``RoutingKnobs``; ``docs/synthetic.md`` gives each
knob's meaning, unit, default and the published figure behind it. Its field defaults are
calibrated on DeepSeek-R1; ``knobs_for_model`` gives each bundled preset the values
calibrated on its own family, where a measurement of that family exists.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from macssim._errors import TraceError
from macssim.trace._model import ModelFacts

__all__ = [
    "RoutingKnobs",
    "calibration_of",
    "knobs_for_model",
    "RouterState",
    "build_router_state",
    "route_layer",
    "topk_lower_id",
    "feature_entropy",
    "ROLE_TEXT",
    "ROLE_SALIENT",
    "ROLE_REDUNDANT",
]

ROLE_TEXT, ROLE_SALIENT, ROLE_REDUNDANT = 0, 1, 2
"""Token roles: text, salient visual, redundant (background-cluster) visual."""


def _knob(default: float, unit: str, source: str) -> Any:
    return field(default=default, metadata={"unit": unit, "source": source})


@dataclass(frozen=True)
class RoutingKnobs:
    """How synthetic routing behaves. Defaults are calibrated (see ``docs/synthetic.md``
    and ``benchmarks/calibrate_synth.py``); each field's metadata gives unit and source."""

    popularity_sigma: float = _knob(
        0.589, "logit (units of the token noise std)",
        "calibrated: DeepSeek-R1 at EP32, per-rank (max-mean)/mean ~1.56 on average over "
        "layers, worst layers ~3.5x mean (DESIGN.md section 3; log-normal fits per-rank "
        "skew best, deepseek-ai/DeepEP PR #393)")
    """Median over layers of the std of the log-normal expert popularity (log space)."""
    popularity_sigma_spread: float = _knob(
        0.30, "std of ln(sigma_l) across layers",
        "calibrated with popularity_sigma to the worst-layer figure above")
    """How much the popularity skew differs from layer to layer (stratified quantiles)."""
    popularity_cold_scale: float = _knob(
        1.0, "ratio of log-stds, cold half over hot half",
        "1 (symmetric) for DeepSeek-R1: its figures are per-rank and hottest-expert loads, "
        "which do not see the cold tail")
    """How much further below the median the cold experts' popularity spreads than the hot
    experts' spreads above it (a two-piece log-normal; 1 is the plain log-normal). Above 1,
    rarely used experts are colder without making the hot ones hotter."""
    visual_expert_frac: float = _knob(
        0.25, "fraction of experts per layer",
        "no published figure: an assumption (MACS labels experts visual/text/shared)")
    """Experts per layer that image and video tokens favour."""
    text_expert_frac: float = _knob(
        0.25, "fraction of experts per layer", "no published figure: an assumption")
    """Experts per layer that text tokens favour (disjoint from the visual group)."""
    modality_bias: float = _knob(
        0.5, "logit (units of the token noise std)", "no published figure: an assumption")
    """Logit added to a token's favoured group."""
    cluster_coherence: float = _knob(
        0.9, "share of variance, 0..1", "no published figure: an assumption")
    """Share of routing-noise and entropy-noise variance that a redundant cluster's
    tokens share (1: identical routing, 0: independent)."""
    cluster_tokens: float = _knob(
        256.0, "tokens",
        "no published figure: DESIGN.md section 1 speaks of hundreds of near-identical "
        "background patches piling onto the same experts")
    """Mean number of redundant visual tokens per background cluster of a request."""
    sharpness_visual: float = _knob(
        0.358, "1/logit",
        "calibrated: Qwen3-VL-30B-A3B vision tokens, top-8 cumulative mass "
        "16.4/30.6/55.9/78.7/89.6 %, entropy 2.07 nats (DESIGN.md section 3)")
    """Scale c applied to image/video logits before the score function."""
    sharpness_text: float = _knob(
        0.924, "1/logit",
        "calibrated: Qwen3-VL-30B-A3B text tokens, top-8 cumulative mass "
        "22.6/40.7/66.6/85.2/92.8 %, entropy 1.99 nats (DESIGN.md section 3)")
    """Scale c applied to text logits before the score function."""
    entropy_deficit_text: float = _knob(
        1.5, "nats below ln(hidden_size)", "no published figure: an assumption")
    """Median of ln(D) - H for text tokens (H: feature entropy)."""
    entropy_deficit_salient: float = _knob(
        2.5, "nats below ln(hidden_size)", "no published figure: an assumption")
    """Median of ln(D) - H for salient visual tokens (low entropy: peaked features)."""
    entropy_deficit_redundant: float = _knob(
        0.5, "nats below ln(hidden_size)", "no published figure: an assumption")
    """Median of ln(D) - H for redundant visual tokens (high entropy: flat features)."""
    entropy_spread: float = _knob(
        0.4, "std of ln(deficit) between tokens", "no published figure: an assumption")
    """Token-to-token spread of the entropy deficit (log-normal)."""
    entropy_layer_spread: float = _knob(
        0.2, "std of ln(deficit) between layers", "no published figure: an assumption")
    """Layer-to-layer spread of the entropy deficit (one factor per layer)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value) or value < 0:
                raise TraceError(f'routing knobs: "{f.name}" must be a finite number >= 0, '
                                 f"got {value!r}")
        for name in ("visual_expert_frac", "text_expert_frac", "cluster_coherence"):
            if getattr(self, name) > 1:
                raise TraceError(f'routing knobs: "{name}" must be <= 1, got '
                                 f"{getattr(self, name)!r}")
        if self.visual_expert_frac + self.text_expert_frac > 1:
            raise TraceError('routing knobs: "visual_expert_frac" + "text_expert_frac" must '
                             f"be <= 1, got {self.visual_expert_frac + self.text_expert_frac}")
        for name in ("sharpness_visual", "sharpness_text", "cluster_tokens",
                     "popularity_cold_scale"):
            if getattr(self, name) <= 0:
                raise TraceError(f'routing knobs: "{name}" must be > 0, got '
                                 f"{getattr(self, name)!r}")

    def to_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "routing knobs") -> RoutingKnobs:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TraceError(f"{where}: unknown knob(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


_QWEN3_30B_A3B = {
    "popularity_sigma": 0.407, "popularity_sigma_spread": 0.0, "popularity_cold_scale": 2.8,
    "sharpness_visual": 0.377, "sharpness_text": 0.969,
}
"""Calibrated on Qwen3-30B-A3B's measured expert concentration (hottest expert 4.3 % of a
layer's assignments, 65 of 128 experts cover 90 % of them, 1 - normalised entropy 0.111,
~1k diverse text tokens;
``_synth_stats.QWEN3_CONCENTRATION_TARGET``); sharpness refitted on top of it to
Qwen3-VL-30B-A3B's top-8 mass. ``benchmarks/calibrate_synth.py`` reproduces them."""

_QWEN3_SOURCE = "Qwen3-30B-A3B's measured expert concentration (docs/synthetic.md)"
_DEFAULTS_SOURCE = "DeepSeek-R1 at EP32, the RoutingKnobs defaults (docs/synthetic.md)"

_FAMILY_KNOBS: dict[str, tuple[dict[str, float], str]] = {
    "qwen3-vl-30b-a3b": (_QWEN3_30B_A3B, _QWEN3_SOURCE),
    "internvl3.5-30b-a3b": (_QWEN3_30B_A3B, _QWEN3_SOURCE),  # its LM is Qwen3-30B-A3B
}
"""Per preset: knob values that differ from the field defaults, and what they are
calibrated on. A preset not named here (``kimi-vl-a3b``: a DeepSeek-V3-style Moonlight
decoder, no published load figure of its own) keeps the defaults, calibrated on
DeepSeek-R1 at EP32."""


def knobs_for_model(name: str) -> RoutingKnobs:
    """The routing knobs calibrated for model preset ``name`` (the DeepSeek-R1-calibrated
    defaults for any model without a family figure)."""
    return RoutingKnobs(**_FAMILY_KNOBS.get(name.lower(), ({}, ""))[0])


def calibration_of(name: str) -> str:
    """What ``knobs_for_model(name)``'s expert popularity is calibrated on, in words."""
    return _FAMILY_KNOBS.get(name.lower(), ({}, _DEFAULTS_SOURCE))[1]


@dataclass(frozen=True)
class RouterState:
    """The fixed part of a synthetic model, drawn once per seed (L layers, E experts).

    Arrays:
        bias: [L, 2, E] float32, ``pop + g · group``: row 0 for text tokens, 1 for visual.
        sigma_per_layer: [L] float64, the popularity sigma of each layer.
        visual_group: [L, E] bool, experts image/video tokens favour.
        text_group: [L, E] bool, experts text tokens favour.
        entropy_layer_scale: [L] float64, multiplier of each layer's entropy deficit.
    """

    bias: np.ndarray
    sigma_per_layer: np.ndarray
    visual_group: np.ndarray
    text_group: np.ndarray
    entropy_layer_scale: np.ndarray


def _stratified_sigmas(knobs: RoutingKnobs, num_layers: int,
                       rng: np.random.Generator) -> np.ndarray:
    """Per-layer sigma at evenly spaced quantiles of a log-normal, shuffled over layers:
    the spread across layers is the same for every seed, only the order changes."""
    normal = NormalDist()
    z = np.array([normal.inv_cdf((i + 0.5) / num_layers) for i in range(num_layers)])
    sigmas = knobs.popularity_sigma * np.exp(knobs.popularity_sigma_spread * z)
    return sigmas[rng.permutation(num_layers)]


def build_router_state(model: ModelFacts, knobs: RoutingKnobs,
                       rng: np.random.Generator) -> RouterState:
    """Draw expert popularity, modality groups and entropy layer factors for ``model``."""
    num_layers, num_experts = model.num_moe_layers, model.num_experts
    sigmas = _stratified_sigmas(knobs, num_layers, rng)
    n = rng.standard_normal((num_layers, num_experts))
    if knobs.popularity_cold_scale != 1.0:
        n = np.where(n < 0.0, knobs.popularity_cold_scale * n, n)
    pop = sigmas[:, None] * n
    n_visual = int(round(knobs.visual_expert_frac * num_experts))
    n_text = int(round(knobs.text_expert_frac * num_experts))
    order = np.argsort(rng.random((num_layers, num_experts)), axis=1)
    visual = np.zeros((num_layers, num_experts), dtype=bool)
    text = np.zeros_like(visual)
    np.put_along_axis(visual, order[:, :n_visual], True, axis=1)
    np.put_along_axis(text, order[:, n_visual:n_visual + n_text], True, axis=1)
    bias = np.stack([pop + knobs.modality_bias * text, pop + knobs.modality_bias * visual],
                    axis=1).astype(np.float32)
    layer_scale = np.exp(knobs.entropy_layer_spread * rng.standard_normal(num_layers))
    return RouterState(bias=bias, sigma_per_layer=sigmas, visual_group=visual,
                       text_group=text, entropy_layer_scale=layer_scale)


def topk_lower_id(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores per row, highest first, ties to the lower id.

    Args:
        scores: [T, E] float16, non-negative (the bit pattern of a non-negative float16
            orders like its value, so one int32 key holds score and id without ties).
    Returns:
        [T, k] int64 expert ids.
    """
    num_experts = scores.shape[1]
    if num_experts > 0xFFFF:
        raise TraceError(f"synthetic routing supports up to 65535 experts, got {num_experts}")
    key = scores.view(np.uint16).astype(np.int32) << 16
    key |= (0xFFFF - np.arange(num_experts, dtype=np.int32))[None, :]
    part = np.argpartition(key, num_experts - k, axis=1)[:, num_experts - k:]
    top = np.take_along_axis(key, part, axis=1)
    order = np.argsort(-top, axis=1)
    return np.take_along_axis(part, order, axis=1).astype(np.int64)


def route_layer(state: RouterState, layer: int, noise: np.ndarray, visual: np.ndarray,
                knobs: RoutingKnobs, model: ModelFacts
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores, top-k ids and gate weights of one layer for one step's tokens.

    Args:
        noise: [T, E] float32, the tokens' own preferences (clusters already mixed in);
            consumed (overwritten) to save memory.
        visual: [T] bool, image/video tokens (the rest route as text).
    Returns:
        scores: [T, E] float16, softmax (or sigmoid) of ``c_m · z``, as a trace stores them.
        topk_ids: [T, k] int64, the k highest scores, ties to the lower expert id.
        topk_weights: [T, k] float32, those k scores renormalised to sum 1.
    """
    cls = visual.astype(np.intp)
    z = noise
    z += state.bias[layer][cls]
    z *= np.where(visual, np.float32(knobs.sharpness_visual),
                  np.float32(knobs.sharpness_text))[:, None]
    if model.score_function == "softmax":
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
    else:
        np.negative(z, out=z)
        np.exp(z, out=z)
        z += 1.0
        np.reciprocal(z, out=z)
    scores = z.astype(np.float16)
    ids = topk_lower_id(scores, model.top_k)
    top = np.take_along_axis(scores, ids, axis=1).astype(np.float32)
    total = top.sum(axis=1, keepdims=True)
    weights = top / np.where(total > 0, total, 1.0)
    return scores, ids, weights


def feature_entropy(role: np.ndarray, cluster: np.ndarray, num_clusters: int,
                    state: RouterState, knobs: RoutingKnobs, hidden_size: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Feature entropy per layer and token, in nats, within ``[0, ln(hidden_size)]``.

    ``H = ln(D) - deficit``, the deficit log-normal around the role's median (text,
    salient or redundant visual) times the layer's factor; a cluster's tokens share
    ``cluster_coherence`` of the log-deficit noise, like their routing.

    Args:
        role: [T] int, ROLE_TEXT / ROLE_SALIENT / ROLE_REDUNDANT.
        cluster: [T] int, the token's background cluster (0..num_clusters-1) or -1.
    Returns:
        [L, T] float32.
    """
    num_layers = state.entropy_layer_scale.shape[0]
    medians = np.array([knobs.entropy_deficit_text, knobs.entropy_deficit_salient,
                        knobs.entropy_deficit_redundant])
    xi = rng.standard_normal((num_layers, role.shape[0]))
    shared = rng.standard_normal((num_layers, max(num_clusters, 1)))
    in_cluster = cluster >= 0
    rho = knobs.cluster_coherence
    xi[:, in_cluster] = (math.sqrt(rho) * shared[:, cluster[in_cluster]]
                         + math.sqrt(1.0 - rho) * xi[:, in_cluster])
    deficit = (medians[role][None, :] * state.entropy_layer_scale[:, None]
               * np.exp(knobs.entropy_spread * xi))
    max_nats = math.log(hidden_size)
    return np.clip(max_nats - deficit, 0.0, max_nats).astype(np.float32)
