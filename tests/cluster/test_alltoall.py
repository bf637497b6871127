"""All-to-all-v on the topology's paths against the alpha-beta closed form."""

from __future__ import annotations

import numpy as np
import pytest
import simpy

from macssim.cluster import AllToAll, FlowNetwork, load_topology


def run_alltoall(topo, matrix, *, join_s=None, wait_for_incoming=True):
    env = simpy.Environment()
    net = FlowNetwork(env, topo.routes.capacity_bytes_per_s)
    a2a = AllToAll(env, net, topo.routes, matrix, wait_for_incoming=wait_for_incoming)
    done = [0.0] * topo.num_gpus
    join_s = join_s or [0.0] * topo.num_gpus

    def gpu(g):
        yield env.timeout(join_s[g])
        yield a2a.join(g)
        done[g] = env.now

    for g in range(topo.num_gpus):
        env.process(gpu(g))
    env.run()
    return done


@pytest.mark.parametrize("preset", ["8xH100", "8xH800"])
def test_uniform_alltoall_on_8_gpus_matches_alpha_beta(preset):
    topo = load_topology(preset)
    m = 3e6  # bytes from every GPU to every other GPU
    matrix = np.full((8, 8), m)
    done = run_alltoall(topo, matrix)
    bw = topo.nvlink.bw_bytes_per_s * topo.nvlink.efficiency
    # alpha-beta: T = alpha + (G - 1) · m / B, every GPU's egress shared by 7 equal flows.
    assert done == pytest.approx([topo.nvlink.latency_s + 7 * m / bw] * 8, rel=1e-12)


def test_uniform_alltoall_over_two_nodes_is_bound_by_nvlink_or_nic(make_topo):
    topo = make_topo(nodes=2, gpus_per_node=4)
    m = 1e6
    done = run_alltoall(topo, np.full((8, 8), m))
    nv = topo.nvlink.bw_bytes_per_s * topo.nvlink.efficiency
    nic = topo.nic.rate_bytes_per_s * topo.nic.efficiency
    intra = topo.nvlink.latency_s + 3 * m / nv        # 3 peers on the node share NVLink
    inter = topo.nic.latency_s + topo.switch.latency_s + 4 * m / nic  # 4 remote, own NIC
    assert done == pytest.approx([max(intra, inter)] * 8, rel=1e-12)


def test_dispatch_waits_for_receives_and_combine_only_for_sends(make_topo):
    topo = make_topo(1, 4)
    matrix = np.zeros((4, 4))
    matrix[0, 1] = 1e6  # only GPU 0 sends, to GPU 1
    join = [0.0, 0.0, 0.0, 5e-3]
    bw = topo.nvlink.bw_bytes_per_s * topo.nvlink.efficiency
    arrive = topo.nvlink.latency_s + 1e6 / bw
    dispatch = run_alltoall(topo, matrix, join_s=join)
    assert dispatch == pytest.approx([arrive, arrive, 0.0, 5e-3], rel=1e-12)
    combine = run_alltoall(topo, matrix, join_s=join, wait_for_incoming=False)
    assert combine == pytest.approx([arrive, 0.0, 0.0, 5e-3], rel=1e-12)


def test_receiver_that_joins_late_is_done_at_once_if_everything_arrived(make_topo):
    topo = make_topo(1, 4)
    matrix = np.zeros((4, 4))
    matrix[0, 1] = 1e3
    done = run_alltoall(topo, matrix, join_s=[0.0, 1.0, 0.0, 0.0])
    assert done[1] == 1.0
