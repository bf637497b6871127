"""The compiled flow network against the reference ``FlowNetwork`` and closed forms: per-flow
delivery times on random link sets (hypothesis), every engine's collectives on every preset
and on random topologies, and whole steps (every record, the phase table) within 1e-9."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import simpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from macssim import MacssimError
from macssim.cluster import LayerRouting, SimOptions, simulate_step
from macssim.cost import Collective, FlowNetwork
from macssim.cost._collectives import count_tokens
from macssim.cost._engines import build_legs
from macssim.cost._flows_fast import FastCollective, FastFlowNetwork
from macssim.hardware import (
    ENGINES,
    AllToAllSpec,
    NicSpec,
    NvlinkSpec,
    SwitchSpec,
    Topology,
    build_routes,
    load_topology,
)
from macssim.placement import contiguous_placement
from tests.conftest import GPU

REL = 1e-9
PRESETS = ("8xH100", "8xH200", "8xH800", "16xH100", "64xH100", "128xH100")


def run_flows(network_cls, capacity, flows):
    """flows: (start_s, links, nbytes, latency_s) -> delivery time of each flow."""
    env = simpy.Environment()
    net = network_cls(env, capacity)
    delivered: dict[int, float] = {}

    def one(i, start_s, links, nbytes, latency_s):
        yield env.timeout(start_s)
        delivered[i] = yield net.transfer(links, nbytes, latency_s)

    for i, flow in enumerate(flows):
        env.process(one(i, *flow))
    env.run()
    return np.array([delivered[i] for i in range(len(flows))]), net


def assert_close(actual, expected, rel=REL):
    actual, expected = np.asarray(actual, float), np.asarray(expected, float)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=rel, atol=0)


# --- closed forms -------------------------------------------------------------------------

def test_lone_flow_takes_latency_plus_size_over_its_narrowest_link():
    (t,), _ = run_flows(FastFlowNetwork, [400e9, 25e9, 100e9], [(0.0, [0, 1, 2], 1e6, 3e-6)])
    assert t == pytest.approx(3e-6 + 1e6 / 25e9, rel=1e-12)


def test_two_bottleneck_example_of_bertsekas_and_gallager():
    # As in test_flows.py: A crosses links 0 and 1, B link 0 (10 B/s), C link 1 (4 B/s).
    # C ends at 1 s, A at 1.5 s, B at 2 s.
    times, net = run_flows(FastFlowNetwork, [10.0, 4.0], [
        (0.0, [0, 1], 4.0, 0.0), (0.0, [0], 16.0, 0.0), (0.0, [1], 2.0, 0.0)])
    assert times.tolist() == pytest.approx([1.5, 2.0, 1.0], rel=1e-12)


@pytest.mark.parametrize("n", [2, 7, 56])
def test_n_equal_flows_share_one_bottleneck(n):
    size, bw, lat = 2e6, 40e9, 4e-6
    times, _ = run_flows(FastFlowNetwork, [bw, 1e15], [(0.0, [0, 1], size, lat)] * n)
    assert times.tolist() == pytest.approx([lat + n * size / bw] * n, rel=1e-12)


def test_zero_byte_and_link_less_flows_only_pay_latency():
    times, _ = run_flows(FastFlowNetwork, [1e9], [(1e-3, [0], 0.0, 5e-6), (2e-3, [], 9.0, 1e-6)])
    assert times.tolist() == pytest.approx([1e-3 + 5e-6, 2e-3 + 1e-6], rel=1e-12)


def test_bad_arguments_are_rejected(env):
    with pytest.raises(ValueError, match="capacity_bytes_per_s"):
        FastFlowNetwork(env, [1.0, 0.0])
    net = FastFlowNetwork(env, [1.0])
    with pytest.raises(ValueError, match="links"):
        net.add_collective(np.array([[5]]), [1.0], [0.0], ((0,),), ((0,),), 1)
    with pytest.raises(MacssimError, match="flow_solver"):
        SimOptions(flow_solver="quick")


# --- against the reference: random flows ----------------------------------------------------

@st.composite
def flow_sets(draw):
    num_links = draw(st.integers(1, 8))
    capacity = draw(st.lists(st.floats(1e9, 1e11), min_size=num_links, max_size=num_links))
    starts = st.sampled_from([0.0, 1e-5, 3e-5]) | st.floats(0.0, 5e-5)
    flow = st.tuples(
        starts,
        st.lists(st.integers(0, num_links - 1), min_size=0, max_size=3, unique=True),
        st.sampled_from([0.0, 1e5]) | st.floats(1.0, 2e6),
        st.sampled_from([0.0, 1e-6]) | st.floats(0.0, 1e-5))
    return capacity, draw(st.lists(flow, min_size=1, max_size=40))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flow_sets())
def test_per_flow_delivery_times_equal_the_reference(instance):
    capacity, flows = instance
    expected, _ = run_flows(FlowNetwork, capacity, flows)
    actual, _ = run_flows(FastFlowNetwork, capacity, flows)
    assert_close(actual, expected)


# --- against the reference: collectives -----------------------------------------------------

def random_counts(rng, topo, tokens_per_gpu, top_k):
    g = topo.num_gpus
    n = g * tokens_per_gpu
    token = np.repeat(np.arange(n), top_k)
    src = token // tokens_per_gpu
    dst = rng.integers(0, g, token.size)
    return count_tokens(n, token, src, dst, g, topo.gpus_per_node)


def run_collectives(network_cls, collective_cls, topo, legs_list, join_s):
    """Every GPU joins each collective in turn (GPU g first at join_s[g]); returns the time
    each GPU is done with each collective, [C, G]."""
    env = simpy.Environment()
    routes = build_routes(topo)
    net = network_cls(env, routes.capacity_bytes_per_s)
    colls = [collective_cls(env, net, routes, legs, topo.num_gpus) for legs in legs_list]
    done = np.zeros((len(colls), topo.num_gpus))

    def gpu(g):
        yield env.timeout(join_s[g])
        for c, coll in enumerate(colls):
            yield coll.join(g)
            done[c, g] = env.now

    for g in range(topo.num_gpus):
        env.process(gpu(g))
    env.run()
    return done


def check_collectives(topo, engine, rng, tokens_per_gpu, top_k):
    counts = random_counts(rng, topo, tokens_per_gpu, top_k)
    spec = AllToAllSpec(engine=engine)
    legs = [build_legs(spec, topo.num_gpus, topo.gpus_per_node, counts, 4096.0, phase)
            for phase in ("dispatch", "combine", "dispatch")]
    join_s = rng.choice([0.0, 2e-6, rng.uniform(0, 5e-5)], size=topo.num_gpus)
    expected = run_collectives(FlowNetwork, Collective, topo, legs, join_s)
    actual = run_collectives(FastFlowNetwork, FastCollective, topo, legs, join_s)
    assert_close(actual, expected)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("preset", PRESETS)
def test_collectives_on_every_preset_equal_the_reference(preset, engine):
    topo = load_topology(preset)
    rng = np.random.default_rng(abs(hash((preset, engine))) % 2**32)
    # few assignments per GPU on the big presets, so that the reference stays quick
    check_collectives(topo, engine, rng, tokens_per_gpu=2 if topo.num_gpus > 16 else 16,
                      top_k=2 if topo.num_gpus > 16 else 4)


@st.composite
def topologies(draw):
    gpus_per_node = draw(st.sampled_from([1, 2, 4]))
    nics = draw(st.sampled_from([n for n in (1, 2, 4) if gpus_per_node % n == 0]))
    return Topology(
        name="random", gpu=GPU, nodes=draw(st.integers(1, 3)), gpus_per_node=gpus_per_node,
        nvlink=NvlinkSpec(bw_bytes_per_s=draw(st.floats(50e9, 900e9)),
                          latency_s=draw(st.floats(0.0, 1e-5)),
                          efficiency=draw(st.floats(0.5, 1.0))),
        nic=NicSpec(per_node=nics, rate_bytes_per_s=draw(st.floats(10e9, 100e9)),
                    latency_s=draw(st.floats(0.0, 1e-5)), efficiency=draw(st.floats(0.5, 1.0))),
        switch=SwitchSpec(latency_s=draw(st.floats(0.0, 2e-6))))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topologies(), st.sampled_from(ENGINES), st.integers(0, 2**32 - 1))
def test_collectives_on_random_topologies_equal_the_reference(topo, engine, seed):
    check_collectives(topo, engine, np.random.default_rng(seed), tokens_per_gpu=8, top_k=3)


# --- whole steps -----------------------------------------------------------------------------

def step_results(topo, model, rng, kind, options):
    num_tokens = 24 * topo.num_gpus
    layers = []
    for _ in range(model.num_moe_layers):
        ids = np.stack([rng.choice(model.num_experts, model.top_k, replace=False)
                        for _ in range(num_tokens)])
        layers.append(LayerRouting(ids, rng.random(ids.shape) > 0.1))
    token_gpu = np.sort(rng.integers(0, topo.num_gpus, num_tokens))
    position = np.arange(num_tokens) % 7
    modality = (rng.random(num_tokens) < 0.5).astype(np.uint8)
    placement = contiguous_placement(model.num_experts, topo.num_gpus)
    return [simulate_step(topo, model, placement, kind, token_gpu=token_gpu, position=position,
                          modality=modality, layers=layers,
                          options=dataclasses.replace(options, flow_solver=solver))
            for solver in ("reference", "fast")]


def assert_same_records(a, b):
    for x, y in [(a, b), *zip(a.layers, b.layers, strict=True),
                 *zip(a.gpu_layers, b.gpu_layers, strict=True)]:
        for field in dataclasses.fields(x):
            if field.name in ("layers", "gpu_layers", "phase_table"):
                continue
            u, v = getattr(x, field.name), getattr(y, field.name)
            if isinstance(u, float):
                assert v == pytest.approx(u, rel=REL, abs=1e-18), field.name
            else:
                assert u == v, field.name
    # the same rows; rows logged at the same instant may come in another order
    pa, pb = (np.sort(t, order=["layer", "gpu", "phase"]) for t in (a.phase_table,
                                                                     b.phase_table))
    assert pa.dtype == pb.dtype and pa.shape == pb.shape
    for name in pa.dtype.names:
        if np.issubdtype(pa.dtype[name], np.floating):
            assert_close(pb[name], pa[name])
        else:
            assert (pa[name] == pb[name]).all(), name


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("nodes, gpus_per_node, tp", [(1, 4, 1), (2, 4, 1), (2, 4, 2)])
def test_steps_equal_the_reference(make_topo, tiny_model, nodes, gpus_per_node, tp, engine):
    topo = make_topo(nodes, gpus_per_node)
    rng = np.random.default_rng(nodes * 10 + tp)
    options = SimOptions(alltoall=engine, attention_tp=tp)
    for kind in ("prefill", "decode"):
        assert_same_records(*step_results(topo, tiny_model, rng, kind, options))


def test_a_preset_step_equals_the_reference(tiny_model):
    model = dataclasses.replace(tiny_model, num_experts=16)
    rng = np.random.default_rng(3)
    assert_same_records(*step_results(load_topology("16xH100"), model, rng, "prefill",
                                      SimOptions()))
