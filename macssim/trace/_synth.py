"""Synthetic traces: realistic routing when no GPU and no model weights are at hand.

A scenario (``macssim/data/scenarios/*.yaml``) says what traffic arrives; ``RoutingKnobs``
say how the routers respond. Steps follow a serving engine's rhythm: a prefill step with
every prompt token of ``batch_size`` requests (chat template first, then the image/video
tokens, then the question), then ``decode_steps`` steps of one text token per request, then the next
batch with new request ids.

Each step is generated and written on its own, so memory stays at one step. Every random
draw comes from a stream keyed by (seed, purpose, index): the model from ``(seed, 0)``,
batch ``b``'s requests from ``(seed, 1, b)``, step ``i``'s routing from ``(seed, 2, i)``.
So a trace is byte-identical for a seed, and the first N steps of a longer trace are
those of a shorter one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from macssim._errors import TraceError
from macssim._validate import Limits, brief, check_int
from macssim.trace._format import MODALITIES, Step, TraceWriter
from macssim.trace._model import ModelFacts, get_model_preset
from macssim.trace._routing_model import (
    ROLE_REDUNDANT,
    ROLE_SALIENT,
    ROLE_TEXT,
    RouterState,
    RoutingKnobs,
    build_router_state,
    feature_entropy,
    knobs_for_model,
    route_layer,
)
from macssim.trace._scenario import Scenario, get_scenario

__all__ = ["BYTES_PER_TOKEN_LAYER", "SynthSummary", "bytes_per_token_layer",
           "estimate_trace_bytes", "synthesize", "synthetic_steps"]

TEMPLATE_TOKENS = 16
"""Prompt text tokens placed before the media (chat template, system prompt); the rest of
a request's text follows the media (the question)."""

_TEXT, _IMAGE, _VIDEO = (MODALITIES.index(m) for m in ("text", "image", "video"))


@dataclass(frozen=True)
class _Layout:
    """Who the tokens of one step are (T tokens); what the routing model needs besides
    the trace fields. ``cluster`` numbers the step's background clusters, -1 elsewhere."""

    kind: str
    modality: np.ndarray  # [T] uint8
    request_id: np.ndarray  # [T] int64
    position: np.ndarray  # [T] int64
    role: np.ndarray  # [T] int64: ROLE_TEXT / ROLE_SALIENT / ROLE_REDUNDANT
    cluster: np.ndarray  # [T] int64
    num_clusters: int


@dataclass(frozen=True)
class _Batch:
    """The requests of one prefill batch: B requests and their prompt layout."""

    request_ids: np.ndarray  # [B] int64
    prompt_tokens: np.ndarray  # [B] int64
    prefill: _Layout


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def _draw_batch(scenario: Scenario, knobs: RoutingKnobs, batch_index: int,
                seed: int) -> _Batch:
    """Draw B requests (kind, token counts), lay their prompts out and mark redundant
    visual tokens and their background clusters; vectorised over tokens."""
    rng = _rng(seed, 1, batch_index)
    kinds = scenario.requests
    num = scenario.batch_size
    weights = np.array([k.weight for k in kinds], dtype=np.float64)
    pick = rng.choice(len(kinds), size=num, p=weights / weights.sum())
    lo = np.array([[k.image_tokens[0], k.video_tokens[0], k.text_tokens[0]] for k in kinds])
    hi = np.array([[k.image_tokens[1], k.video_tokens[1], k.text_tokens[1]] for k in kinds])
    counts = rng.integers(lo[pick], hi[pick] + 1)  # [B, 3]: image, video, text
    n_img, n_vid, n_txt = counts[:, 0], counts[:, 1], counts[:, 2]
    before = np.minimum(n_txt, TEMPLATE_TOKENS)
    segments = np.stack([before, n_img, n_vid, n_txt - before], axis=1)  # [B, 4]
    prompt = segments.sum(axis=1)
    modality = np.repeat(np.tile(np.array([_TEXT, _IMAGE, _VIDEO, _TEXT], dtype=np.uint8),
                                 num), segments.ravel())
    ids = batch_index * num + np.arange(num, dtype=np.int64)
    starts = np.cumsum(prompt) - prompt
    total = int(prompt.sum())
    position = np.arange(total, dtype=np.int64) - np.repeat(starts, prompt)

    frac = np.array([k.redundant_frac for k in kinds])[pick]
    n_vis = n_img + n_vid
    n_clusters = np.where(n_vis > 0, np.maximum(
        1, np.rint(frac * n_vis / knobs.cluster_tokens)).astype(np.int64), 0)
    first_cluster = np.cumsum(n_clusters) - n_clusters
    visual = modality != _TEXT
    redundant = visual & (rng.random(total) < np.repeat(frac, prompt))
    local = np.floor(rng.random(total) * np.repeat(n_clusters, prompt)).astype(np.int64)
    cluster = np.where(redundant, np.repeat(first_cluster, prompt) + local, -1)
    role = np.where(redundant, ROLE_REDUNDANT, np.where(visual, ROLE_SALIENT, ROLE_TEXT))
    layout = _Layout("prefill", modality, np.repeat(ids, prompt), position, role, cluster,
                     int(n_clusters.sum()))
    return _Batch(ids, prompt.astype(np.int64), layout)


def _decode_layout(batch: _Batch, decode_index: int) -> _Layout:
    """Decode step ``decode_index`` (0-based) of a batch: one text token per request."""
    num = batch.request_ids.shape[0]
    return _Layout("decode", np.full(num, _TEXT, dtype=np.uint8), batch.request_ids.copy(),
                   batch.prompt_tokens + decode_index, np.full(num, ROLE_TEXT),
                   np.full(num, -1, dtype=np.int64), 0)


def _route_step(index: int, layout: _Layout, model: ModelFacts, state: RouterState,
                knobs: RoutingKnobs, seed: int) -> Step:
    """Routing of every layer for one step: loop over layers, vectorised over tokens."""
    rng = _rng(seed, 2, index)
    num_layers, num_tokens, num_experts = (model.num_moe_layers, layout.modality.shape[0],
                                           model.num_experts)
    scores = np.empty((num_layers, num_tokens, num_experts), dtype=np.float16)
    ids = np.empty((num_layers, num_tokens, model.top_k), dtype=np.int64)
    weights = np.empty((num_layers, num_tokens, model.top_k), dtype=np.float32)
    visual = layout.modality != _TEXT
    members = np.flatnonzero(layout.cluster >= 0)
    own = np.float32(math.sqrt(1.0 - knobs.cluster_coherence))
    shared_w = np.float32(math.sqrt(knobs.cluster_coherence))
    for layer in range(num_layers):
        noise = rng.standard_normal((num_tokens, num_experts), dtype=np.float32)
        if layout.num_clusters:
            shared = rng.standard_normal((layout.num_clusters, num_experts), dtype=np.float32)
            noise[members] = shared_w * shared[layout.cluster[members]] + own * noise[members]
        scores[layer], ids[layer], weights[layer] = route_layer(state, layer, noise, visual,
                                                                knobs, model)
    entropy = feature_entropy(layout.role, layout.cluster, layout.num_clusters, state, knobs,
                              model.hidden_size, rng)
    return Step(index=index, kind=layout.kind, modality=layout.modality,
                request_id=layout.request_id, position=layout.position, topk_ids=ids,
                topk_weights=weights, scores=scores, entropy=entropy)


def _steps_with_layout(model: ModelFacts, scenario: Scenario, num_steps: int, seed: int,
                       knobs: RoutingKnobs) -> Iterator[tuple[Step, _Layout]]:
    state = build_router_state(model, knobs, _rng(seed, 0))
    batch: _Batch | None = None
    for index in range(num_steps):
        batch_index, offset = divmod(index, scenario.steps_per_batch)
        if offset == 0:
            batch = _draw_batch(scenario, knobs, batch_index, seed)
            layout = batch.prefill
        else:
            assert batch is not None
            layout = _decode_layout(batch, offset - 1)
        yield _route_step(index, layout, model, state, knobs, seed), layout


def _step_payload_bytes(model: ModelFacts, num_tokens: int) -> int:
    """Bytes one step of ``num_tokens`` tokens takes in a trace: scores (float16), ids
    (int16), weights and entropy (float32) per layer, plus the per-token fields. A step
    above ``Limits.MAX_STEP_PAYLOAD_BYTES`` is refused by the writer and every reader, so
    it is refused before any routing is drawn; generating it takes about as much again
    in memory."""
    per_token_layer = 2 * model.num_experts + 6 * model.top_k + 4
    return num_tokens * (model.num_moe_layers * per_token_layer + 17)


def _resolve(model: ModelFacts | str, scenario: Scenario | str, num_steps: int, seed: int,
             knobs: RoutingKnobs | None) -> tuple[ModelFacts, Scenario, RoutingKnobs]:
    if isinstance(model, str):
        model = get_model_preset(model)
    if not isinstance(model, ModelFacts):
        raise TraceError(f"synth: model must be a ModelFacts or a preset name, got "
                         f"{brief(model)}")
    if isinstance(scenario, str | os.PathLike):
        scenario = get_scenario(scenario)
    if not isinstance(scenario, Scenario):
        raise TraceError(f"synth: scenario must be a Scenario, a name or a path, got "
                         f"{brief(scenario)}")
    check_int(num_steps, "synth", "steps", low=1, high=Limits.MAX_STEPS, error=TraceError)
    check_int(seed, "synth", "seed", low=0, high=Limits.MAX_SEED, error=TraceError)
    if knobs is not None and not isinstance(knobs, RoutingKnobs):
        raise TraceError(f"synth: knobs must be RoutingKnobs, got {brief(knobs)}")
    largest = max(scenario.batch_size,
                  scenario.batch_size * max(k.max_prompt_tokens for k in scenario.requests))
    need = _step_payload_bytes(model, largest)
    if need > Limits.MAX_STEP_PAYLOAD_BYTES:
        raise TraceError(
            f"synth: scenario {brief(scenario.name)} on model {brief(model.name)} may make a "
            f"step of {largest} tokens, {need / 2**30:.1f} GiB of routing; a trace step holds "
            f"at most {Limits.MAX_STEP_PAYLOAD_BYTES / 2**30:.0f} GiB: lower the batch size")
    return model, scenario, knobs if knobs is not None else knobs_for_model(model.name)


def synthetic_steps(model: ModelFacts | str, scenario: Scenario | str, num_steps: int,
                    seed: int = 0, knobs: RoutingKnobs | None = None) -> Iterator[Step]:
    """Yield ``num_steps`` synthetic steps one at a time (nothing is written).

    Each step holds ``scores`` [L, T, E] float16 (exactly what a trace stores),
    ``topk_ids`` [L, T, k] int64, ``topk_weights`` [L, T, k] float32 and ``entropy``
    [L, T] float32 nats. Arguments are checked before this returns; steps are made as
    they are consumed.
    """
    model, scenario, knobs = _resolve(model, scenario, num_steps, seed, knobs)
    return (step for step, _ in _steps_with_layout(model, scenario, num_steps, seed, knobs))


@dataclass(frozen=True)
class SynthSummary:
    """What ``synthesize`` wrote."""

    path: Path
    model: str
    scenario: str
    seed: int
    num_steps: int
    prefill_steps: int
    decode_steps: int
    num_requests: int
    tokens_by_modality: dict[str, int]
    """Tokens over all steps, by modality name."""
    expert_imbalance: tuple[float, ...]
    """Per MoE layer: max over experts / mean over experts of the assignments the layer
    received over the whole trace (1.0 is perfectly even)."""
    file_bytes: int

    @property
    def num_tokens(self) -> int:
        return sum(self.tokens_by_modality.values())


def provenance(model: ModelFacts, scenario: Scenario, knobs: RoutingKnobs, seed: int,
               num_steps: int) -> dict:
    """What a synthetic trace records about its making (``docs/trace-format.md``,
    provenance): everything needed to make it again, no timestamps, no paths."""
    from macssim import __version__

    return {"source": "synth", "scenario": scenario.name,
            "scenario_settings": scenario.to_dict(), "knobs": knobs.to_dict(), "seed": seed,
            "model_preset": model.name, "num_steps": num_steps,
            "tool": "macssim", "tool_version": __version__}


def synthesize(out: str | os.PathLike, *, model: ModelFacts | str = "qwen3-vl-30b-a3b",
               scenario: Scenario | str = "docvqa", num_steps: int = 64, seed: int = 0,
               knobs: RoutingKnobs | None = None, compress: bool = False,
               on_step: Callable[[Step], None] | None = None,
               replace: bool = False, format_version: int = 2,
               top_n: int | str | None = "2k") -> SynthSummary:
    """Generate a synthetic trace and write it to ``out`` (atomically), one step at a time.

    Args:
        out: trace file to write.
        model: a ``ModelFacts`` or a preset name (``qwen3-vl-30b-a3b``).
        scenario: a ``Scenario``, a bundled scenario name or a scenario YAML path.
        num_steps: steps in all, prefill and decode together.
        seed: every random draw follows from it; same seed, same bytes.
        replace: overwrite an earlier macssim trace at ``out`` (never another file).
        knobs: routing knobs; ``None`` takes the calibrated defaults.
        compress: format v1 only: zlib-compress each step's payload (v2 always
            compresses, with zstd).
        format_version: 2 (default) or 1.
        top_n: v2 only: router scores kept per token-layer: ``"2k"`` (the default), an
            integer N > k, or ``"all"`` (docs/trace-format.md: what a policy loses).
        on_step: called after each step is written (a progress bar).
    """
    model, scenario, knobs = _resolve(model, scenario, num_steps, seed, knobs)
    counts = np.zeros(model.num_moe_layers * model.num_experts, dtype=np.int64)
    offsets = (np.arange(model.num_moe_layers) * model.num_experts)[:, None, None]
    by_modality = np.zeros(len(MODALITIES), dtype=np.int64)
    kinds = {"prefill": 0, "decode": 0}
    requests = 0
    with TraceWriter(out, model, provenance(model, scenario, knobs, seed, num_steps),
                     compress=compress, replace=replace, format_version=format_version,
                     top_n=top_n if format_version >= 2 else None) as writer:
        for step, layout in _steps_with_layout(model, scenario, num_steps, seed, knobs):
            writer.write(step)
            counts += np.bincount((step.topk_ids + offsets).ravel(), minlength=counts.size)
            by_modality += np.bincount(step.modality, minlength=len(MODALITIES))
            kinds[step.kind] += 1
            if layout.kind == "prefill":
                requests += int(np.unique(layout.request_id).size)
            if on_step is not None:
                on_step(step)
    per_layer = counts.reshape(model.num_moe_layers, model.num_experts)
    mean = per_layer.mean(axis=1)
    imbalance = np.where(mean > 0, per_layer.max(axis=1) / np.where(mean > 0, mean, 1), 1.0)
    return SynthSummary(
        path=Path(out), model=model.name, scenario=scenario.name, seed=seed,
        num_steps=num_steps, prefill_steps=kinds["prefill"], decode_steps=kinds["decode"],
        num_requests=requests,
        tokens_by_modality={m: int(n) for m, n in zip(MODALITIES, by_modality, strict=True)},
        expert_imbalance=tuple(float(x) for x in imbalance),
        file_bytes=Path(out).stat().st_size)


BYTES_PER_TOKEN_LAYER = {("v1", "none"): 308.0, ("v1", "zlib"): 257.0, ("v2", "2k"): 33.5,
                         ("v2", "all"): 204.0}
"""Measured file bytes per token-layer (everything counted) for the Qwen3-VL-30B-A3B
preset over the bundled scenarios, ``benchmarks/bench_trace_format.py``
(docs/trace-format.md); v2 with N scores is interpolated between top-2k and all."""


def bytes_per_token_layer(num_experts: int, top_k: int, *, format_version: int = 2,
                          top_n: int | str | None = "2k", compress: bool = False) -> float:
    """Estimated file bytes per token-layer of a trace: the measured figures of
    ``BYTES_PER_TOKEN_LAYER`` (128 experts), v1's scores scaled with the experts, v2 with N
    scores interpolated between top-2k and all."""
    if format_version < 2:
        per = BYTES_PER_TOKEN_LAYER[("v1", "zlib" if compress else "none")]
        return 52.0 + (per - 52.0) * num_experts / 128   # the scores scale with E
    k, e = top_k, num_experts
    n = e if top_n in (None, "all") else (2 * k if top_n == "2k" else min(int(top_n), e))
    low, high = BYTES_PER_TOKEN_LAYER[("v2", "2k")], BYTES_PER_TOKEN_LAYER[("v2", "all")]
    return max(low + (high - low) * (n - 2 * k) / max(e - 2 * k, 1), 0.6 * low)


def estimate_trace_bytes(model: ModelFacts | str, scenario: Scenario | str, num_steps: int,
                         *, format_version: int = 2, top_n: int | str | None = "2k",
                         compress: bool = False) -> tuple[float, float]:
    """(expected tokens, estimated file bytes) of a synthetic trace, before writing it:
    the scenario's mean prompt per prefill request and one token per request per decode
    step, times layers, times ``bytes_per_token_layer``."""
    model, scenario, _ = _resolve(model, scenario, num_steps, 0, None)
    cycle = 1 + scenario.decode_steps
    prefills = -(-num_steps // cycle)
    decodes = num_steps - prefills
    tokens = scenario.batch_size * (prefills * scenario.mean_prompt_tokens() + decodes)
    per = bytes_per_token_layer(model.num_experts, model.top_k, format_version=format_version,
                                top_n=top_n, compress=compress)
    return tokens, tokens * model.num_moe_layers * per
