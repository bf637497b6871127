"""EPLB placement: invariants, never worse than contiguous, and the same balance as an
independent, slow re-implementation of DeepSeek's published algorithm
(github deepseek-ai/EPLB, ``rebalance_experts``) on skewed loads."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from macssim import TopologyError
from macssim._resources import DEFAULT_TRACE
from macssim.placement import (
    contiguous_placement,
    eplb_placement,
    expert_loads_from_trace,
    gpu_loads,
    imbalance,
)
from macssim.trace import open_trace

# --- the reference: DeepSeek's EPLB as its README and code describe it, in plain Python ---


def ref_pack(weights: list[float], packs: int) -> list[int]:
    """Balanced packing: items heaviest first, each to the lightest pack that is not yet
    full (every pack takes exactly n / packs items)."""
    cap = len(weights) // packs
    load, fill = [0.0] * packs, [0] * packs
    out = [0] * len(weights)
    for i in sorted(range(len(weights)), key=lambda i: -weights[i]):
        p = min((p for p in range(packs) if fill[p] < cap), key=lambda p: load[p])
        out[i] = p
        load[p] += weights[i]
        fill[p] += 1
    return out


def ref_replicate(weights: list[float], slots: int) -> list[int]:
    """Replicas per expert: start with one each, give each redundant slot to the expert
    with the largest load per replica."""
    count = [1] * len(weights)
    for _ in range(slots - len(weights)):
        e = max(range(len(weights)), key=lambda e: weights[e] / count[e])
        count[e] += 1
    return count


def ref_gpu_loads(weights, num_gpus: int, redundant: int, num_groups: int,
                  num_nodes: int) -> list[float]:
    """GPU loads of DeepSeek's rebalance_experts: hierarchical when the groups divide
    over the nodes (groups -> nodes, replicas within each node, replicas -> the node's
    GPUs), else the same with one group and one node (global)."""
    weights = [float(w) for w in weights]
    if num_groups % num_nodes:
        num_groups, num_nodes = 1, 1
    experts = len(weights)
    size = experts // num_groups
    group_w = [sum(weights[g * size:(g + 1) * size]) for g in range(num_groups)]
    group_node = ref_pack(group_w, num_nodes)
    gpus_per_node = num_gpus // num_nodes
    slots_per_node = (experts + redundant) // num_nodes
    out = [0.0] * num_gpus
    for node in range(num_nodes):
        mine = [e for g in range(num_groups) if group_node[g] == node
                for e in range(g * size, (g + 1) * size)]
        count = ref_replicate([weights[e] for e in mine], slots_per_node)
        replicas = [weights[e] / c for e, c in zip(mine, count, strict=True) for _ in range(c)]
        for r, gpu in zip(replicas, ref_pack(replicas, gpus_per_node), strict=True):
            out[node * gpus_per_node + gpu] += r
    return out


def ref_imbalance(*args) -> float:
    loads = ref_gpu_loads(*args)
    return max(loads) / (sum(loads) / len(loads))


# --- the tests ------------------------------------------------------------------------


def _check_invariants(p, num_experts, num_gpus, redundant):
    assert p.slot_expert.size == num_experts + redundant
    assert set(p.slot_expert.tolist()) == set(range(num_experts))   # every expert kept
    per_gpu = np.bincount(p.slot_gpu, minlength=num_gpus)
    assert (per_gpu == (num_experts + redundant) // num_gpus).all()  # no GPU over its slots


def _skewed_loads(rng, layers: int, experts: int, tokens: int = 4096, k: int = 8):
    """Per-layer loads of a skewed synthetic routing: each layer draws expert popularity
    from a Zipf-like law (a random permutation per layer) and routes tokens' top-k by it."""
    out = np.zeros((layers, experts))
    for layer in range(layers):
        pop = 1.0 / np.arange(1, experts + 1) ** 1.1
        pop = pop[rng.permutation(experts)]
        pop /= pop.sum()
        for _ in range(tokens):
            out[layer, rng.choice(experts, size=k, replace=False, p=pop)] += 1
    return out


@pytest.mark.parametrize(("num_gpus", "gpn", "redundant", "groups"), [
    (8, 8, 8, 1), (8, 8, 16, 1), (16, 8, 16, 8), (16, 8, 32, 1), (16, 4, 16, 4)])
def test_matches_deepseeks_algorithm_on_skewed_loads(num_gpus, gpn, redundant, groups):
    loads = _skewed_loads(np.random.default_rng(7), layers=4, experts=128, tokens=1024)
    for w in loads:
        mine = imbalance(eplb_placement(w, num_gpus, redundant, gpus_per_node=gpn,
                                        num_groups=groups), w)
        ref = ref_imbalance(w, num_gpus, redundant, groups, num_gpus // gpn)
        assert mine <= ref * 1.01
        assert abs(mine / ref - 1) <= 0.01, (mine, ref)
        assert mine < imbalance(contiguous_placement(128, num_gpus), w)


def test_matches_deepseeks_algorithm_on_the_bundled_trace_per_layer():
    """The bundled (synthetic, image-heavy) trace: each layer's loads are skewed (the
    hottest expert takes 5-14x the mean)."""
    loads = expert_loads_from_trace(open_trace(DEFAULT_TRACE))
    for w in loads[::6]:
        for redundant in (8, 16):
            mine = imbalance(eplb_placement(w, 8, redundant), w)
            ref = ref_imbalance(w, 8, redundant, 1, 1)
            assert abs(mine / ref - 1) <= 0.01, (mine, ref)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 6), st.integers(0, 3),
       st.sampled_from([1, 2, 4]), st.data())
def test_never_worse_than_contiguous_and_keeps_every_expert(nodes, gpn, per_gpu, extra, groups,
                                                            data):
    num_gpus = nodes * gpn
    num_experts = num_gpus * per_gpu
    if num_experts % groups:
        groups = 1
    redundant = num_gpus * extra
    loads = np.asarray(data.draw(st.lists(
        st.one_of(st.integers(0, 3), st.integers(0, 10_000)),
        min_size=num_experts, max_size=num_experts)), dtype=float)
    p = eplb_placement(loads, num_gpus, redundant, gpus_per_node=gpn, num_groups=groups)
    _check_invariants(p, num_experts, num_gpus, redundant)
    contiguous = contiguous_placement(num_experts, num_gpus)
    assert gpu_loads(p, loads).max() <= gpu_loads(contiguous, loads).max() + 1e-9
    assert imbalance(p, loads) <= imbalance(contiguous, loads) + 1e-9
    # The total load is conserved: replicas split an expert's load, never add to it.
    assert gpu_loads(p, loads).sum() == pytest.approx(loads.sum())


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 12), st.integers(1, 4), st.data())
def test_more_gpus_than_experts_fills_every_gpu(num_experts, extra, data):
    num_gpus = data.draw(st.integers(num_experts, num_experts + 6))
    redundant = -num_experts % num_gpus + num_gpus * (extra - 1)
    loads = np.asarray(data.draw(st.lists(st.integers(0, 100), min_size=num_experts,
                                          max_size=num_experts)), dtype=float)
    p = eplb_placement(loads, num_gpus, redundant)
    _check_invariants(p, num_experts, num_gpus, redundant)
    assert gpu_loads(p, loads).max() <= gpu_loads(
        contiguous_placement(num_experts, num_gpus), loads).max() + 1e-9


def test_deterministic_and_replicates_the_hottest():
    w = np.array([100.0, 1, 1, 1, 1, 1, 1, 1])
    a, b = eplb_placement(w, 4, 4), eplb_placement(w, 4, 4)
    assert (a.slot_expert == b.slot_expert).all() and (a.slot_gpu == b.slot_gpu).all()
    # Four redundant slots all go to expert 0 (100/5 = 20 per replica still tops 1).
    assert np.bincount(a.slot_expert)[0] == 5
    assert imbalance(a, w) == pytest.approx(ref_imbalance(w, 4, 4, 1, 1))


@pytest.mark.parametrize(("kwargs", "says"), [
    (dict(num_gpus=3, redundant_experts=0), "multiple of the 3 GPUs"),
    (dict(num_gpus=4, redundant_experts=0, gpus_per_node=3), "whole nodes"),
    (dict(num_gpus=4, redundant_experts=0, num_groups=3), "groups"),
    (dict(num_gpus=4, redundant_experts=-4), "redundant_experts >= 0"),
])
def test_bad_shapes_are_named(kwargs, says):
    with pytest.raises(TopologyError, match=says):
        eplb_placement(np.ones(8), **kwargs)
