"""Synthetic traces: step structure, router invariants, determinism, and the calibration
targets (measured from generated traces, against the published figures)."""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist

import numpy as np
import pytest

from macssim import TraceError, __version__
from macssim.trace import (
    ModelFacts,
    RequestKind,
    RoutingKnobs,
    Scenario,
    get_model_preset,
    get_scenario,
    knobs_for_model,
    open_trace,
    synthesize,
    synthetic_steps,
)
from macssim.trace._routing_model import (
    ROLE_REDUNDANT,
    ROLE_SALIENT,
    build_router_state,
    topk_lower_id,
)
from macssim.trace._synth import TEMPLATE_TOKENS, _rng, _steps_with_layout
from macssim.trace._synth_stats import (
    QWEN3_CONCENTRATION_TARGET,
    TEXT_TOPK_TARGET,
    VISION_TOPK_TARGET,
    expert_concentration,
    simulate_expert_concentration,
    simulate_rank_imbalance,
    topk_mass_profile,
)

TINY = ModelFacts(name="tiny", num_layers=3, moe_layers=(0, 1, 2), num_experts=16, top_k=4,
                  hidden_size=64, expert_intermediate_size=32)
WIDE = ModelFacts(name="wide", num_layers=4, moe_layers=(0, 1, 2, 3), num_experts=128,
                  top_k=8, hidden_size=2048, expert_intermediate_size=768)
KINDS = (
    RequestKind("img", 1.0, (20, 40), (0, 0), (2, 30), 0.5),
    RequestKind("vid", 1.0, (0, 0), (30, 60), (1, 5), 0.7),
    RequestKind("txt", 1.0, (0, 0), (0, 0), (5, 10), 0.5),
)
SMALL = Scenario(name="small", description="", batch_size=3, decode_steps=2, requests=KINDS)


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("synth") / "small.mtrace"
    synthesize(path, model=TINY, scenario=SMALL, num_steps=8, seed=5)
    return open_trace(path)


# -- step structure --------------------------------------------------------------------
def test_steps_follow_prefill_then_decode(small_trace) -> None:
    steps = list(small_trace)
    assert [s.kind for s in steps] == ["prefill", "decode", "decode"] * 2 + ["prefill", "decode"]
    seen: set[int] = set()
    for b in range(3):
        prefill = steps[3 * b]
        ids = np.unique(prefill.request_id)
        assert ids.size == SMALL.batch_size and not seen & set(ids.tolist())  # new requests
        seen |= set(ids.tolist())
        prompt = {int(r): int((prefill.request_id == r).sum()) for r in ids}
        for j, decode in enumerate(steps[3 * b + 1:3 * b + 3]):
            assert decode.num_tokens == SMALL.batch_size  # one token per live request
            assert (decode.modality == 0).all()  # text
            assert sorted(decode.request_id.tolist()) == sorted(prompt)
            for r, pos in zip(decode.request_id, decode.position, strict=True):
                assert pos == prompt[int(r)] + j  # positions continue the prompt


def test_prefill_layout_per_request(small_trace) -> None:
    """Each request: positions 0..n-1, template text, then image, then video, then text;
    counts inside the kind's ranges."""
    prefill = small_trace.step(0)
    for r in np.unique(prefill.request_id):
        mine = prefill.request_id == r
        mod, pos = prefill.modality[mine], prefill.position[mine]
        assert pos.tolist() == list(range(mine.sum()))
        n_img, n_vid, n_txt = (int((mod == m).sum()) for m in (1, 2, 0))
        assert any(k.image_tokens[0] <= n_img <= k.image_tokens[1]
                   and k.video_tokens[0] <= n_vid <= k.video_tokens[1]
                   and k.text_tokens[0] <= n_txt <= k.text_tokens[1] for k in KINDS)
        head = min(n_txt, TEMPLATE_TOKENS)
        expected = [0] * head + [1] * n_img + [2] * n_vid + [0] * (n_txt - head)
        assert mod.tolist() == expected


def test_router_invariants(small_trace) -> None:
    """topk_ids are the k highest stored scores (ties to the lower id), weights are those
    scores renormalised, softmax scores sum to 1, entropy lies in [0, ln D]. On the steps
    as generated (every score), and on the trace written (v2: the top-N scores kept are
    exactly the generated ones, the rest reported unknown)."""
    written = list(small_trace)
    for step, disk in zip(synthetic_steps(TINY, SMALL, 8, seed=5), written, strict=True):
        scores16 = step.scores.astype(np.float16).astype(np.float32)
        assert not disk.scores_complete and disk.score_known is not None
        np.testing.assert_array_equal(disk.scores[disk.score_known],
                                      scores16[disk.score_known])
        assert (disk.scores[~disk.score_known] == 0).all()
        np.testing.assert_array_equal(disk.topk_ids, step.topk_ids)
        np.testing.assert_array_equal(disk.topk_weights, step.topk_weights)
        np.testing.assert_array_equal(disk.entropy, step.entropy)
        order = np.argsort(-scores16, axis=-1, kind="stable")[..., :TINY.top_k]
        np.testing.assert_array_equal(step.topk_ids, order)
        top = np.take_along_axis(scores16, step.topk_ids, axis=-1)
        np.testing.assert_allclose(step.topk_weights, top / top.sum(-1, keepdims=True),
                                   rtol=1e-6)
        np.testing.assert_allclose(scores16.sum(-1), 1.0, atol=TINY.num_experts * 2e-3)
        assert (step.entropy >= 0).all() and (step.entropy <= math.log(64) + 1e-6).all()


def test_topk_ties_go_to_lower_id() -> None:
    scores = np.array([[0.25, 0.5, 0.25, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]], np.float16)
    assert topk_lower_id(scores, 3).tolist() == [[1, 3, 0], [0, 1, 2]]


def test_sigmoid_router_selects_like_softmax() -> None:
    """Softmax and sigmoid are monotone in the logit: same seed, same experts (up to
    float16 ties); sigmoid scores lie in (0, 1) and need not sum to 1."""
    sig = dataclasses.replace(TINY, name="tiny-sigmoid", score_function="sigmoid")
    a = next(synthetic_steps(TINY, SMALL, 1, seed=2))
    b = next(synthetic_steps(sig, SMALL, 1, seed=2))
    assert (a.topk_ids == b.topk_ids).mean() > 0.99
    assert (b.scores > 0).all() and (b.scores < 1).all()
    assert not np.allclose(b.scores.astype(np.float32).sum(-1), 1.0, atol=0.05)
    np.testing.assert_allclose(b.topk_weights.sum(-1), 1.0, rtol=1e-5)


def test_sharpness_changes_scores_not_choices() -> None:
    knobs = RoutingKnobs(sharpness_visual=1.5, sharpness_text=0.2)
    a = next(synthetic_steps(WIDE, SMALL, 1, seed=4))
    b = next(synthetic_steps(WIDE, SMALL, 1, seed=4, knobs=knobs))
    assert (a.topk_ids == b.topk_ids).mean() > 0.99
    assert not np.allclose(a.topk_weights, b.topk_weights, atol=0.01)


# -- determinism ---------------------------------------------------------------------------
def test_same_seed_same_bytes_other_seed_other_routing(tmp_path) -> None:
    paths = [tmp_path / f"{name}.mtrace" for name in ("a", "b", "c")]
    for path, seed in zip(paths, (3, 3, 4), strict=True):
        synthesize(path, model=TINY, scenario=SMALL, num_steps=4, seed=seed, compress=True)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    a, c = open_trace(paths[0]).step(0), open_trace(paths[2]).step(0)
    assert a.num_tokens != c.num_tokens or not np.array_equal(a.topk_ids, c.topk_ids)
    d = next(synthetic_steps(TINY, dataclasses.replace(SMALL, requests=KINDS[2:]), 1, 3))
    e = next(synthetic_steps(TINY, dataclasses.replace(SMALL, requests=KINDS[2:]), 1, 4))
    if d.num_tokens == e.num_tokens:
        assert not np.array_equal(d.topk_ids, e.topk_ids)


def test_shorter_run_is_a_prefix() -> None:
    short = list(synthetic_steps(TINY, SMALL, 4, seed=9))
    long = list(synthetic_steps(TINY, SMALL, 7, seed=9))
    for a, b in zip(short, long, strict=False):
        for name, arr in a.arrays().items():
            np.testing.assert_array_equal(arr, b.arrays()[name])


def test_provenance_records_everything_and_no_time(small_trace) -> None:
    prov = small_trace.provenance
    assert set(prov) == {"source", "scenario", "scenario_settings", "knobs", "seed",
                         "model_preset", "num_steps", "tool", "tool_version"}
    assert prov["source"] == "synth" and prov["scenario"] == "small" and prov["seed"] == 5
    assert prov["model_preset"] == "tiny" and prov["tool_version"] == __version__
    assert prov["knobs"] == RoutingKnobs().to_dict()
    assert prov["scenario_settings"]["requests"][1]["video_tokens"] == [30, 60]


# -- the routing model -----------------------------------------------------------------------
def test_popularity_sigma_varies_per_layer_at_lognormal_quantiles() -> None:
    knobs = RoutingKnobs()
    state = build_router_state(WIDE, knobs, np.random.default_rng(0))
    n = WIDE.num_moe_layers
    expected = [knobs.popularity_sigma * math.exp(knobs.popularity_sigma_spread
                                                  * NormalDist().inv_cdf((i + 0.5) / n))
                for i in range(n)]
    np.testing.assert_allclose(np.sort(state.sigma_per_layer), expected)


def test_cold_scale_stretches_only_the_cold_half_of_the_popularity() -> None:
    """A two-piece log-normal: below the median the log-popularity spreads
    ``popularity_cold_scale`` times as far as above it; at 1 it is the plain log-normal,
    draw for draw."""
    plain = dataclasses.replace(RoutingKnobs(), modality_bias=0.0)
    cold = dataclasses.replace(plain, popularity_cold_scale=2.5)
    a = build_router_state(WIDE, plain, np.random.default_rng(3))
    b = build_router_state(WIDE, cold, np.random.default_rng(3))
    np.testing.assert_array_equal(
        build_router_state(WIDE, dataclasses.replace(plain, popularity_cold_scale=1.0),
                           np.random.default_rng(3)).bias, a.bias)
    pop_a, pop_b = a.bias[:, 0], b.bias[:, 0]
    hot = pop_a >= 0
    np.testing.assert_array_equal(pop_b[hot], pop_a[hot])
    np.testing.assert_allclose(pop_b[~hot], 2.5 * pop_a[~hot], rtol=1e-6)
    with pytest.raises(TraceError, match="popularity_cold_scale"):
        RoutingKnobs(popularity_cold_scale=0.0)


def test_modality_groups_attract_their_modality() -> None:
    seed = 6
    knobs = RoutingKnobs()
    state = build_router_state(WIDE, knobs, _rng(seed, 0))
    step = next(synthetic_steps(WIDE, SMALL, 1, seed=seed))
    visual = step.modality != 0
    layers = np.arange(WIDE.num_moe_layers)[:, None, None]
    on_visual = state.visual_group[layers, step.topk_ids]  # [L, T, k]
    on_text = state.text_group[layers, step.topk_ids]
    assert on_visual[:, visual].mean() > on_visual[:, ~visual].mean() + 0.05
    assert on_text[:, ~visual].mean() > on_text[:, visual].mean() + 0.05


def _mean_overlap(ids: np.ndarray, num_experts: int) -> float:
    """Mean |A & B| / k over distinct token pairs; ids: [N, k]."""
    onehot = np.zeros((ids.shape[0], num_experts))
    np.put_along_axis(onehot, ids, 1.0, axis=1)
    shared = onehot @ onehot.T
    n = ids.shape[0]
    return float((shared.sum() - np.trace(shared)) / (n * (n - 1)) / ids.shape[1])


def test_redundant_tokens_share_experts_and_have_high_entropy() -> None:
    scenario = Scenario(name="page", description="", batch_size=1, decode_steps=0,
                        requests=(RequestKind("page", 1.0, (1600, 1600), (0, 0), (10, 10),
                                              0.5),))
    step, layout = next(_steps_with_layout(WIDE, scenario, 1, 0, RoutingKnobs()))
    redundant = layout.role == ROLE_REDUNDANT
    salient = np.flatnonzero(layout.role == ROLE_SALIENT)
    assert layout.num_clusters >= 2
    for layer in range(WIDE.num_moe_layers):
        ids = step.topk_ids[layer]
        within = np.mean([_mean_overlap(ids[layout.cluster == c], WIDE.num_experts)
                          for c in range(layout.num_clusters)
                          if (layout.cluster == c).sum() > 1])
        across = _mean_overlap(ids[salient], WIDE.num_experts)
        assert within > 0.5 and within > 2 * across
    assert step.entropy[:, redundant].mean() > step.entropy[:, salient].mean() + 0.5
    assert (step.entropy <= math.log(WIDE.hidden_size)).all()


# -- calibration targets -------------------------------------------------------------------
@pytest.fixture(scope="module")
def calibration_traces(tmp_path_factory):
    """One chart prefill (vision) and one chat prefill (text) of the default preset, with
    the default knobs, written and read back."""
    root = tmp_path_factory.mktemp("calib")
    out = {}
    for name in ("chartqa", "chat"):
        scenario = get_scenario(name).with_overrides(batch_size=1, decode_steps=0)
        synthesize(root / f"{name}.mtrace", scenario=scenario, num_steps=1, seed=11)
        out[name] = open_trace(root / f"{name}.mtrace").step(0)
    return out


@pytest.mark.parametrize(("name", "visual", "target"), [
    ("chartqa", True, VISION_TOPK_TARGET), ("chat", False, TEXT_TOPK_TARGET)])
def test_topk_mass_matches_qwen3_vl(calibration_traces, name, visual, target) -> None:
    """DESIGN.md section 3: Qwen3-VL-30B-A3B's normalised top-8 mass, cumulative over its
    top-1/2/4/6/7 experts, within 3 points; its entropy within 0.05 nats."""
    step = calibration_traces[name]
    mask = (step.modality != 0) if visual else (step.modality == 0)
    assert mask.sum() >= 100
    cumulative, entropy = topk_mass_profile(step.scores[:, mask].reshape(-1, 128))
    np.testing.assert_allclose(cumulative, target[0], atol=3.0)
    assert entropy == pytest.approx(target[1], abs=0.05)


def test_topk_mass_profile_closed_form() -> None:
    """A uniform top-8 holds n/8 of the mass in its top n and ln 8 nats."""
    scores = np.concatenate([np.full((5, 8), 0.1), np.full((5, 8), 0.01)], axis=1)
    cumulative, entropy = topk_mass_profile(scores)
    np.testing.assert_allclose(cumulative, [100 * n / 8 for n in (1, 2, 4, 6, 7)])
    assert entropy == pytest.approx(math.log(8))


def test_popularity_skew_matches_deepseek_r1_at_ep32() -> None:
    """DESIGN.md section 3: DeepSeek-R1 at EP32 (256 experts, top-8, 8 per rank):
    per-rank (max - mean)/mean ~1.56 averaged over layers, ~3.5 at the worst layer.
    Averaged over three seeds; tolerance 0.15 on the mean, 0.7 on the worst layer (the
    worst of 58 layers varies from seed to seed by about that much)."""
    runs = [simulate_rank_imbalance(seed=s) for s in range(3)]
    assert np.mean([r.mean() for r in runs]) == pytest.approx(1.56, abs=0.15)
    assert np.mean([r.max() for r in runs]) == pytest.approx(3.5, abs=0.7)


@pytest.mark.parametrize("preset", ["qwen3-vl-30b-a3b", "internvl3.5-30b-a3b"])
def test_qwen3_presets_match_qwen3_30b_a3b_concentration(preset) -> None:
    """Qwen3-30B-A3B (the language model of both presets), ~1k diverse text tokens: the
    hottest expert takes 4.3 % of a layer's assignments (median over layers), 65 experts
    cover 90 % of them (median) and 1 - H/ln(E) is 0.111 (mean over layers). Each within
    10 % over three seeds."""
    model = get_model_preset(preset)
    knobs = knobs_for_model(preset)
    top1, coverage, conc = np.mean([simulate_expert_concentration(model, knobs, seed=s)
                                    for s in range(3)], axis=0)
    assert top1 == pytest.approx(QWEN3_CONCENTRATION_TARGET.top1_share_pct, rel=0.1)
    assert coverage == pytest.approx(QWEN3_CONCENTRATION_TARGET.coverage90_experts, rel=0.1)
    assert conc == pytest.approx(QWEN3_CONCENTRATION_TARGET.concentration, rel=0.1)


def test_each_preset_gets_its_family_knobs() -> None:
    """Qwen3-based presets get the Qwen3 calibration; a DeepSeek-style or unknown model
    keeps the DeepSeek-R1-calibrated field defaults; the synth uses them by default."""
    qwen3 = knobs_for_model("qwen3-vl-30b-a3b")
    assert knobs_for_model("InternVL3.5-30B-A3B") == qwen3
    assert qwen3.popularity_sigma < RoutingKnobs().popularity_sigma
    assert knobs_for_model("kimi-vl-a3b") == RoutingKnobs()
    assert knobs_for_model("tiny") == RoutingKnobs()
    step_q = next(synthetic_steps("qwen3-vl-30b-a3b", "chat", 1, seed=0))
    step_k = next(synthetic_steps("qwen3-vl-30b-a3b", "chat", 1, seed=0, knobs=qwen3))
    np.testing.assert_array_equal(step_q.topk_ids, step_k.topk_ids)


def test_expert_concentration_closed_form() -> None:
    """Even counts over 16 experts: top-1 share 1/16, 15 experts to reach 90 % (14 hold
    87.5 %), zero concentration; one expert taking everything: share 100 %, one expert, 1."""
    even = np.full((3, 16), 10)
    top1, cov, conc = expert_concentration(even)
    assert top1 == pytest.approx(100 / 16) and cov == 15 and conc == pytest.approx(0.0)
    single = np.zeros((2, 16), dtype=np.int64)
    single[:, 3] = 7
    top1, cov, conc = expert_concentration(single)
    assert top1 == pytest.approx(100.0) and cov == 1 and conc == pytest.approx(1.0)


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"num_steps": 0}, '"steps" must be an integer >= 1'),
    ({"seed": -1}, '"seed" must be an integer >= 0'),
    ({"model": "gpt-5"}, "unknown model preset 'gpt-5'; known: "),
    ({"scenario": "ocr"}, "unknown scenario 'ocr'; known: chartqa, chat, docvqa"),
])
def test_bad_arguments_raise_trace_error(tmp_path, kwargs, message) -> None:
    with pytest.raises(TraceError, match=message.replace("(", r"\(")):
        synthesize(tmp_path / "x.mtrace", **kwargs)
    assert not (tmp_path / "x.mtrace").exists()


@pytest.mark.parametrize(("field", "value"), [
    ("popularity_sigma", -0.1), ("cluster_coherence", 1.5), ("sharpness_text", 0.0),
    ("visual_expert_frac", 0.8), ("entropy_spread", float("nan"))])
def test_knobs_are_validated(field: str, value: float) -> None:
    with pytest.raises(TraceError, match=f'routing knobs: "{field}"'):
        RoutingKnobs(**{field: value, **({"text_expert_frac": 0.5}
                                         if field == "visual_expert_frac" else {})})


def test_other_presets_have_their_shape() -> None:
    step = next(synthetic_steps("kimi-vl-a3b", SMALL, 1, seed=0))
    assert step.topk_ids.shape == (26, step.num_tokens, 6)
    assert step.scores.shape == (26, step.num_tokens, 64)
