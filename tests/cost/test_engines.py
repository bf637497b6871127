"""The all-to-all engines on tiny topologies: which bytes cross which links (hand-computed
closed forms for each engine), NCCL's size efficiency against its formula, DeepEP's
two-stage timing, and the topology / options plumbing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import simpy

from macssim import MacssimError, TopologyError
from macssim.cluster import LayerRouting, SimOptions, alltoall_spec
from macssim.cluster._load import ExpertMap, layer_load
from macssim.cost import FlowNetwork
from macssim.cost._engines import (
    DEEPEP_COMBINE_FIXED_S,
    DEEPEP_FIXED_S,
    DEEPEP_LL_FIXED_S,
    DEEPEP_LL_NVLINK_EFFICIENCY,
    DEEPEP_NVLINK_EFFICIENCY,
    NCCL_FIT,
    Collective,
    build_legs,
    engine_parameters,
    nccl_size_efficiency,
)
from macssim.hardware import AllToAllSpec, build_routes, gpu_path, load_topology
from macssim.placement import contiguous_placement

B = 1000.0  # bytes of one token


def counts_for(topo, ids, token_gpu, num_experts=8):
    """TokenCounts of one layer: experts 2g, 2g+1 on GPU g (contiguous placement)."""
    experts = ExpertMap.from_placement(contiguous_placement(num_experts, topo.num_gpus))
    ids = np.asarray(ids)
    load = layer_load(LayerRouting(ids, np.ones_like(ids, bool)), np.asarray(token_gpu),
                      experts, B, where="test", gpus_per_node=topo.gpus_per_node)
    return load.counts


def edge_bytes(topo, legs):
    """Payload bytes on every directed edge of the graph (full paths, nothing left out)."""
    out: dict[tuple[str, str], float] = {}
    for a, b, p in zip(legs.src.tolist(), legs.dst.tolist(), legs.payload.tolist(),
                       strict=True):
        nodes = gpu_path(topo, a, b)
        for u, v in zip(nodes[:-1], nodes[1:], strict=True):
            out[u, v] = out.get((u, v), 0.0) + p
    return out


def ib_bytes(edges):
    """Bytes entering the scale-out switch (each crossing of the IB fabric once)."""
    return sum(v for (u, w), v in edges.items() if w == "ibswitch")


def nvlink_bytes(edges):
    return sum(v for (u, w), v in edges.items() if w.startswith("nvswitch"))


# 2 nodes × 2 GPUs: GPUs 0, 1 on node 0; 2, 3 on node 1. A token on GPU 0 whose k = 3
# experts are 4, 5 (GPU 2) and 6 (GPU 3): two GPUs, three experts, one remote node.
IDS, TOKEN_GPU = [[4, 5, 6]], [0]


@pytest.mark.parametrize("engine, ib, nvl", [
    ("ideal", 2 * B, 0.0),          # once per destination GPU, straight over RDMA
    ("nccl", 2 * B, 0.0),
    ("deepep-normal", 1 * B, 1 * B),  # once per node to GPU 2, forwarded to GPU 3
    ("deepep-ll", 3 * B, 0.0),       # once per (token, expert): k = 3 copies
])
def test_bytes_on_each_link_for_each_engine(make_topo, engine, ib, nvl):
    topo = make_topo(nodes=2, gpus_per_node=2)
    counts = counts_for(topo, IDS, TOKEN_GPU)
    for phase in ("dispatch", "combine"):
        legs = build_legs(AllToAllSpec(engine), 4, 2, counts, B, phase)
        edges = edge_bytes(topo, legs)
        assert ib_bytes(edges) == ib
        assert nvlink_bytes(edges) == nvl
    dispatch = edge_bytes(topo, build_legs(AllToAllSpec(engine), 4, 2, counts, B, "dispatch"))
    assert dispatch.get(("gpu0", "nic0.0"), 0.0) == ib  # all leaves through GPU 0's NIC
    if engine == "deepep-normal":
        # the RDMA copy lands on GPU 2 (GPU 0's local index on node 1), which forwards
        assert dispatch[("nic1.0", "gpu2")] == B and dispatch[("nvswitch1", "gpu3")] == B
        combine = edge_bytes(topo, build_legs(AllToAllSpec(engine), 4, 2, counts, B,
                                              "combine"))
        assert combine[("gpu3", "nvswitch1")] == B and combine[("nic0.0", "gpu0")] == B


def test_intranode_traffic_goes_over_nvlink_directly(make_topo):
    topo = make_topo(nodes=2, gpus_per_node=2)
    counts = counts_for(topo, [[2, 3]], [0])  # both experts on GPU 1, same node
    for engine, copies in (("ideal", 1), ("nccl", 1), ("deepep-normal", 1), ("deepep-ll", 2)):
        edges = edge_bytes(topo, build_legs(AllToAllSpec(engine), 4, 2, counts, B, "dispatch"))
        assert ib_bytes(edges) == 0.0
        assert edges[("gpu0", "nvswitch0")] == copies * B


def test_legs_carry_the_token_bytes_they_are_given(make_topo):
    """The engine moves what the precision weighs (tests/cluster/test_precision.py)."""
    topo = make_topo(nodes=2, gpus_per_node=2)
    counts = counts_for(topo, IDS, TOKEN_GPU)
    spec = AllToAllSpec("deepep-normal")
    legs = build_legs(spec, 4, 2, counts, 7168 + 56 * 4, "dispatch")
    assert set(legs.payload.tolist()) == {7168 + 56 * 4}   # 1 byte/element + fp32 per 128
    combine = build_legs(spec, 4, 2, counts, 2 * 7168, "combine")
    assert set(combine.payload.tolist()) == {2 * 7168}    # BF16 combine


def run_collective(topo, legs):
    env = simpy.Environment()
    net = FlowNetwork(env, build_routes(topo).capacity_bytes_per_s)
    coll = Collective(env, net, build_routes(topo), legs, topo.num_gpus)
    done = [0.0] * topo.num_gpus

    def gpu(g):
        yield coll.join(g)
        done[g] = env.now

    for g in range(topo.num_gpus):
        env.process(gpu(g))
    env.run()
    return done


def test_deepep_normal_dispatch_timing(make_topo):
    """GPU 0 sends one RDMA copy (NIC-bound); GPU 2 forwards over NVLink at once
    (pipelined); GPU 3 is done when both the RDMA copy and its forwarded copy are in."""
    topo = make_topo(nodes=2, gpus_per_node=2)
    big = 1e6
    counts = counts_for(topo, IDS, TOKEN_GPU)
    legs = build_legs(AllToAllSpec("deepep-normal"), 4, 2, counts, big, "dispatch")
    done = run_collective(topo, legs)
    nic = topo.nic.rate_bytes_per_s * topo.nic.efficiency
    nv = topo.nvlink.bw_bytes_per_s * topo.nvlink.efficiency * DEEPEP_NVLINK_EFFICIENCY
    rdma = DEEPEP_FIXED_S + topo.nic.latency_s + topo.switch.latency_s + big / nic
    fwd = DEEPEP_FIXED_S + topo.nvlink.latency_s + big / nv
    assert done[0] == pytest.approx(rdma, rel=1e-12)
    assert done[2] == pytest.approx(max(rdma, fwd), rel=1e-12)
    assert done[3] == pytest.approx(max(rdma, fwd), rel=1e-12)
    assert done[1] == pytest.approx(DEEPEP_FIXED_S, rel=1e-12)


def test_nccl_efficiency_is_its_formula():
    m = np.array([1e3, 2.2014e5, 1e6, 64 * 2**20])
    f = NCCL_FIT.f_inf / (1 + (NCCL_FIT.m_half / m) ** NCCL_FIT.p)
    assert nccl_size_efficiency(m) == pytest.approx(f, rel=1e-15)
    assert nccl_size_efficiency(NCCL_FIT.m_half) == pytest.approx(NCCL_FIT.f_inf / 2)
    assert np.all(np.diff(nccl_size_efficiency(np.geomspace(1, 1e10, 50))) > 0)


@pytest.mark.parametrize("bytes_per_rank", [1 << 20, 8 << 20, 512 << 20])
def test_nccl_uniform_alltoall_on_8xh100_matches_the_fitted_form(bytes_per_rank):
    """t = fixed + L + (G - 1)·m / (B·f(m)), m = S/G, on the preset's NVLink, within 5 %
    of NVIDIA's measured H100 times (aiconfigurator-core's NCCL 2.27.3 table)."""
    from macssim.cost._engines import TokenCounts

    topo = load_topology("8xH100")
    m = bytes_per_rank / 8
    pair = np.full((8, 8), m)
    counts = TokenCounts(pair, pair, np.zeros((8, 1)))
    done = run_collective(topo, build_legs(AllToAllSpec("nccl"), 8, 8, counts, 1.0,
                                           "dispatch"))
    bw = topo.nvlink.bw_bytes_per_s * topo.nvlink.efficiency
    expected = NCCL_FIT.fixed_s + topo.nvlink.latency_s + 7 * m / (bw * nccl_size_efficiency(m))
    assert done == pytest.approx([expected] * 8, rel=1e-12)
    measured = {1 << 20: 15.77e-6, 8 << 20: 41.28e-6, 512 << 20: 1480.04e-6}[bytes_per_rank]
    assert abs(expected / measured - 1) < 0.05


def test_nccl_efficiency_only_inside_a_node(make_topo):
    topo = make_topo(nodes=2, gpus_per_node=2)
    counts = counts_for(topo, [[2, 4]], [0])  # GPU 1 (same node) and GPU 2 (other node)
    legs = build_legs(AllToAllSpec("nccl"), 4, 2, counts, B, "dispatch")
    by_dst = dict(zip(legs.dst.tolist(), (legs.nbytes / legs.payload).tolist(), strict=True))
    assert by_dst[1] == pytest.approx(1 / nccl_size_efficiency(B))
    assert by_dst[2] == 1.0


def test_topology_field_and_options(tmp_path, make_topo):
    topo = make_topo(nodes=2, gpus_per_node=2)
    assert topo.alltoall.engine == "nccl"
    ll = dataclasses.replace(topo, alltoall="deepep-ll")
    assert ll.alltoall == AllToAllSpec("deepep-ll")
    assert alltoall_spec(ll, SimOptions()).engine == "deepep-ll"
    assert alltoall_spec(ll, SimOptions(alltoall="nccl")).engine == "nccl"
    with pytest.raises(TopologyError, match="known engines"):
        dataclasses.replace(topo, alltoall="mpi")
    with pytest.raises(MacssimError, match='"alltoall" must be one of'):
        SimOptions(alltoall="mpi")
    text = (load_topology("16xH100").source and
            open(load_topology("16xH100").source).read())
    path = tmp_path / "t.yaml"
    path.write_text(text + "alltoall:\n  engine: deepep-normal\n"
                    "  nvlink_efficiency: 0.5\n")
    loaded = load_topology(path)
    assert loaded.alltoall == AllToAllSpec("deepep-normal", nvlink_efficiency=0.5)
    assert engine_parameters(loaded.alltoall) == (0.5, 1.0, DEEPEP_FIXED_S)
    # the dispatch precision is the run's (SimOptions.precision), not the topology's
    path.write_text(text + "alltoall:\n  engine: deepep-normal\n  fp8_dispatch: true\n")
    with pytest.raises(TopologyError, match=r't\.yaml: "alltoall\.fp8_dispatch" is no longer'):
        load_topology(path)
    path.write_text(text + "alltoall: deepep-ll\n")
    assert load_topology(path).alltoall.engine == "deepep-ll"
    for bad, says in (("alltoall: mpi\n", "known engines"),
                      ("alltoall:\n  engine: nccl\n  speed: 2\n", "unknown key"),
                      ("alltoall:\n  engine: deepep-ll\n  rdma_efficiency: 2\n",
                       "rdma_efficiency")):
        path.write_text(text + bad)
        with pytest.raises(TopologyError, match=says) as err:
            load_topology(path)
        assert str(path) in str(err.value)


def test_deepep_parameters_per_phase():
    """The DeepEP constants fitted to NVIDIA's measured EP8 table (docstrings): normal
    combine has its own fixed cost, low latency a fixed cost and a per-phase efficiency;
    a topology's own values still win."""
    assert (DEEPEP_COMBINE_FIXED_S, DEEPEP_LL_FIXED_S) == (28e-6, 2e-6)
    assert DEEPEP_LL_NVLINK_EFFICIENCY == {"dispatch": 0.68, "combine": 0.60}
    normal, ll = AllToAllSpec("deepep-normal"), AllToAllSpec("deepep-ll")
    assert engine_parameters(normal, "dispatch") == (DEEPEP_NVLINK_EFFICIENCY, 1.0, 15e-6)
    assert engine_parameters(normal, "combine") == (DEEPEP_NVLINK_EFFICIENCY, 1.0, 28e-6)
    assert engine_parameters(ll, "dispatch") == (0.68, 1.0, 2e-6)
    assert engine_parameters(ll, "combine") == (0.60, 1.0, 2e-6)
    own = AllToAllSpec("deepep-ll", nvlink_efficiency=0.9, fixed_s=1e-6)
    assert engine_parameters(own, "combine") == (0.9, 1.0, 1e-6)
    assert engine_parameters(AllToAllSpec("nccl"), "combine") == (1.0, 1.0, 0.0)
