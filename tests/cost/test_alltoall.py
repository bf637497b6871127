"""The `ideal` all-to-all (a token crosses once per destination GPU, links at their
calibrated efficiency) on the topology's paths, against the alpha-beta closed form; and
who waits for what in dispatch and combine."""

from __future__ import annotations

import numpy as np
import pytest
import simpy

from macssim.cost import Collective, FlowNetwork, TokenCounts, build_legs
from macssim.hardware import AllToAllSpec, build_routes, load_topology


def run_ideal(topo, pair_bytes, *, phase="dispatch", join_s=None):
    """Each GPU's done time for one collective; ``pair_bytes[s, d]``: bytes of tokens on
    GPU s for experts on GPU d (one byte per 'token', so the counts are the bytes)."""
    g = topo.num_gpus
    counts = TokenCounts(pair_tokens=pair_bytes, assignment_pairs=pair_bytes,
                         node_tokens=np.zeros((g, topo.nodes)))
    legs = build_legs(AllToAllSpec("ideal"), g, topo.gpus_per_node, counts, 1.0, phase)
    env = simpy.Environment()
    routes = build_routes(topo)
    coll = Collective(env, FlowNetwork(env, routes.capacity_bytes_per_s), routes, legs, g)
    done = [0.0] * g
    join_s = join_s or [0.0] * g

    def gpu(i):
        yield env.timeout(join_s[i])
        yield coll.join(i)
        done[i] = env.now

    for i in range(g):
        env.process(gpu(i))
    env.run()
    return done


@pytest.mark.parametrize("preset", ["8xH100", "8xH800"])
def test_uniform_alltoall_on_8_gpus_matches_alpha_beta(preset):
    topo = load_topology(preset)
    m = 3e6  # bytes from every GPU to every other GPU
    done = run_ideal(topo, np.full((8, 8), m))
    bw = topo.nvlink.bw_bytes_per_s * topo.nvlink.efficiency
    # alpha-beta: T = alpha + (G - 1) · m / B, every GPU's egress shared by 7 equal flows.
    assert done == pytest.approx([topo.nvlink.latency_s + 7 * m / bw] * 8, rel=1e-12)


def test_uniform_alltoall_over_two_nodes_is_bound_by_nvlink_or_nic(make_topo):
    topo = make_topo(nodes=2, gpus_per_node=4)
    m = 1e6
    done = run_ideal(topo, np.full((8, 8), m))
    nv = topo.nvlink.bw_bytes_per_s * topo.nvlink.efficiency
    nic = topo.nic.rate_bytes_per_s * topo.nic.efficiency
    intra = topo.nvlink.latency_s + 3 * m / nv        # 3 peers on the node share NVLink
    inter = topo.nic.latency_s + topo.switch.latency_s + 4 * m / nic  # 4 remote, own NIC
    assert done == pytest.approx([max(intra, inter)] * 8, rel=1e-12)


def test_dispatch_waits_for_receives_and_combine_only_for_sends(make_topo):
    topo = make_topo(1, 4)
    pairs = np.zeros((4, 4))
    pairs[0, 1] = 1e6  # tokens on GPU 0 for an expert on GPU 1
    join = [0.0, 0.0, 0.0, 5e-3]
    bw = topo.nvlink.bw_bytes_per_s * topo.nvlink.efficiency
    arrive = topo.nvlink.latency_s + 1e6 / bw
    # dispatch: 0 -> 1, both wait for it; GPUs 2 and 3 are done when they join
    dispatch = run_ideal(topo, pairs, join_s=join)
    assert dispatch == pytest.approx([arrive, arrive, 0.0, 5e-3], rel=1e-12)
    # combine: the results go back 1 -> 0, and only the sender waits
    combine = run_ideal(topo, pairs, phase="combine", join_s=join)
    assert combine == pytest.approx([0.0, arrive, 0.0, 5e-3], rel=1e-12)


def test_receiver_that_joins_late_is_done_at_once_if_everything_arrived(make_topo):
    topo = make_topo(1, 4)
    pairs = np.zeros((4, 4))
    pairs[0, 1] = 1e3
    done = run_ideal(topo, pairs, join_s=[0.0, 1.0, 0.0, 0.0])
    assert done[1] == 1.0
